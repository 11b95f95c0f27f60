"""scratchcommunication 91-symbol codec (spec §2, §9.1; §15 check 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.sprites import digits

from .testdata import SCRATCHCOMMUNICATION_SB3, costume_names

table_text = st.text(alphabet=digits.TABLE)


def test_table_is_the_sprites_costume_list():
    """The table equals the CloudConnection sprite's 91 costume names, in order."""
    assert list(digits.TABLE) == costume_names(SCRATCHCOMMUNICATION_SB3, "CloudConnection")


@pytest.mark.parametrize(
    ("char", "code"),
    [("a", "01"), ("z", "26"), ("A", "27"), ("Z", "52"), (" ", "53"), ("?", "72"), ("\\", "77")],
)
def test_table_boundaries(char, code):
    """Spot codes at the group boundaries of §2."""
    assert digits.encode(char) == code


@pytest.mark.parametrize(
    ("char", "code"), [("0", "78"), ("9", "87"), ("<", "88"), (">", "89"), ("ß", "90"), ("*", "91")]
)
def test_table_digits_and_tail(char, code):
    """Digits and the last four symbols (codes 78–91)."""
    assert digits.encode(char) == code


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("_connect", "5903151414050320"),
        ("_safe_connect:", "5919010605590315141405032057"),
        ("Hello server!", "34051212155319051822051862"),
        ("Hi", "3409"),
    ],
)
def test_known_encodings(text, expected):
    """§2 and §9.1 known answers."""
    assert digits.encode(text) == expected
    assert digits.decode(expected) == text


def test_characters_outside_the_table_become_question_marks():
    """Newline, @, +, |, ~, ^, backtick and non-ASCII (except § and ß) encode as 72."""
    assert digits.encode("\n@+|~^`é☁") == "72" * 9
    assert digits.encode("§ß") == "6490"


@pytest.mark.parametrize("bad", ["1", "123", "00", "92", "99", "0a", "-1", "٣٣", "０１"])
def test_decode_rejects_malformed_input(bad):
    """Odd length, codes outside 01–91 and non-ASCII digits are malformed."""
    with pytest.raises(ValueError):
        digits.decode(bad)


def test_is_ascii_digits_rejects_unicode_digits():
    """str.isdigit would accept these; wire values are ASCII only."""
    assert digits.is_ascii_digits("0123456789")
    assert digits.is_ascii_digits("")
    assert not digits.is_ascii_digits("²")
    assert not digits.is_ascii_digits("12a")


@given(table_text)
def test_round_trip_over_the_table(text):
    """decode(encode(x)) == x for text over the table; 2 digits per character."""
    encoded = digits.encode(text)
    assert len(encoded) == 2 * len(text)
    assert digits.decode(encoded) == text


@given(st.text())
def test_round_trip_of_arbitrary_text_is_sanitized(text):
    """Any text round-trips to its sanitized form ('?' for unknown characters)."""
    assert digits.decode(digits.encode(text)) == digits.sanitize(text)
