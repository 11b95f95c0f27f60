"""Tolerant grammar and dispatch for scratchcommunication cloud requests (spec §10).

A request message holds sub-requests separated by ";" (outside quotes). Each is either the
normal form ``name tok tok "quoted tok"`` or, if the handler allows it, the Python-call form
``name(5, x="y")`` with literal arguments only. All sub-requests run in order and the message
gets exactly one reply: the text of the last result, or the first error.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import sys
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

SYNTAX_ERROR_REPLY = "The command syntax was wrong."
HANDLER_ERROR_REPLY = "Something went wrong."

_NAME = re.compile(r"\w+")
_CALL_FORM = re.compile(r"\w+\(.*\)", re.DOTALL)
_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_PREFIXED = {"0x": (16, re.compile(r"[0-9a-fA-F]+")), "0o": (8, re.compile(r"[0-7]+"))}
_PREFIXED["0b"] = (2, re.compile(r"[01]+"))
# ECMAScript StrWhiteSpaceChar: WhiteSpace (incl. every Zs) and LineTerminator.
_JS_WHITESPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
_JS_WHITESPACE += "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_QUOTES = "'\""
PYTHON_SYNTAX_ATTRIBUTE = "allow_python_syntax"
# Python refuses to turn ints of more decimal digits than this into text or back (a guard
# against quadratic conversions); 0 means no limit. Such integers in requests stay text.
INT_DIGIT_LIMIT = sys.get_int_max_str_digits()
_INT_BOUND = 10**INT_DIGIT_LIMIT if INT_DIGIT_LIMIT else None


class RequestSyntaxError(ValueError):
    """The request text does not follow the grammar (replied as a syntax error)."""


class RequestError(Exception):
    """Raised by a handler to reply with its arguments joined by single spaces."""

    def reply_text(self) -> str:
        """The reply the client sees."""
        return " ".join(str(argument) for argument in self.args)


@dataclass(frozen=True)
class ParsedRequest:
    """One sub-request: handler name plus arguments as parsed (before annotation conversion)."""

    name: str
    args: tuple = ()
    kwargs: Mapping[str, object] = field(default_factory=dict)
    python_syntax: bool = False
    # Original text of unquoted normal-form tokens (None elsewhere): `str` parameters get
    # "007" rather than str(7).
    arg_texts: tuple[str | None, ...] = ()


def js_number(token: str) -> float | None:
    """JavaScript Number(token) semantics; None where JS yields NaN ("" and blanks give 0)."""
    text = token.strip(_JS_WHITESPACE)
    if text == "":
        return 0.0
    unsigned = text.lstrip("+-")
    if unsigned == "Infinity" and len(text) - len(unsigned) <= 1:
        return -math.inf if text.startswith("-") else math.inf
    prefix = text[:2].lower()
    if prefix in _PREFIXED:  # no sign allowed with 0x / 0o / 0b in JS
        base, pattern = _PREFIXED[prefix]
        if pattern.fullmatch(text[2:]) is None:
            return None
        try:
            return float(int(text[2:], base))
        except OverflowError:
            return math.inf
    if _DECIMAL.fullmatch(text) is None:
        return None
    return float(text)


def fits_int_limit(value: int) -> bool:
    """Whether Python can write `value` as decimal text (see INT_DIGIT_LIMIT)."""
    return _INT_BOUND is None or -_INT_BOUND < value < _INT_BOUND


def exact_int(digits: str, base: int = 10) -> int | None:
    """int(digits, base), or None when the value has more decimal digits than INT_DIGIT_LIMIT."""
    if base == 10:
        # Checked before int(), which would raise ValueError (and whose cost grows
        # quadratically with the length where there is no limit to stop it).
        if INT_DIGIT_LIMIT and len(digits.lstrip("+-")) > INT_DIGIT_LIMIT:
            return None
        return int(digits)
    value = int(digits, base)  # powers of two convert in linear time, at any length
    return value if fits_int_limit(value) else None


def token_value(token: str) -> object:
    """An unquoted token's value: int when integral in form, float for other numbers, else str.

    An integer beyond Python's int-string limit (INT_DIGIT_LIMIT decimal digits) stays the
    token's text: an `int` parameter then refuses it as a syntax error, a `float` one gets
    Infinity (JavaScript's Number of it), `str` and unannotated ones get the digits as sent.
    """
    text = token.strip(_JS_WHITESPACE)
    number = js_number(token)
    if number is None:
        return token
    if _INTEGER.fullmatch(text):
        value = exact_int(text)  # exact, also beyond 2**53
        return token if value is None else value
    if text[:2].lower() in _PREFIXED:
        base, _ = _PREFIXED[text[:2].lower()]
        value = exact_int(text[2:], base)
        return token if value is None else value
    return number


def split_requests(text: str) -> list[str]:
    """Split on ";" outside quotes (backslash escapes inside); trimmed, empty parts skipped."""
    parts, current, quote, escaped = [], [], None, False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in _QUOTES:
            quote = char
        elif char == ";":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts if part.strip()]


def _tokenize(text: str) -> tuple[list[object], list[str | None]]:
    values: list[object] = []
    texts: list[str | None] = []
    position = 0
    while position < len(text):
        if text[position] == " ":
            position += 1
            continue
        if text[position] in _QUOTES:
            quote, chars = text[position], []
            position += 1
            while True:
                if position >= len(text):
                    raise RequestSyntaxError("unterminated string")
                char = text[position]
                if char == "\\" and position + 1 < len(text):
                    chars.append(text[position + 1])  # a backslash escapes any character
                    position += 2
                elif char == quote:
                    position += 1
                    break
                else:
                    chars.append(char)
                    position += 1
            if position < len(text) and text[position] != " ":
                raise RequestSyntaxError("a string must be followed by a space")
            values.append("".join(chars))
            texts.append(None)
        else:
            end = text.find(" ", position)
            end = len(text) if end < 0 else end
            token = text[position:end]
            values.append(token_value(token))
            texts.append(token)
            position = end
    return values, texts


def _parse_call(text: str, name: str) -> ParsedRequest:
    try:
        with warnings.catch_warnings():
            # e.g. "5(3)" or "\d" in a string would print SyntaxWarnings for client input
            warnings.simplefilter("ignore")
            call = ast.parse(text, mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise RequestSyntaxError("not a single call")
        if any(isinstance(argument, ast.Starred) for argument in call.args):
            raise RequestSyntaxError("*args are not literals")
        if any(keyword.arg is None for keyword in call.keywords):
            raise RequestSyntaxError("**kwargs are not literals")
        args = tuple(ast.literal_eval(argument) for argument in call.args)
        kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
        # Decimal literals past the limit are already a SyntaxError; 0x... ones are not.
        if any(
            type(node) is ast.Constant and type(node.value) is int
            and not fits_int_limit(node.value)
            for node in ast.walk(call)
        ):
            raise RequestSyntaxError("integer literal beyond the int-string limit")
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as error:
        if isinstance(error, RequestSyntaxError):
            raise
        raise RequestSyntaxError("invalid call syntax") from error
    return ParsedRequest(name, args, kwargs, python_syntax=True, arg_texts=(None,) * len(args))


def parse_request(text: str) -> ParsedRequest:
    """Parse one sub-request; RequestSyntaxError if it follows neither form."""
    text = text.strip(" ")
    name_match = _NAME.match(text)
    if name_match is None:
        raise RequestSyntaxError("a request starts with its name")
    name = name_match.group()
    if _CALL_FORM.fullmatch(text):
        return _parse_call(text, name)
    rest = text[name_match.end() :]
    if rest and not rest.startswith(" "):
        raise RequestSyntaxError("the name must be followed by a space")
    values, texts = _tokenize(rest)
    return ParsedRequest(name, tuple(values), {}, arg_texts=tuple(texts))


def parse_requests(text: str) -> list[ParsedRequest]:
    """Parse a whole request message; RequestSyntaxError if any sub-request is malformed."""
    parsed = [parse_request(part) for part in split_requests(text)]
    if not parsed:
        raise RequestSyntaxError("empty request")
    return parsed


def handler_options(*, allow_python_syntax: bool = True) -> Callable[[Callable], Callable]:
    """Decorator setting per-handler grammar options (Python-call form is allowed by default)."""

    def decorate(handler: Callable) -> Callable:
        """Mark the handler and return it unchanged."""
        setattr(handler, PYTHON_SYNTAX_ATTRIBUTE, allow_python_syntax)
        return handler

    return decorate


def _to_bool(value: object, text: str | None) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and (text or value).lower() in ("true", "false", "1", "0"):
        return (text or value).lower() in ("true", "1")  # scratchattach sends "1" as a string
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise RequestSyntaxError(f"{value!r} is not a boolean")


def _to_int(value: object, text: str | None) -> int:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        value = token_value(value)
        if isinstance(value, int):
            return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise RequestSyntaxError(f"{value!r} is not an integer")


def _to_float(value: object, text: str | None) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # beyond a double: what JavaScript's Number() gives
            return math.inf if value > 0 else -math.inf
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        number = js_number(value)
        if number is not None and value.strip(_JS_WHITESPACE):
            return number
    raise RequestSyntaxError(f"{value!r} is not a number")


def _to_str(value: object, text: str | None) -> str:
    return text if text is not None else str(value)


_CONVERTERS: dict[type, Callable[[object, str | None], object]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
}


def _annotations(handler: Callable) -> dict[str, object]:
    try:
        # Resolves string annotations too (the reference library's casting breaks on them).
        return typing.get_type_hints(handler)
    except Exception:  # unresolvable hints: fall back to passing values unconverted
        return {}


def convert_arguments(handler: Callable, parsed: ParsedRequest) -> inspect.BoundArguments:
    """Bind parsed arguments to the handler and convert them to its int/float/str/bool hints."""
    signature = inspect.signature(handler)
    try:
        bound = signature.bind(*parsed.args, **parsed.kwargs)
    except TypeError as error:
        raise RequestSyntaxError(f"arguments do not fit {parsed.name}: {error}") from error
    hints = _annotations(handler)
    texts = list(parsed.arg_texts) + [None] * (len(parsed.args) - len(parsed.arg_texts))
    position = 0
    for name, value in bound.arguments.items():
        parameter = signature.parameters[name]
        converter = _CONVERTERS.get(hints.get(name))
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            raw = texts[position : position + len(value)]
            position += len(value)
            if converter is not None:
                bound.arguments[name] = tuple(map(converter, value, raw))
            continue
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            if converter is not None:
                bound.arguments[name] = {key: converter(item, None) for key, item in value.items()}
            continue
        text = None
        if position < len(parsed.args) and name not in parsed.kwargs:
            text = texts[position]
            position += 1
        if converter is not None:
            bound.arguments[name] = converter(value, text)
    return bound


def resolve_handler(parsed: ParsedRequest, handlers: Mapping[str, Callable]) -> Callable:
    """The handler a sub-request names; RequestSyntaxError if unknown or its syntax is refused."""
    handler = handlers.get(parsed.name)
    if handler is None:
        raise RequestSyntaxError(f"unknown request {parsed.name!r}")
    if parsed.python_syntax and not getattr(handler, PYTHON_SYNTAX_ATTRIBUTE, True):
        raise RequestSyntaxError(f"{parsed.name} does not accept Python syntax")
    return handler


def call_handler(parsed: ParsedRequest, handlers: Mapping[str, Callable]) -> str:
    """Run one sub-request; RequestSyntaxError / RequestError / other exceptions propagate."""
    handler = resolve_handler(parsed, handlers)
    bound = convert_arguments(handler, parsed)
    return str(handler(*bound.args, **bound.kwargs))


def reply_for_exception(error: BaseException) -> str:
    """The reply text for an exception raised while handling a request."""
    if isinstance(error, RequestSyntaxError):
        return SYNTAX_ERROR_REPLY
    if isinstance(error, RequestError):
        return error.reply_text()
    return HANDLER_ERROR_REPLY


def dispatch(parsed: list[ParsedRequest], handlers: Mapping[str, Callable]) -> str:
    """Run sub-requests in order; the one reply is the last result or the first error."""
    reply = SYNTAX_ERROR_REPLY
    for request in parsed:
        try:
            reply = call_handler(request, handlers)
        except Exception as error:  # every failure becomes a reply text
            return reply_for_exception(error)
    return reply


def handle_request(text: str, handlers: Mapping[str, Callable]) -> str:
    """Parse and run a whole request message; always returns the single reply text."""
    try:
        parsed = parse_requests(text)
    except RequestSyntaxError:
        return SYNTAX_ERROR_REPLY
    return dispatch(parsed, handlers)
