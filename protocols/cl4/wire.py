"""CL4 wire format: JSON in with JavaScript JSON.parse semantics, compact JSON out."""

from __future__ import annotations

import json
import math
from typing import Any

import ujson

from protocols.js import js_string

__all__ = [
    "JsonError",
    "coerce_name",
    "describe_id",
    "encode_message",
    "looks_like_cl4",
    "parse_json",
]


class JsonError(ValueError):
    """Text that JSON.parse rejects (or that Stratus refuses to forward, see `parse_json`)."""


def _reject_constant(name: str) -> Any:
    # json accepts NaN, Infinity and -Infinity; JSON.parse does not.
    raise JsonError(f"{name} is not valid JSON")


def _parse_finite_float(text: str) -> float:
    value = float(text)
    # JSON.parse would turn 1e400 into Infinity, which JSON cannot carry back out again.
    if math.isinf(value):
        raise JsonError(f"number out of range: {text[:40]}")
    return value


# Integers stay exact Python ints (forwarded digit for digit); only floats are checked.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_finite_float)
_decode = _DECODER.decode


def parse_json(text: str) -> Any:
    """Parse one JSON value like JSON.parse, refusing non-finite numbers; raises JsonError."""
    try:
        return _decode(text)
    except JsonError:
        raise
    except (ValueError, RecursionError, MemoryError) as exc:
        # JSONDecodeError, the int digit limit, deep nesting: the caller only sees JsonError.
        raise JsonError(str(exc) or type(exc).__name__) from None


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
        message = _decode(text)
    except (ValueError, RecursionError, MemoryError):
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
