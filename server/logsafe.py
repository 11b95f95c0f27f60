"""Make client-supplied text safe to log: control characters escaped, length bounded."""

from __future__ import annotations

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
# Lone surrogates (valid in JS strings, so in client text) cannot be encoded by a log handler.
_ESCAPES.update({code: f"\\u{code:04x}" for code in range(0xD800, 0xE000)})


def printable(text: object, limit: int = 120) -> str:
    """`text` with control characters escaped and cut to `limit` characters."""
    if isinstance(text, str):
        value = text
    else:
        try:
            value = repr(text)
        except (ValueError, RecursionError):
            # An int beyond Python's int-string limit, or a structure nested past the stack.
            value = f"<unprintable {type(text).__name__}>"
    if len(value) > limit:
        value = value[:limit] + f"...({len(value)} chars)"
    return value.translate(_ESCAPES)
