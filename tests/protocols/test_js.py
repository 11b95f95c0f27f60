"""JavaScript compatibility helpers (spec §3, §4, §8, §17.1-2)."""

from __future__ import annotations

import json
import math
import struct
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal, localcontext

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from protocols.js import (
    MAX_JSON_DEPTH,
    MISSING,
    JSONDepthError,
    JSONError,
    deeper_than,
    js_number_to_string,
    js_string,
    js_stringify,
    parse_json,
    surely_within_depth,
    utf16_len,
)

# ---------------------------------------------------------------------------------------------
# parse_json


@pytest.mark.parametrize(
    "text",
    ["NaN", "Infinity", "-Infinity", '{"method":"set","name":"☁ n","value":NaN}', "[Infinity]"],
)
def test_parse_json_rejects_non_finite_literals(text):
    """NaN and Infinity literals are invalid JSON in JavaScript."""
    with pytest.raises(JSONError):
        parse_json(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "{",
        "01",
        "1.",
        ".5",
        "+1",
        "[1,]",
        "{'a':1}",
        '"a\tb"',
        '"a\nb"',
        "tru",
        "[١]",
        "[１]",
        "0x10",
        '{"method":"handshake"}\n{"method":"set"}',
        "1 2",
        '"a" "b"',
        "\u00a01",
        "1\u00a0",
        "\ufeff1",
    ],
)
def test_parse_json_rejects_what_json_parse_rejects(text):
    """Malformed text, two values, non-ASCII digits or non-JSON whitespace raise JSONError."""
    with pytest.raises(JSONError):
        parse_json(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"method":"handshake"}\n', {"method": "handshake"}),
        (' \t\r\n{\n  "method": "set"\n}\n ', {"method": "set"}),
        ("[]", []),
        ('"x"', "x"),
        ("null", None),
        ("true", True),
    ],
)
def test_parse_json_allows_surrounding_json_whitespace(text, expected):
    """Space, tab, CR and LF around (and inside) the value are accepted."""
    assert parse_json(text) == expected


def test_parse_json_numbers_are_doubles():
    """Every number comes back as a float, including integer literals."""
    assert type(parse_json("5")) is float
    assert parse_json("12345678901234567890") == 12345678901234567890.0
    assert math.copysign(1.0, parse_json("-0")) == -1.0


def test_parse_json_huge_numbers_become_infinity():
    """Literals beyond the double range become Infinity, as in JavaScript."""
    assert parse_json("1e400") == math.inf
    assert parse_json("-" + "9" * 400) == -math.inf


def test_parse_json_duplicate_keys_last_wins():
    """With duplicate keys the last value wins, also for method, keeping the first position."""
    parsed = parse_json('{"method":"handshake","x":1,"method":"set"}')
    assert parsed == {"method": "set", "x": 1.0}
    assert list(parsed) == ["method", "x"]


def test_parse_json_accepts_nesting_up_to_the_limit():
    """MAX_JSON_DEPTH nested containers parse; one more is a JSONDepthError."""
    limit = MAX_JSON_DEPTH
    assert parse_json("[" * limit + "]" * limit) is not None
    with pytest.raises(JSONDepthError, match=f"nested deeper than {limit} levels"):
        parse_json("[" * (limit + 1) + "]" * (limit + 1))
    with pytest.raises(JSONDepthError):
        parse_json('{"method":"set","name":' + '{"a":' * limit + "1" + "}" * limit + "}")


def test_parse_json_bracket_characters_in_strings_do_not_count():
    """Brackets inside strings are text, not nesting: many of them still parse."""
    text = '{"method":"set","name":"☁ x","value":"' + "[{" * 5000 + '"}'
    assert parse_json(text)["value"] == "[{" * 5000


def test_parse_json_wide_structures_are_not_deep():
    """Thousands of sibling containers are one level each, not a deep structure."""
    assert len(parse_json("[" + ",".join(["[]"] * 5000) + "]")) == 5000


def test_deeper_than_measures_iteratively():
    """Depth is measured without recursion, far past the recursion limit."""
    deep: list = []
    for _ in range(50_000):
        deep = [deep]
    assert deeper_than(deep, 49_999)
    assert not deeper_than(deep, 50_001)
    assert not deeper_than("[[[", 0)
    assert deeper_than({"a": [1, {"b": []}]}, 2)
    assert not deeper_than({"a": [1, {"b": []}]}, 4)


def test_surely_within_depth_never_clears_a_deep_text():
    """The cheap text test may only say "within" when no nesting can exceed the limit."""
    assert surely_within_depth("[" * 3 + "]" * 3, 3)  # short: 2 * limit + 1 characters or fewer
    assert surely_within_depth('{"a":"' + "x" * 500 + '"}', 3)  # long, few brackets
    assert not surely_within_depth("[" * 4 + "]" * 4, 3)
    assert not surely_within_depth('"' + "[" * 10 + '"', 3)  # maybe deep: the walk decides


def test_parse_json_deep_nesting_raises_json_error():
    """Deeply nested input raises JSONError, never RecursionError."""
    with pytest.raises(JSONError):
        parse_json("[" * 100_000)
    with pytest.raises(JSONError):
        parse_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(JSONError):
        parse_json('{"a":' * 100_000 + "1" + "}" * 100_000)


def test_parse_json_keeps_lone_surrogate_escapes():
    """An escaped lone surrogate parses to a one-code-point string, a pair to one character."""
    assert parse_json('"\\ud800"') == "\ud800"
    assert parse_json('"\\ud83d\\ude00"') == "😀"


def test_parse_json_rejects_non_string_input_with_json_error():
    """Passing something other than text still raises JSONError only."""
    with pytest.raises(JSONError):
        parse_json(None)  # type: ignore[arg-type]


def test_json_error_is_a_value_error():
    """JSONError can be caught as ValueError."""
    assert issubclass(JSONError, ValueError)


_JSONISH = st.text(alphabet='[]{}":,0123456789.eE+-tnrufalsNIiy \t\n\\/ubd8', max_size=60)


@given(st.one_of(st.text(), _JSONISH))
@example("[" * 5000)
@example('{"a":NaN}')
@example("\ud800")
def test_parse_json_only_ever_raises_json_error(text):
    """Arbitrary text either parses or raises JSONError, nothing else."""
    try:
        parse_json(text)
    except JSONError:
        pass


# ---------------------------------------------------------------------------------------------
# js_number_to_string

SPEC_NUMBER_TABLE = [
    ("5.0", "5"),
    ("-0", "0"),
    ("1E5", "100000"),
    ("1e-7", "1e-7"),
    ("0.000001", "0.000001"),
    ("1e21", "1e+21"),
    ("1e20", "100000000000000000000"),
    ("12345678901234567890", "12345678901234567000"),
    ("1.5e300", "1.5e+300"),
]


@pytest.mark.parametrize(("literal", "expected"), SPEC_NUMBER_TABLE)
def test_number_formatting_matches_spec_table(literal, expected):
    """The §8.1 table: parsed literal formatted as Number#toString."""
    assert js_number_to_string(parse_json(literal)) == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (-1.5, "-1.5"),
        (123.456, "123.456"),
        (1e-6, "0.000001"),
        (1.5e-6, "0.0000015"),
        (1e-7, "1e-7"),
        (-1.5e-7, "-1.5e-7"),
        (123e-20, "1.23e-18"),
        (1e21, "1e+21"),
        (-1e21, "-1e+21"),
        (999999999999999900000.0, "999999999999999900000"),
        (2.0**53, "9007199254740992"),
        (2.0**53 + 2, "9007199254740994"),
        (2.0**63, "9223372036854776000"),
        (5e-324, "5e-324"),
        (2.2250738585072014e-308, "2.2250738585072014e-308"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (math.inf, "Infinity"),
        (-math.inf, "-Infinity"),
        (math.nan, "NaN"),
        (5, "5"),
        (10**21, "1e+21"),
        (10**400, "Infinity"),
        (-(10**400), "-Infinity"),
    ],
)
def test_number_formatting_edge_cases(number, expected):
    """Known Number#toString outputs around the notation boundaries and double limits."""
    assert js_number_to_string(number) == expected


def test_number_formatting_rejects_booleans():
    """A bool is not a JavaScript number."""
    with pytest.raises(TypeError):
        js_number_to_string(True)


def _double_from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


_ANY_FINITE_DOUBLE = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(0, 2**64 - 1).map(_double_from_bits).filter(math.isfinite),
    st.integers(0, 2**52).map(lambda mantissa: _double_from_bits(mantissa)),  # subnormals
)


@given(_ANY_FINITE_DOUBLE)
def test_number_formatting_round_trips(number):
    """Parsing the formatted text gives back the same double."""
    assert float(js_number_to_string(number)) == number


def _shortest_decimal(number: float) -> tuple[str, int]:
    """Independent ECMAScript digit search: (digits, n) with value 0.digits x 10**n."""
    exact = Decimal(number)  # exact binary value
    with localcontext(Context(prec=2000)):
        leading_power = exact.adjusted()
        for precision in range(1, 18):
            quantum = Decimal(1).scaleb(leading_power - precision + 1)
            candidates = {
                exact.quantize(quantum, rounding=ROUND_FLOOR),
                exact.quantize(quantum, rounding=ROUND_CEILING),
            }
            round_trips = [c for c in candidates if c != 0 and float(c) == number]
            if round_trips:
                # ECMAScript: the candidate closest to the value, then the even one.
                best = min(
                    round_trips,
                    key=lambda c: (abs(c - exact), int(c.scaleb(-c.as_tuple().exponent)) % 2),
                )
                sign, digit_tuple, exponent = best.normalize().as_tuple()
                digits = "".join(map(str, digit_tuple))
                return digits, len(digits) + exponent
    raise AssertionError(f"no round-tripping decimal for {number!r}")


def _ecmascript_format(number: float) -> str:
    """Number::toString steps from ECMA-262, written from the standard's text."""
    if number == 0:
        return "0"
    if number < 0:
        return "-" + _ecmascript_format(-number)
    digits, n = _shortest_decimal(number)
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    exponent = f"{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    if k == 1:
        return f"{digits}e{exponent}"
    return f"{digits[0]}.{digits[1:]}e{exponent}"


@given(_ANY_FINITE_DOUBLE)
@example(5e-324)
@example(2.0**-1074 * 3)
@example(1e21)
@example(999999999999999900000.0)
@example(1e-7)
@example(9.999999999999999e22)
@example(2.0**1023)
def test_number_formatting_matches_independent_formatter(number):
    """js_number_to_string agrees with a brute-force Decimal-based ECMAScript formatter."""
    assert js_number_to_string(number) == _ecmascript_format(number)


# ---------------------------------------------------------------------------------------------
# js_string


@pytest.mark.parametrize(
    ("json_text", "expected"),
    [
        ('"123"', "123"),
        ("123", "123"),
        ("7.0", "7"),
        ("1e21", "1e+21"),
        ("true", "true"),
        ("false", "false"),
        ("null", "null"),
        ("[]", ""),
        ("[null,1]", ",1"),
        ("[1,[2,3]]", "1,2,3"),
        ("[[],[]]", ","),
        ("[[null]]", ""),
        ('["a",true,{"x":1},1.5]', "a,true,[object Object],1.5"),
        ("{}", "[object Object]"),
        ('{"a":[1]}', "[object Object]"),
        ('"☁ x"', "☁ x"),
    ],
)
def test_js_string_matches_spec_table(json_text, expected):
    """String() coercion of parsed JSON, per the §8.2 table and §6.2 room examples."""
    assert js_string(parse_json(json_text)) == expected


def test_js_string_of_missing_is_undefined():
    """A missing key coerces to "undefined", and a missing array item to ""."""
    assert js_string(MISSING) == "undefined"
    assert js_string([MISSING, 1.0]) == ",1"


def test_js_string_handles_arbitrarily_deep_arrays():
    """Nested arrays far beyond the recursion limit join without RecursionError."""
    deep: list = [1.0]
    for _ in range(50_000):
        deep = [deep]
    assert js_string(deep) == "1"


def test_js_string_rejects_non_json_types():
    """Values with no JSON counterpart raise TypeError."""
    with pytest.raises(TypeError):
        js_string(object())


# ---------------------------------------------------------------------------------------------
# utf16_len


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("abc", 3),
        ("☁ x", 3),
        ("é", 1),
        ("😀", 2),
        ("😀" * 500, 1000),
        ("😀" * 499, 998),
        ("\ud800", 1),
        ("a\udfffb", 3),
    ],
)
def test_utf16_len_counts_code_units(text, expected):
    """Astral characters count 2, lone surrogates 1, everything else 1."""
    assert utf16_len(text) == expected


# ---------------------------------------------------------------------------------------------
# js_stringify


def test_stringify_wire_message_is_compact_ordered_and_unescaped():
    """A set line keeps key order, has no spaces and leaves ☁ unescaped (conformance 3)."""
    message = {"method": "set", "name": "☁ x", "value": "42"}
    assert js_stringify(message) == '{"method":"set","name":"☁ x","value":"42"}'


def test_stringify_omits_missing_members():
    """A MISSING name is omitted, like an undefined property in JavaScript."""
    message = {"method": "set", "name": MISSING, "value": "8"}
    assert js_stringify(message) == '{"method":"set","value":"8"}'


def test_stringify_missing_in_array_is_null():
    """undefined inside an array serialises as null."""
    assert js_stringify([MISSING, 1.0]) == "[null,1]"


def test_stringify_top_level_missing_raises():
    """A bare MISSING has no JSON text."""
    with pytest.raises(TypeError):
        js_stringify(MISSING)


@pytest.mark.parametrize(("literal", "expected"), SPEC_NUMBER_TABLE)
def test_stringify_formats_numbers_like_javascript(literal, expected):
    """Numbers in output use Number#toString, as value and nested inside a name."""
    number = parse_json(literal)
    assert js_stringify(number) == expected
    nested = {"method": "set", "name": [{"k": number}], "value": number}
    assert js_stringify(nested) == (
        '{"method":"set","name":[{"k":' + expected + '}],"value":' + expected + "}"
    )


def test_stringify_non_finite_numbers_become_null():
    """NaN and Infinity serialise as null, as JSON.stringify does."""
    assert js_stringify(math.inf) == "null"
    assert js_stringify([math.nan, -math.inf]) == "[null,null]"
    assert js_stringify(10**400) == "null"


def test_stringify_scalars():
    """Booleans, null, ints and non-string names serialise as JavaScript would."""
    assert js_stringify(True) == "true"
    assert js_stringify(False) == "false"
    assert js_stringify(None) == "null"
    assert js_stringify(12) == "12"
    message = {"method": "set", "name": 12.0, "value": "1"}
    assert js_stringify(message) == '{"method":"set","name":12,"value":"1"}'
    assert js_stringify({"name": None}) == '{"name":null}'


def test_stringify_lone_surrogate_is_escaped_lowercase():
    """A lone surrogate becomes the six-character escape \\ud800 (lower-case hex)."""
    assert js_stringify("\ud800") == '"\\ud800"'
    assert js_stringify("a\udfffb") == '"a\\udfffb"'
    assert js_stringify("\udabc") == '"\\udabc"'
    assert js_stringify({"\ud800": "\udc00x"}) == '{"\\ud800":"\\udc00x"}'


def test_stringify_result_is_utf8_encodable():
    """The output never holds a raw surrogate, so it can always be sent as UTF-8."""
    js_stringify(["\ud800", {"v": "\udfff☁😀"}]).encode("utf-8")


def test_stringify_surrogate_pair_code_points_form_one_character():
    """A high+low surrogate pair is one character to JavaScript, so it is emitted raw."""
    assert js_stringify("\ud83d\ude00") == '"😀"'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('a"b', '"a\\"b"'),
        ("a\\b", '"a\\\\b"'),
        ("\b\t\n\f\r", '"\\b\\t\\n\\f\\r"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
        ("\x7f", '"\x7f"'),
        ("\u2028\u2029", '"\u2028\u2029"'),
        ("/", '"/"'),
        ("é☁😀", '"é☁😀"'),
    ],
)
def test_stringify_escapes_like_javascript(text, expected):
    """Only quote, backslash and control characters are escaped, with JS's short forms."""
    assert js_stringify(text) == expected


def test_stringify_empty_containers():
    """Empty arrays and objects serialise compactly."""
    assert js_stringify([]) == "[]"
    assert js_stringify({}) == "{}"
    assert js_stringify({"a": [], "b": {}}) == '{"a":[],"b":{}}'


def test_stringify_deep_nesting_has_no_recursion_error():
    """Structures nested beyond the recursion limit serialise iteratively."""
    deep: list = []
    for _ in range(50_000):
        deep = [deep]
    assert js_stringify(deep) == "[" * 50_001 + "]" * 50_001


def test_stringify_rejects_cycles():
    """A self-referencing structure raises ValueError instead of looping."""
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError):
        js_stringify(cyclic)


def test_stringify_repeated_shared_object_is_not_a_cycle():
    """The same object appearing twice (not nested in itself) serialises twice."""
    shared = {"a": 1.0}
    assert js_stringify([shared, shared]) == '[{"a":1},{"a":1}]'


def test_stringify_rejects_unknown_types():
    """Objects with no JSON form raise TypeError."""
    with pytest.raises(TypeError):
        js_stringify({"value": object()})


def test_parse_then_stringify_round_trips_wire_message():
    """A GUI set message re-serialises to the canonical relay line."""
    received = parse_json('{"method":"set","name":"\\u2601 x","value":5.0,"user":"p"}\n')
    relay = {"method": "set", "name": received["name"], "value": received["value"]}
    assert js_stringify(relay) == '{"method":"set","name":"☁ x","value":5}'


_JSON_TEXT = st.text(st.characters(exclude_categories=()))  # includes lone surrogates
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(-(2**53), 2**53)
    | _JSON_TEXT,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(_JSON_TEXT, children, max_size=5)
    ),
    max_leaves=20,
)


@given(_JSON_VALUES)
def test_stringify_output_parses_back_to_equal_value(value):
    """js_stringify output is valid JSON that loads back to an equal value."""
    text = js_stringify(value)
    text.encode("utf-8")
    # parse_int=float: a large double prints as shortest digits padded with zeros, which is a
    # different exact integer than the double itself.
    assert json.loads(text, parse_int=float) == value
    assert parse_json(text) == value


def _has_float_or_surrogate(value) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, str):
        return any("\ud800" <= ch <= "\udfff" for ch in value)
    if isinstance(value, list):
        return any(_has_float_or_surrogate(item) for item in value)
    if isinstance(value, dict):
        items = value.items()
        return any(_has_float_or_surrogate(k) or _has_float_or_surrogate(v) for k, v in items)
    return False


@given(_JSON_VALUES)
def test_stringify_matches_json_dumps_where_python_agrees_with_js(value):
    """Without floats or surrogates the output equals compact json.dumps(ensure_ascii=False)."""
    if _has_float_or_surrogate(value):
        return
    expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert js_stringify(value) == expected
