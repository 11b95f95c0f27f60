"""CL4 wire format: JSON in with JavaScript JSON.parse semantics, compact JSON out."""

from __future__ import annotations

import math
from typing import Any

import ujson

from protocols.js import JSONError, js_string, strict_json_parser

__all__ = [
    "JsonError",
    "coerce_name",
    "describe_id",
    "encode_message",
    "looks_like_cl4",
    "parse_json",
]


# Text that JSON.parse rejects (or that Stratus refuses to forward, see `parse_json`).
JsonError = JSONError


def _parse_finite_float(text: str) -> float:
    value = float(text)
    # JSON.parse would turn 1e400 into Infinity, which JSON cannot carry back out again.
    if math.isinf(value):
        raise JsonError(f"number out of range: {text[:40]}")
    return value


# Integers stay exact Python ints (forwarded digit for digit); only floats are checked.
parse_json = strict_json_parser(parse_float=_parse_finite_float)
parse_json.__doc__ = "Parse one JSON value like JSON.parse, refusing non-finite numbers."


def encode_message(message: dict | list | str | float | bool | None) -> str:
    """Compact JSON text for one outgoing message (non-ASCII escaped, key order kept).

    ujson is ~2.5x faster than json.dumps on typical CL4 messages (measured: 0.7 vs 1.6 us for
    a gvar, 7 vs 19 us for a 30-user ulist). Raises OverflowError for NaN/Infinity and
    TypeError for values JSON cannot hold.
    """
    return ujson.dumps(message, ensure_ascii=True, escape_forward_slashes=False, allow_nan=False)


def looks_like_cl4(text: str) -> bool:
    """True if a connection's first message identifies it as CL4 (a JSON object, string `cmd`)."""
    try:
        message = parse_json(text)
    except JsonError:
        return False
    return type(message) is dict and type(message.get("cmd")) is str


def coerce_name(value: Any) -> str | None:
    """A username or room name as given: strings as-is, numbers/bools in JS String() form.

    cloudlink.js JSON-parses what the user typed, so "123" arrives as the number 123 (spec §10
    #9-#11). Returns None for anything else (null, objects, arrays).
    """
    value_type = type(value)
    if value_type is str:
        return value
    if value_type in (int, float, bool):
        return js_string(value)
    return None


def describe_id(value: Any) -> str:
    """An `id` as shown in error details: strings verbatim, anything else as compact JSON."""
    if type(value) is str:
        return value
    try:
        return encode_message(value)
    except (TypeError, OverflowError):
        return repr(value)
