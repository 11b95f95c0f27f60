"""Tolerant cloud-request grammar, typed conversion and reply rules (spec §10)."""

from __future__ import annotations  # string annotations: the reference library breaks on these

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.sprites import digits
from plugins.sprites.request_api import format_result
from plugins.sprites.requests_grammar import (
    HANDLER_ERROR_REPLY,
    SYNTAX_ERROR_REPLY,
    ParsedRequest,
    RequestError,
    RequestSyntaxError,
    dispatch,
    handle_request,
    handler_options,
    js_number,
    parse_request,
    parse_requests,
    split_requests,
    token_value,
)


def sprite_argument(value: str) -> str:
    """What the sprite's `add argument` appends for a non-numeric value."""
    escaped = "".join("\\" + char if char in "'\"\\" else char for char in value)
    return f'"{escaped}"'


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("5", 5.0),
        ("-5", -5.0),
        ("+5", 5.0),
        ("1e5", 1e5),
        ("1E-2", 0.01),
        (".5", 0.5),
        ("5.", 5.0),
        ("0x10", 16.0),
        ("0X1f", 31.0),
        ("0b11", 3.0),
        ("0o7", 7.0),
        ("Infinity", math.inf),
        ("+Infinity", math.inf),
        ("-Infinity", -math.inf),
        (" \t5\n", 5.0),
        ("\u00a0-2.5\u2028", -2.5),
        ("", 0.0),
        ("   ", 0.0),
        ("1e999", math.inf),
    ],
)
def test_js_number_accepts(token, expected):
    """Number() semantics: signs, exponents, prefixes, Infinity, surrounding whitespace."""
    assert js_number(token) == expected


@pytest.mark.parametrize(
    "token",
    ["abc", "-0x10", "0x", "0b2", "1e", "1_000", "inf", "nan", "NaN", "infinity", "--5", "+-5"]
    + ["Infinityx", ".", "1.2.3", "٣", "5 5", "0x1p3", "1,5"],
)
def test_js_number_nan_cases(token):
    """Tokens where JavaScript's Number() yields NaN give None."""
    assert js_number(token) is None


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_js_number_reads_python_float_reprs(value):
    """repr() of a finite float is a valid JS numeric literal with the same value."""
    assert js_number(repr(value)) == value


def test_split_on_semicolons_outside_quotes():
    """';' inside quotes (also after an escaped quote) does not split; empty parts vanish."""
    text = "a \"x;y\" 1; b 'it\\'s;' ;; c"
    assert split_requests(text) == ['a "x;y" 1', "b 'it\\'s;'", "c"]


def test_normal_form_values():
    """Integers, floats, quoted strings, NaN tokens as strings, several spaces."""
    parsed = parse_request('name 5  "two words"   1.5 -3 1e5 hello')
    assert parsed.name == "name"
    assert parsed.args == (5, "two words", 1.5, -3, 1e5, "hello")
    assert parsed.arg_texts == ("5", None, "1.5", "-3", "1e5", "hello")
    assert not parsed.python_syntax


def test_quoted_strings_escape_any_character():
    """A backslash escapes the next character, whatever it is."""
    text = "x " + r'"a\"b" "c\\d" "e\nf"' + " 'g'"
    assert parse_request(text).args == ('a"b', "c\\d", "enf", "g")


@pytest.mark.parametrize("text", ['x "open', 'x "a"b', "-x", "", "x(", "x-5", "?x"])
def test_normal_form_syntax_errors(text):
    """Unterminated strings, glued tokens and missing names are syntax errors."""
    with pytest.raises(RequestSyntaxError):
        parse_request(text)


def test_python_call_form():
    """Literal arguments only, negative numbers included."""
    parsed = parse_request('name(5, -1.5, [1, "a"], x="y", flag=True)')
    assert parsed == ParsedRequest(
        "name", (5, -1.5, [1, "a"]), {"x": "y", "flag": True}, True, (None, None, None)
    )


@pytest.mark.parametrize(
    "text",
    ["name(x)", "name(*a)", "name(**k)", "name(1)(2)", "name(1) + b(2)", "name(__import__('os'))"],
)
def test_python_call_form_rejects_non_literals(text):
    """Names, calls, star-arguments and expressions are refused."""
    with pytest.raises(RequestSyntaxError):
        parse_request(text)


def test_parse_requests_rejects_empty_messages():
    """A message of only separators is a syntax error."""
    with pytest.raises(RequestSyntaxError):
        parse_requests(" ; ;")


def echo(*words: str) -> str:
    """Join words."""
    return " ".join(words)


def add(a: int, b: int = 1) -> int:
    """Integer addition."""
    return a + b


def scale(value: float, factor: float = 2.0) -> float:
    """Float multiplication."""
    return value * factor


def flag(on: bool) -> str:
    """Echo a boolean."""
    return "yes" if on else "no"


def shout(text: str) -> str:
    """Upper-case a string argument."""
    return text.upper()


def demo_request(count: int) -> str:
    """The shipped demo request `test 5`."""
    return f"test x{count}"


def fail() -> str:
    """Raise an unexpected error."""
    raise KeyError("boom")


def refuse(reason: str) -> str:
    """Raise the error-message exception."""
    raise RequestError("not", "allowed:", reason, 42)


@handler_options(allow_python_syntax=False)
def plain(value: int) -> str:
    """Only the normal form is allowed."""
    return str(value)


HANDLERS = {
    function.__name__: function for function in (echo, add, scale, flag, shout, fail, refuse, plain)
}
HANDLERS["test"] = demo_request  # the demo's request name (a pytest-collected name otherwise)


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("test 5", "test x5"),
        ("add 2 3", "5"),
        ("add -2", "-1"),
        ("add 1e3 0x10", "1016"),
        ('add "7"', "8"),
        ("add(-2, b=10)", "8"),
        ("scale 1.5", "3.0"),
        ("scale Infinity", "inf"),
        ("scale(.5, factor=-4)", "-2.0"),
        ("flag true", "yes"),
        ("flag 0", "no"),
        ('flag "False"', "no"),
        ("shout 007", "007"),
        ("shout 1e5", "1E5"),
        ('echo a "b c" 3', "a b c 3"),
        ("echo", ""),
        ("plain 5", "5"),
    ],
)
def test_successful_replies(text, reply):
    """Success replies with str(result) after typed conversion."""
    assert handle_request(text, HANDLERS) == reply


@pytest.mark.parametrize(
    "text",
    [
        "nope 1",  # unknown name
        "t5",  # the sprite joins one-character items without spaces
        "add 1.5",  # not an integer
        "add x",  # NaN string for an int
        "add 1 2 3",  # too many arguments
        "add",  # missing argument
        "scale abc",
        "flag maybe",
        "plain(5)",  # Python syntax disallowed for this handler
        "add(c=1)",  # unknown keyword
        'add "unterminated',
        "",
    ],
)
def test_syntax_error_replies(text):
    """Parse errors, unknown names, bad conversions and disallowed syntax."""
    assert handle_request(text, HANDLERS) == SYNTAX_ERROR_REPLY


def test_handler_exceptions():
    """Unexpected errors hide details; RequestError args are joined by single spaces."""
    assert handle_request("fail", HANDLERS) == HANDLER_ERROR_REPLY
    assert handle_request("refuse now", HANDLERS) == "not allowed: now 42"


def test_sub_requests_run_in_order_with_one_reply():
    """All sub-requests run in order; the reply is the last result."""
    calls = []

    def log(item: str) -> str:
        """Record the call."""
        calls.append(item)
        return f"logged {item}"

    assert handle_request("log a; log \"b;c\" ; log('d')", {"log": log}) == "logged d"
    assert calls == ["a", "b;c", "d"]


def test_first_failure_stops_and_is_the_reply():
    """A failing sub-request ends the message; later ones do not run."""
    calls = []

    def log(item: str) -> str:
        """Record the call."""
        calls.append(item)
        return item

    handlers = {"log": log, "fail": fail}
    assert handle_request("log a; fail; log b", handlers) == HANDLER_ERROR_REPLY
    assert calls == ["a"]
    assert handle_request("log a; log 'x", handlers) == SYNTAX_ERROR_REPLY
    assert calls == ["a"]  # parse errors are found before anything runs


def test_dispatch_with_parsed_requests():
    """dispatch() takes parsed requests and returns the one reply."""
    assert dispatch(parse_requests("add 1; add 2"), HANDLERS) == "3"
    assert dispatch([], HANDLERS) == SYNTAX_ERROR_REPLY


@given(st.text(alphabet=digits.TABLE, min_size=1))
def test_sprite_quoted_arguments_round_trip(value):
    """Whatever the sprite quotes (escaping ' \" \\) reaches a str handler unchanged."""
    assert handle_request("shout " + sprite_argument(value), {"shout": lambda text: text}) == value


@given(st.integers(-(10**30), 10**30))
def test_unquoted_integers_reach_int_handlers_exactly(number):
    """Integers arrive exactly, also beyond 2**53."""
    assert handle_request(f"add {number} 0", HANDLERS) == str(number)


HUGE = "1" + "0" * 4400  # past Python's int-string limit of 4300 digits
HUGE_HEX = "0x" + "f" * 4000  # converts (power-of-two base) but has ~4800 decimal digits


def test_integers_past_the_int_string_limit_stay_text():
    """An integer token Python cannot convert to and from text is kept as its text."""
    assert token_value(HUGE) == HUGE
    assert token_value("-" + HUGE[1:]) == "-" + HUGE[1:]
    assert token_value(HUGE_HEX) == HUGE_HEX
    assert token_value("1" + "0" * 4299) == 10**4299  # just within the limit: exact


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        (f"echo {HUGE}", HUGE),
        (f"echo {HUGE_HEX} x", f"{HUGE_HEX} x"),
        (f"shout {HUGE}", HUGE),
        (f"scale {HUGE}", "inf"),
        (f"add {HUGE}", SYNTAX_ERROR_REPLY),
        (f"add {HUGE_HEX}", SYNTAX_ERROR_REPLY),
        (f"nope {HUGE}", SYNTAX_ERROR_REPLY),
        (f"add({HUGE})", SYNTAX_ERROR_REPLY),
        (f"add({HUGE_HEX})", SYNTAX_ERROR_REPLY),
        (f"scale([{HUGE_HEX}])", SYNTAX_ERROR_REPLY),
    ],
)
def test_requests_with_huge_integers_get_one_reply(text, reply):
    """Huge integer text is answered: converted where it can be, else the syntax-error reply."""
    assert handle_request(text, HANDLERS) == reply


def test_huge_integer_results_are_written_as_scratch_would():
    """A result Python cannot write in decimal is Infinity, as the double Scratch holds."""
    assert format_result(10**5000) == "Infinity"
    assert format_result(-(10**5000)) == "-Infinity"
    assert format_result(10**4299) == str(10**4299)
    assert format_result([10**5000, 1], lists=True) == ["Infinity", "1"]
