"""Client values in log lines: escaped, bounded, and never an exception of their own."""

from __future__ import annotations

from server.logsafe import printable


def test_control_characters_are_escaped_and_length_bounded():
    """C0/C1 controls and line separators are escaped; long text is cut with its length."""
    assert printable("a\nb\x1b[2J\x9b\u2028") == "a\\x0ab\\x1b[2J\\x9b\\u2028"
    assert printable("x" * 200, 10) == "x" * 10 + "...(200 chars)"


def test_values_python_cannot_repr_are_still_logged():
    """An int past the int-string limit or a structure nested past the stack gets a stand-in."""
    assert printable(10**5000) == "<unprintable int>"
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert printable(deep) == "<unprintable list>"
    assert printable([1, "\n"]) == "[1, '\\n']"


def test_lone_surrogates_are_escaped():
    """A lone surrogate from a client (a valid JS string) is written as its escape."""
    line = printable("room\ud800x")
    assert line == "room\\ud800x"
    line.encode("utf-8")  # a UTF-8 log file accepts the line
