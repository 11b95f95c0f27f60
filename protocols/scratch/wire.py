"""Scratch cloud wire format: variable names as room keys, and the `set` lines peers receive.

Pure functions, no I/O. A room key is the variable name's JSON text (so any JS value a client
sends as a name round-trips), "" when the message had no name.
"""

from __future__ import annotations

from typing import Any

from server.fanout import Codec

from ..js import MISSING, js_number_to_string, js_stringify, parse_json

NAMESPACE = "scratch"
CLOUD_PREFIXES = ("☁ ", ":cloud: ")


def variable_key(name: Any) -> str:
    """The room key of a variable name: its JSON text, or "" when the name was missing."""
    if name is MISSING:
        return ""
    # Printable text has no control characters or lone surrogates, so it needs no escaping
    # unless it holds a quote or backslash.
    if type(name) is str and name.isprintable() and '"' not in name and "\\" not in name:
        return '"' + name + '"'
    return js_stringify(name)


def key_to_name(key: str) -> Any:
    """The variable name a room key stands for (None when the name was missing)."""
    return parse_json(key) if key else None


def encode_value(value: Any) -> str:
    """A valid value as JSON text (numeric strings need no escaping)."""
    if type(value) is str:
        if value.isprintable() and '"' not in value and "\\" not in value:
            return '"' + value + '"'
        return js_stringify(value)
    return js_number_to_string(value)


def encode_set(key: str, value: Any) -> str:
    """The `set` line peers receive: key order method, name, value; `name` omitted if missing."""
    if key:
        return '{"method":"set","name":' + key + ',"value":' + encode_value(value) + "}"
    return '{"method":"set","value":' + encode_value(value) + "}"


CODEC = Codec(encode_set, "\n", variable_key, key_to_name)
