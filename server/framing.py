"""WebSocket frame encoding for the server side (RFC 6455), pure functions.

Server frames are never masked, so one encoded frame can be written to many transports:
that is what makes "encode once, write many" possible.
"""

from __future__ import annotations

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))
DATA_OPCODES = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY))

PING_FRAME = b"\x89\x00"  # empty payload, as TurboWarp's cloud-server sends

# Close codes a peer may legitimately put on the wire (RFC 6455 7.4, plus the registered
# 1012-1014 and the application range).
_VALID_WIRE_CLOSE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011,
                                     1012, 1013, 1014))


def frame_header(opcode: int, length: int) -> bytes:
    """Header of a final, unmasked frame carrying `length` payload bytes."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """A complete text frame for an already UTF-8 encoded payload."""
    return frame_header(OP_TEXT, len(payload)) + payload


def encode_text(text: str) -> bytes:
    """A complete text frame for `text`."""
    return text_frame(text.encode("utf-8", "surrogatepass"))


def close_frame(code: int | None, reason: str = "") -> bytes:
    """A close frame; `None` sends an empty payload (no status code)."""
    if code is None:
        return b"\x88\x00"
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")
    return frame_header(OP_CLOSE, len(payload)) + payload


def is_valid_wire_close_code(code: int) -> bool:
    """True for close codes a client may send (1005/1006/1015 and unassigned ones are not)."""
    return code in _VALID_WIRE_CLOSE_CODES or 3000 <= code <= 4999


def parse_close_payload(payload: bytes) -> int | None:
    """The close code in a client's close frame; raises ValueError if the payload is invalid.

    An empty payload means "no status" (None). Invalid UTF-8 in the reason raises
    UnicodeDecodeError (a ValueError), which callers answer with 1007.
    """
    if not payload:
        return None
    if len(payload) == 1:
        raise ValueError("close frame too short")
    code = int.from_bytes(payload[:2], "big")
    payload[2:].decode("utf-8")
    if not is_valid_wire_close_code(code):
        raise ValueError(f"invalid close code {code}")
    return code
