"""CL4 message schemas: cerberus is the authority, a compiled type check is the fast path.

Validating with cerberus costs ~200 us per message, too much for every gvar. Each `Cl4Schema`
therefore compiles the rules it understands (type, required, nullable, list item types) into a
plain check that only ever says "certainly valid"; anything else - including every invalid
message, whose error details cerberus writes - goes through cerberus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cerberus

__all__ = ["COMMAND_SCHEMAS", "DEFAULT_SCHEMA", "Cl4Schema"]

# Exact Python types of parsed JSON values for each cerberus type name. Subsets of what cerberus
# accepts (cerberus also takes bool as "integer"), so the fast path never accepts more.
_JSON_TYPES: dict[str, frozenset[type]] = {
    "string": frozenset({str}),
    "number": frozenset({int, float}),
    "integer": frozenset({int}),
    "float": frozenset({int, float}),
    "boolean": frozenset({bool}),
    "dict": frozenset({dict}),
    "list": frozenset({list}),
}
_FAST_FIELD_RULES = frozenset({"type", "required", "nullable", "schema"})
_FAST_ITEM_RULES = frozenset({"type", "nullable"})

FastCheck = Callable[[dict], bool]


def _allowed_types(rules: Mapping[str, Any]) -> frozenset[type] | None:
    """The exact types a rule set's `type` allows; raises KeyError for unknown type names."""
    names = rules.get("type")
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    return frozenset().union(*(_JSON_TYPES[name] for name in names))


def _compile_fast_check(fields: Mapping[str, Mapping[str, Any]]) -> FastCheck | None:
    """A predicate that is True only for messages cerberus accepts, or None if rules are exotic."""
    specs = []
    try:
        for key, rules in fields.items():
            if not set(rules) <= _FAST_FIELD_RULES:
                return None
            allowed = _allowed_types(rules)
            item_rules = rules.get("schema")
            item_allowed = None
            item_nullable = False
            if item_rules is not None:
                # On a field that may also be a dict, cerberus reads `schema` as a mapping schema.
                if allowed is None or dict in allowed or not set(item_rules) <= _FAST_ITEM_RULES:
                    return None
                item_allowed = _allowed_types(item_rules)
                item_nullable = bool(item_rules.get("nullable", False))
            specs.append(
                (
                    key,
                    bool(rules.get("required", False)),
                    bool(rules.get("nullable", False)),
                    allowed,
                    item_rules is not None,
                    item_allowed,
                    item_nullable,
                )
            )
    except (KeyError, TypeError):
        return None

    def check(message: dict) -> bool:
        for key, required, nullable, allowed, has_items, item_allowed, item_nullable in specs:
            if key not in message:
                if required:
                    return False
                continue
            value = message[key]
            if value is None:
                if nullable:
                    continue
                return False
            if allowed is not None and type(value) not in allowed:
                return False
            if has_items and type(value) is list:
                for item in value:
                    if item is None:
                        if not item_nullable:
                            return False
                    elif item_allowed is not None and type(item) not in item_allowed:
                        return False
        return True

    return check


class Cl4Schema:
    """A cerberus schema for one kind of CL4 message; unknown keys are always allowed."""

    __slots__ = ("fields", "_fast_check", "_validator")

    def __init__(self, fields: Mapping[str, Mapping[str, Any]]):
        self.fields = {key: dict(rules) for key, rules in fields.items()}
        # Raises cerberus.SchemaError now, at registration, rather than on the first message.
        self._validator = cerberus.Validator(self.fields, allow_unknown=True)
        self._fast_check = _compile_fast_check(self.fields)

    def errors(self, message: dict) -> dict | None:
        """None if `message` is valid, else cerberus' details ({field: [messages]})."""
        if self._fast_check is not None and self._fast_check(message):
            return None
        if self._validator.validate(message):
            return None
        return self._validator.errors


_SCALAR = ["string", "number", "boolean"]
_VALUE = {"required": True}
_ROOM_NAMES = {"type": [*_SCALAR, "list"], "schema": {"type": _SCALAR}}

# Spec §4: every message; null is refused for each declared key (cerberus' nullable=False).
DEFAULT_SCHEMA = Cl4Schema(
    {
        "cmd": {"type": "string", "required": True},
        "val": {"type": [*_SCALAR, "dict", "list"]},
        "name": {"type": "string"},
        "id": {"type": ["string", "dict", "list"]},
        "listener": {"type": _SCALAR},
        "rooms": _ROOM_NAMES,
    }
)

# Spec §4 per-command required fields, with the project's fixes: setid accepts numbers and
# booleans (§10 #11), link/unlink accept them as room names (§10 #9).
COMMAND_SCHEMAS: dict[str, Cl4Schema] = {
    "setid": Cl4Schema({"val": {"required": True, "type": _SCALAR}}),
    "gmsg": Cl4Schema({"val": _VALUE}),
    "gvar": Cl4Schema({"name": {"required": True, "type": "string"}, "val": _VALUE}),
    "pmsg": Cl4Schema({"id": {"required": True}, "val": _VALUE}),
    "pvar": Cl4Schema(
        {"name": {"required": True, "type": "string"}, "id": {"required": True}, "val": _VALUE}
    ),
    "direct": Cl4Schema({"id": {"required": True, "type": "string"}, "val": _VALUE}),
    "link": Cl4Schema({"val": {"required": True, **_ROOM_NAMES}}),
    "unlink": Cl4Schema({"val": {"required": True, **_ROOM_NAMES}}),
}
