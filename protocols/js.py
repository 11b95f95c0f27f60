"""JavaScript compatibility helpers: JSON.parse, JSON.stringify, String() and Number#toString.

These run for every message, so the common cases (plain strings, flat objects) take fast paths.
Containers are walked iteratively so that deeply nested input can never raise RecursionError
from code that is already deep in the event loop's call stack.
"""

from __future__ import annotations

import json
import json.encoder
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "MISSING",
    "JSONDepthError",
    "JSONError",
    "deeper_than",
    "js_number_to_string",
    "js_string",
    "js_stringify",
    "parse_json",
    "surely_within_depth",
    "utf16_len",
]


class JSONError(ValueError):
    """Text that JavaScript's JSON.parse would reject."""


class JSONDepthError(JSONError):
    """Valid JSON nested deeper than the server accepts (`MAX_JSON_DEPTH`)."""


# Containers (objects and arrays) one message may nest, counting the message itself. Fixed, not
# configurable: code that walks parsed values recursively (the C parser, cerberus' error
# copies, repr in log lines, plugins) needs 2-3 stack frames per level, and this keeps them all
# far below Python's recursion limit of 1000 wherever a message is handled. No Scratch or
# CloudLink client nests anywhere near this deep.
MAX_JSON_DEPTH = 100


def deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests more than `limit` containers (a scalar nests 0, `[]` 1).

    Walks iteratively, so any depth is safe to measure.
    """
    if type(value) not in (dict, list):
        return False
    stack = [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > limit:
            return True
        items = container.values() if type(container) is dict else container
        for item in items:
            if type(item) is dict or type(item) is list:
                stack.append((item, depth + 1))
    return False


def surely_within_depth(text: str, limit: int) -> bool:
    """True if no JSON in `text` can nest more than `limit` containers (False: maybe it does).

    Cheap enough for every message: nesting d levels takes 2d characters, and a JSON text
    with at most `limit` opening brackets cannot nest deeper. The exact walk (`deeper_than`)
    is left for the rare text that fails both.
    """
    return len(text) <= 2 * limit + 1 or text.count("[") + text.count("{") <= limit


class _Missing:
    """Type of MISSING, the stand-in for JavaScript's `undefined` (an absent key)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def _reject_constant(name: str) -> float:
    # json accepts NaN, Infinity and -Infinity by default; JSON.parse does not.
    raise JSONError(f"{name} is not valid JSON")


def strict_json_parser(
    max_depth: int | None = MAX_JSON_DEPTH, **decoder_options: Any
) -> Callable[[str], Any]:
    """A JSON.parse-like parser: NaN/Infinity literals and every decoder failure raise JSONError.

    Text nested deeper than `max_depth` containers raises JSONDepthError (None: only the
    parser's own stack bounds it, still as JSONDepthError). `decoder_options` go to
    `json.JSONDecoder` (e.g. how numbers are built).
    """
    decode = json.JSONDecoder(parse_constant=_reject_constant, **decoder_options).decode
    # Unbounded, the parser's own stack lasts far beyond MAX_JSON_DEPTH, so this text holds too.
    too_deep = f"nested deeper than {max_depth or MAX_JSON_DEPTH} levels"
    short_text = math.inf if max_depth is None else 2 * max_depth + 1

    def parse(text: str) -> Any:
        try:
            value = decode(text)
        except JSONError:
            raise
        except RecursionError:
            raise JSONDepthError(too_deep) from None
        except json.JSONDecodeError as exc:
            raise JSONError(str(exc)) from None
        except ValueError:
            # int() of a literal beyond Python's int-string limit (4300 digits by default).
            raise JSONError("number literal too long") from None
        except Exception as exc:
            # MemoryError and the like: the caller must only ever see JSONError, whatever a
            # client sends.
            raise JSONError(f"{type(exc).__name__}: {exc}") from None
        # The length test repeats surely_within_depth's first step inline: it settles nearly
        # every message without a function call on this hot path.
        if (
            len(text) > short_text
            and not surely_within_depth(text, max_depth)
            and deeper_than(value, max_depth)
        ):
            raise JSONDepthError(too_deep)
        return value

    return parse


# parse_int=float: JavaScript has only doubles, and float() of an over-long digit string gives
# inf just like JS (float(int(...)) would raise OverflowError instead).
parse_json = strict_json_parser(parse_int=float)
parse_json.__doc__ = "Parse exactly one JSON value with JavaScript JSON.parse semantics."

_TWO_POW_53 = 2.0**53


def js_number_to_string(x: float) -> str:
    """Format a number exactly as JavaScript's Number.prototype.toString() does (spec §8.1)."""
    if type(x) is not float:
        x = _int_to_double(x)
    # Integers below 2**53 are exact, so their shortest round-trip digits are all their digits.
    if -_TWO_POW_53 < x < _TWO_POW_53 and x.is_integer():
        return str(int(x))  # int(-0.0) == 0, so -0 prints as "0" like JS
    if x != x:
        return "NaN"
    if x == math.inf:
        return "Infinity"
    if x == -math.inf:
        return "-Infinity"
    sign = "-" if x < 0 else ""
    # repr() already yields the shortest digits that round-trip, as ECMAScript requires.
    mantissa, _, exponent = repr(abs(x)).partition("e")
    integer_part, _, fraction_part = mantissa.partition(".")
    raw_digits = integer_part + fraction_part
    leading_zeros = len(raw_digits) - len(raw_digits.lstrip("0"))
    digits = raw_digits.strip("0")
    digit_count = len(digits)
    # The value is 0.DIGITS x 10**point, in ECMAScript's terms point is "n" and digit_count "k".
    point = int(exponent or 0) + len(integer_part) - leading_zeros
    if digit_count <= point <= 21:
        text = digits + "0" * (point - digit_count)
    elif 0 < point <= 21:
        text = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        text = "0." + "0" * -point + digits
    else:
        power = point - 1
        text = (
            digits[0]
            + ("." + digits[1:] if digit_count > 1 else "")
            + ("e+" if power >= 0 else "e-")
            + str(abs(power))
        )
    return sign + text


def _int_to_double(value: Any) -> float:
    """Convert a Python int (or other real) to a double, overflowing to +-inf as JS would."""
    if isinstance(value, bool):
        raise TypeError("booleans are not numbers in JavaScript")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def js_string(value: Any) -> str:
    """Coerce a parsed JSON value to a string like JavaScript's String() (spec §8.2).

    Arrays are joined iteratively, so no nesting depth can raise RecursionError.
    Raises TypeError for Python values that have no JSON counterpart.
    """
    value_type = type(value)
    if value_type is str:
        return value
    if value_type is float or value_type is int:
        return js_number_to_string(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is MISSING:
        return "undefined"
    if value_type is list or value_type is tuple:
        return _join_array(value)
    if isinstance(value, dict):
        return "[object Object]"
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | float):
        return js_number_to_string(value)
    if isinstance(value, list | tuple):
        return _join_array(value)
    raise TypeError(f"no JavaScript string form for {value_type.__name__}")


def _join_array(array: list | tuple) -> str:
    """Array.prototype.join(","): null/undefined items become "", nested arrays join too."""
    # Joining nested arrays with "," and then joining those with "," is the same as emitting a
    # separator between siblings at every level of one walk, which needs no recursion.
    pieces: list[str] = []
    iterators = [iter(array)]
    first_flags = [True]
    while iterators:
        for item in iterators[-1]:
            if first_flags[-1]:
                first_flags[-1] = False
            else:
                pieces.append(",")
            if isinstance(item, list | tuple):
                iterators.append(iter(item))
                first_flags.append(True)
                break
            if item is not None and item is not MISSING:
                pieces.append(js_string(item))
        else:
            iterators.pop()
            first_flags.pop()
    return "".join(pieces)


def utf16_len(s: str) -> int:
    """Length of a string in UTF-16 code units, as JavaScript's .length counts (spec §8.3)."""
    if s.isascii():
        return len(s)
    # surrogatepass: lone surrogates (legal in JSON escapes) count as one unit each, like JS.
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


# The C encoder escapes '"', '\\' and U+0000-U+001F exactly as JSON.stringify does (\b \t \n
# \f \r, else lower-case \u00xx) and leaves everything else, including U+2028/U+2029, as is.
_encode_basestring = json.encoder.encode_basestring
_SURROGATE_RE = re.compile("([\ud800-\udbff][\udc00-\udfff])|[\ud800-\udfff]")


def _replace_surrogate(match: re.Match[str]) -> str:
    pair = match.group(1)
    if pair is not None:
        # A well-formed pair is one character to JavaScript, so emit the character itself.
        return pair.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    return f"\\u{ord(match.group()):04x}"


def _quote(s: str) -> str:
    """Quote a string as JSON.stringify does: non-ASCII raw, lone surrogates escaped."""
    if s.isascii():
        return _encode_basestring(s)
    return _SURROGATE_RE.sub(_replace_surrogate, _encode_basestring(s))


def _encode_scalar(value: Any) -> str | None:
    """JSON text of a non-container value, or None for `undefined` (omitted by the caller)."""
    value_type = type(value)
    if value_type is str:
        return _quote(value)
    if value_type is float:
        return js_number_to_string(value) if math.isfinite(value) else "null"
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value_type is int:
        number = _int_to_double(value)
        return js_number_to_string(number) if math.isfinite(number) else "null"
    if value is MISSING:
        return None
    if isinstance(value, str):
        return _quote(str(value))
    if isinstance(value, int | float):
        number = _int_to_double(value)
        return js_number_to_string(number) if math.isfinite(number) else "null"
    raise TypeError(f"{value_type.__name__} is not JSON serialisable")


def _encode_key(key: Any) -> str:
    # JavaScript property keys are strings; a number key 1.0 would be the property "1".
    return _quote(key if type(key) is str else js_string(key))


def js_stringify(value: Any) -> str:
    """Serialise like JavaScript's JSON.stringify(value) with no indentation.

    Objects keep their key order; keys whose value is MISSING are omitted and MISSING inside
    an array becomes null, as `undefined` does in JS. Non-finite numbers become null.
    Raises TypeError for a top-level MISSING or a non-JSON type, ValueError for a cycle.
    """
    value_type = type(value)
    if value_type is str:
        return _quote(value)
    if value_type is dict:
        flat = _encode_flat_dict(value)
        if flat is not None:
            return flat
        return _encode_container(value)
    if isinstance(value, dict | list | tuple):
        return _encode_container(value)
    text = _encode_scalar(value)
    if text is None:
        raise TypeError("undefined has no JSON text")
    return text


def _encode_flat_dict(obj: dict) -> str | None:
    """Fast path for objects holding only scalars (every wire message); None otherwise."""
    parts = []
    for key, item in obj.items():
        if isinstance(item, dict | list | tuple):
            return None
        text = _encode_scalar(item)
        if text is not None:
            parts.append(_encode_key(key) + ":" + text)
    return "{" + ",".join(parts) + "}"


def _encode_container(root: dict | list | tuple) -> str:
    """Serialise a nested structure with an explicit stack instead of recursion."""
    pieces: list[str] = []
    # Each frame: [iterator, is_object, closing bracket, anything written yet, id of container]
    frames: list[list[Any]] = []
    active_ids: set[int] = set()

    def enter(container: dict | list | tuple) -> None:
        container_id = id(container)
        if container_id in active_ids:
            raise ValueError("cyclic structure cannot be serialised")
        active_ids.add(container_id)
        if isinstance(container, dict):
            pieces.append("{")
            frames.append([iter(container.items()), True, "}", False, container_id])
        else:
            pieces.append("[")
            frames.append([iter(container), False, "]", False, container_id])

    enter(root)
    while frames:
        frame = frames[-1]
        is_object = frame[1]
        for entry in frame[0]:
            if is_object:
                key, item = entry
                if item is MISSING:
                    continue
            else:
                item = entry
            if frame[3]:
                pieces.append(",")
            else:
                frame[3] = True
            if is_object:
                pieces.append(_encode_key(key))
                pieces.append(":")
            if isinstance(item, dict | list | tuple):
                enter(item)
                break
            text = _encode_scalar(item)
            pieces.append("null" if text is None else text)
        else:
            pieces.append(frame[2])
            active_ids.discard(frame[4])
            frames.pop()
    return "".join(pieces)
