"""scratchcommunication's 91-symbol character table and its 2-digit codec (spec §2)."""

from __future__ import annotations

import re

# 0-based index = code - 1; identical to the sprite's 91 costume names, in order.
TABLE = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,-:;_'#!\"§$%&/()=?{[]}\\0123456789<>ß*"
)
TABLE_SIZE = len(TABLE)
assert TABLE_SIZE == 91

INDEX_OF = {char: index for index, char in enumerate(TABLE)}
REPLACEMENT_CHAR = "?"

_ASCII_DIGITS = re.compile(r"[0-9]*")


def is_ascii_digits(value: str) -> bool:
    """True if `value` consists only of ASCII digits (str.isdigit also accepts '²', '٣', …)."""
    return _ASCII_DIGITS.fullmatch(value) is not None


def sanitize(text: str) -> str:
    """Replace every character outside the table with '?', as the sprite's own encoder does."""
    return "".join(char if char in INDEX_OF else REPLACEMENT_CHAR for char in text)


def encode(text: str) -> str:
    """Encode text as 2 digits per character; characters outside the table become '?' (72)."""
    replacement_index = INDEX_OF[REPLACEMENT_CHAR]
    return "".join(f"{INDEX_OF.get(char, replacement_index) + 1:02d}" for char in text)


def decode(digits: str) -> str:
    """Decode 2-digit codes 01–91; raise ValueError on odd length, non-digits or other codes."""
    if len(digits) % 2 or not is_ascii_digits(digits):
        raise ValueError("encoded text must be an even number of ASCII digits")
    chars = []
    for position in range(0, len(digits), 2):
        code = int(digits[position : position + 2])
        if not 1 <= code <= TABLE_SIZE:
            raise ValueError(f"code {code:02d} at digit {position} is outside 01-91")
        chars.append(TABLE[code - 1])
    return "".join(chars)
