"""Make client-supplied text safe to log: control characters escaped, length bounded."""

from __future__ import annotations

_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def printable(text: object, limit: int = 120) -> str:
    """`text` with control characters escaped and cut to `limit` characters."""
    value = text if isinstance(text, str) else repr(text)
    if len(value) > limit:
        value = value[:limit] + f"...({len(value)} chars)"
    return value.translate(_ESCAPES)
