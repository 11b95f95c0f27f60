"""CL4 wire format: JSON in with JavaScript JSON.parse semantics, compact JSON out."""

from __future__ import annotations

import math
from typing import Any

import ujson

from protocols.js import (
    MAX_JSON_DEPTH,
    JSONDepthError,
    JSONError,
    deeper_than,
    js_string,
    strict_json_parser,
    surely_within_depth,
)

__all__ = [
    "JsonDepthError",
    "JsonError",
    "coerce_name",
    "describe_id",
    "encode_message",
    "detect_cl4",
    "looks_like_cl4",
    "parse_json",
    "parse_message",
    "too_deep_fields",
]


# Text that JSON.parse rejects (or that Stratus refuses to forward, see `parse_json`).
JsonError = JSONError
# Valid JSON nested deeper than MAX_JSON_DEPTH (or than the parser's stack allows).
JsonDepthError = JSONDepthError


def _parse_finite_float(text: str) -> float:
    value = float(text)
    # JSON.parse would turn 1e400 into Infinity, which JSON cannot carry back out again.
    if math.isinf(value):
        raise JsonError(f"number out of range: {text[:40]}")
    return value


# Integers stay exact Python ints (forwarded digit for digit); only floats are checked. An
# integer literal beyond Python's int-string limit is a JsonError, as 1e400 is.
parse_json = strict_json_parser(parse_float=_parse_finite_float)
parse_json.__doc__ = (
    "Parse one JSON value like JSON.parse, refusing non-finite numbers and nesting deeper "
    "than MAX_JSON_DEPTH."
)
# Messages are parsed without the depth check so that `too_deep_fields` can name the field
# and the reply can still carry the request's listener (E:101, spec §4). Only text too deep
# for the parser's own stack raises JsonDepthError here.
parse_message = strict_json_parser(None, parse_float=_parse_finite_float)
parse_message.__doc__ = "Parse one client message like `parse_json`, without the depth check."

_TOO_DEEP = [f"nested deeper than {MAX_JSON_DEPTH} levels"]


def too_deep_fields(message: dict, text: str) -> dict[str, list[str]] | None:
    """E:101 details naming each field of `message` (parsed from `text`) that nests too deeply.

    The message object is one level, so a field may hold MAX_JSON_DEPTH - 1 levels.
    """
    if surely_within_depth(text, MAX_JSON_DEPTH):
        return None
    details = {
        str(key): list(_TOO_DEEP)
        for key, value in message.items()
        if deeper_than(value, MAX_JSON_DEPTH - 1)
    }
    return details or None


def encode_message(message: dict | list | str | float | bool | None) -> str:
    """Compact JSON text for one outgoing message (non-ASCII escaped, key order kept).

    ujson is ~2.5x faster than json.dumps on typical CL4 messages (measured: 0.7 vs 1.6 us for
    a gvar, 7 vs 19 us for a 30-user ulist). Raises OverflowError for NaN/Infinity and
    TypeError for values JSON cannot hold.
    """
    return ujson.dumps(message, ensure_ascii=True, escape_forward_slashes=False, allow_nan=False)


def detect_cl4(text: str) -> dict | None:
    """A connection's first message, parsed, if it identifies the connection as CL4 (a JSON
    object with a string `cmd`), else None.

    Text that holds neither `"cmd"` nor a `\\u` escape (which could spell the key) cannot be
    such an object: it is left to the next protocol without being parsed here, so a Scratch
    handshake is parsed once, by Scratch.
    """
    if '"cmd"' not in text and "\\u" not in text:
        return None
    try:
        message = parse_message(text)
    except JsonError:
        return None
    if type(message) is dict and type(message.get("cmd")) is str:
        return message
    return None


def looks_like_cl4(text: str) -> bool:
    """True if a connection's first message identifies it as CL4 (a JSON object, string `cmd`)."""
    return detect_cl4(text) is not None


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
