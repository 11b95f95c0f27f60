"""Username, room-ID and value validation (spec §6, §17.3-5)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.js import MISSING, js_string, parse_json
from protocols.validators import (
    USERNAME_RE,
    is_valid_room_id,
    is_valid_username,
    is_valid_value,
    load_username_filters,
)

IMPERSONATION = load_username_filters(["builtin:impersonation"])

# ---------------------------------------------------------------------------------------------
# Values (§6.3)

VALID_STRING_VALUES = ["", "-.", ".5", "-.5", "4.", "-0", "00003.3330000", "0", "42", "-12.5"]
INVALID_STRING_VALUES = [
    "abc",
    "1e5",
    " 4",
    "4 ",
    "+5",
    "1,000",
    "0x03",
    "NaN",
    "Infinity",
    ".",
    "-",
    "--4",
    "4..0",
    "12\n",
    "\n12",
    "٣٤",
    "²",
    "１２",
    "4-",
    "-4-",
    "..",
    "1.2.3",
]


@pytest.mark.parametrize("value", VALID_STRING_VALUES)
def test_numeric_strings_are_valid(value):
    """Strings that follow the numeric rule are accepted verbatim."""
    assert is_valid_value(value)


@pytest.mark.parametrize("value", INVALID_STRING_VALUES)
def test_non_numeric_strings_are_invalid(value):
    """Strings breaking the numeric rule (incl. non-ASCII digits) are rejected."""
    assert not is_valid_value(value)


def test_value_length_limit_is_inclusive():
    """100 000 digits are valid, 100 001 are not."""
    assert is_valid_value("7" * 100_000)
    assert not is_valid_value("7" * 100_001)
    assert is_valid_value("-" + "7" * 99_998 + ".")
    assert not is_valid_value("-" + "7" * 99_999 + ".")


def test_value_length_limit_is_configurable():
    """max_length replaces the 100 000 default."""
    assert is_valid_value("123", max_length=3)
    assert not is_valid_value("1234", max_length=3)


def test_long_near_miss_is_rejected_quickly():
    """A 100 000-digit string with a bad last character is rejected (no catastrophic backtrack)."""
    assert not is_valid_value("1" * 99_999 + "x")
    assert not is_valid_value("1" * 50_000 + "." + "1" * 49_997 + "..")


@pytest.mark.parametrize("number", [0.0, -0.0, 5.0, -1.5, 1e-7, 1.7976931348623157e308, 5, 10**20])
def test_finite_numbers_are_valid(number):
    """Finite JSON numbers are valid values."""
    assert is_valid_value(number)


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan"), 10**400])
def test_non_finite_numbers_are_invalid(number):
    """NaN and +-Infinity (e.g. from 1e400) are rejected."""
    assert not is_valid_value(number)


def test_number_parsed_from_1e400_is_invalid():
    """The JSON number 1e400 parses to Infinity and is ignored."""
    assert not is_valid_value(parse_json("1e400"))


@pytest.mark.parametrize("value", [True, False, None, [], {}, ["1"], {"a": "1"}, MISSING, b"1"])
def test_other_types_are_invalid(value):
    """Booleans are not numbers; null, arrays, objects and a missing value are invalid."""
    assert not is_valid_value(value)


def test_allow_any_string_accepts_text_within_limit():
    """allow_any_string accepts any string up to max_length UTF-16 units, numbers unchanged."""
    assert is_valid_value("hello ☁", allow_any_string=True)
    assert is_valid_value(".", allow_any_string=True)
    assert is_valid_value("😀" * 50_000, allow_any_string=True)
    assert not is_valid_value("😀" * 50_001, allow_any_string=True)
    assert not is_valid_value("a" * 100_001, allow_any_string=True)
    assert is_valid_value(3.0, allow_any_string=True)
    assert not is_valid_value(float("nan"), allow_any_string=True)
    assert not is_valid_value(True, allow_any_string=True)


_NUMERIC_STRINGS = st.from_regex(r"\A-?[0-9]*(\.[0-9]*)?\Z", fullmatch=True)


@given(_NUMERIC_STRINGS)
def test_every_numeric_rule_string_is_valid(value):
    """Any string of the form -?digits[.digits] other than "." and "-" is valid."""
    assert is_valid_value(value) == (value not in (".", "-"))


@given(st.text(max_size=30))
def test_value_rule_agrees_with_reference_loop(value):
    """is_valid_value matches a transcription of cloud-server's character loop."""
    expected = value not in (".", "-")
    seen_decimal = False
    start = 1 if value.startswith("-") else 0
    for char in value[start:]:
        if char == ".":
            if seen_decimal:
                expected = False
            seen_decimal = True
        elif not ("0" <= char <= "9"):
            expected = False
    assert is_valid_value(value) == expected


# ---------------------------------------------------------------------------------------------
# Usernames (§6.1)


@pytest.mark.parametrize(
    "name", ["player", "Player123", "-RISEN-", "e" * 20, "player1234", "iloveceebee", "a_b", "e"]
)
def test_acceptable_usernames(name):
    """ASCII names of 1-20 characters pass, even ones merely containing a filtered name."""
    assert is_valid_username(name, IMPERSONATION)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "e" * 21,
        "bad name",
        "abcdé",
        "player1\n",
        "\nplayer1",
        "ſcratch",
        "\u212aelvin",
        "player٣٤",
        "player１",
        "player²",
        "a.b",
    ],
)
def test_malformed_usernames_are_rejected(name):
    """Wrong length or any character outside [A-Za-z0-9_-] (Unicode look-alikes too) fails."""
    assert not is_valid_username(name, IMPERSONATION)


@pytest.mark.parametrize("name", [5, 5.0, None, MISSING, ["player"], {"user": "x"}, True])
def test_non_string_usernames_are_rejected(name):
    """Only a JSON string can be a username."""
    assert not is_valid_username(name, IMPERSONATION)


@pytest.mark.parametrize(
    "name",
    ["ScratchCat", "Scratch-Cat", "scratchcat", "SCRATCH_CAT", "ceebee", "Cee-Bee", "_ceebee_"],
)
def test_impersonation_filter_blocks_scratch_team_names(name):
    """Filters see the name without - and _, case-insensitively."""
    assert not is_valid_username(name, IMPERSONATION)


def test_no_filters_means_only_the_character_rules():
    """With an empty filter list, Scratch Team names are accepted."""
    assert is_valid_username("ScratchCat", [])


def test_username_regex_is_ascii_fullmatch():
    """USERNAME_RE rejects a trailing newline and folds no Unicode letters."""
    assert USERNAME_RE.fullmatch("player1") is not None
    assert USERNAME_RE.fullmatch("player1\n") is None
    assert USERNAME_RE.fullmatch("ſ") is None


def test_filters_are_ascii_case_insensitive():
    """A filter for "sk" does not match the long s or the Kelvin sign (JS /i semantics)."""
    filters = [re.compile(r"^sk$", re.I | re.A)]
    assert not is_valid_username("SK", filters)
    assert USERNAME_RE.fullmatch("ſ\u212a") is None


# ---------------------------------------------------------------------------------------------
# Filter loading


def test_builtin_impersonation_list_loads():
    """The bundled list compiles to case-insensitive ASCII patterns, skipping comments."""
    assert len(IMPERSONATION) > 10
    assert all(p.flags & re.IGNORECASE and p.flags & re.ASCII for p in IMPERSONATION)
    assert all(not p.pattern.startswith("#") for p in IMPERSONATION)
    assert any(p.search("scratchcat") for p in IMPERSONATION)


def test_filter_file_skips_blank_and_comment_lines(tmp_path):
    """Blank lines, '#' lines and surrounding whitespace are ignored in a filter file."""
    path = tmp_path / "private.filter"
    path.write_text("# comment\n\n  ^badname$  \n\t\nevil\n", encoding="utf-8")
    filters = load_username_filters([str(path)])
    assert [p.pattern for p in filters] == ["^badname$", "evil"]
    assert not is_valid_username("Bad-Name", filters)
    assert not is_valid_username("xEVILx", filters)
    assert is_valid_username("goodname", filters)


def test_multiple_sources_are_combined(tmp_path):
    """Patterns from every source apply."""
    path = tmp_path / "extra.filter"
    path.write_text("^extra$\n", encoding="utf-8")
    filters = load_username_filters(["builtin:impersonation", str(path)])
    assert not is_valid_username("ceebee", filters)
    assert not is_valid_username("extra", filters)


def test_missing_filter_file_names_the_source(tmp_path):
    """A missing file raises ValueError that mentions the source."""
    missing = str(tmp_path / "nope.filter")
    with pytest.raises(ValueError, match=re.escape(repr(missing))):
        load_username_filters([missing])


def test_bad_regex_names_the_source_and_line(tmp_path):
    """An invalid regex raises ValueError naming the file and line."""
    path = tmp_path / "broken.filter"
    path.write_text("^ok$\n([unclosed\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.filter.*line 2"):
        load_username_filters([str(path)])


@pytest.mark.parametrize("source", ["builtin:nonexistent", "builtin:../filters/impersonation"])
def test_unknown_builtin_is_rejected(source):
    """Only bundled lists can be named with builtin:."""
    with pytest.raises(ValueError, match=re.escape(repr(source))):
        load_username_filters([source])


def test_no_sources_gives_no_filters():
    """An empty source list loads nothing."""
    assert load_username_filters([]) == []


# ---------------------------------------------------------------------------------------------
# Room IDs (§6.2)


@pytest.mark.parametrize(
    "room",
    [
        "123",
        "@p4-project.sb3",
        "example.com/my-project",
        "p4-abc-1368",
        "x" * 999,
        "😀" * 499,
        "😀" * 499 + "x",
        "undefined",
        "null",
        "[object Object]",
        "\ud800",
    ],
)
def test_acceptable_room_ids(room):
    """Any text of 1-999 UTF-16 units is a room ID."""
    assert is_valid_room_id(room)


@pytest.mark.parametrize("room", ["", "x" * 1000, "😀" * 500, "😀" * 499 + "xx"])
def test_room_ids_outside_length_limits_are_rejected(room):
    """Empty IDs and IDs over 999 UTF-16 units (500 emoji = 1000 units) are invalid."""
    assert not is_valid_room_id(room)


def test_room_id_limit_is_configurable():
    """max_length replaces the 999 default."""
    assert is_valid_room_id("abc", max_length=3)
    assert not is_valid_room_id("abcd", max_length=3)
    assert not is_valid_room_id("😀", max_length=1)


@pytest.mark.parametrize(
    ("project_id_json", "valid"),
    [('""', False), ("[]", False), ("[[]]", False), ("123", True), ("null", True), ("{}", True)],
)
def test_room_id_from_coerced_project_id(project_id_json, valid):
    """String(project_id) decides validity: [] becomes "" and is invalid."""
    assert is_valid_room_id(js_string(parse_json(project_id_json))) is valid


def test_missing_project_id_becomes_valid_undefined_room():
    """A missing project_id coerces to the valid room "undefined"."""
    assert is_valid_room_id(js_string(MISSING))


def test_non_string_room_is_rejected():
    """Room IDs must already be coerced to str."""
    assert not is_valid_room_id(123)  # type: ignore[arg-type]
