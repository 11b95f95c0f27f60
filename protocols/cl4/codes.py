"""CL4 status codes (`statuscode` messages): the 0.2.0 table of spec §7 plus Stratus' own."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Status", "StatusCode"]


class Status(NamedTuple):
    """One status code: its kind ("I" or "E"), number and exact wire text."""

    kind: str
    code_id: int
    text: str

    @property
    def code(self) -> str:
        """The `code` field, e.g. "I:100 | OK" (exactly one space each side of the bar)."""
        return f"{self.kind}:{self.code_id} | {self.text}"


class StatusCode:
    """Every status this server sends; numbers below 116 are CloudLink 4's own (spec §7)."""

    OK = Status("I", 100, "OK")
    SYNTAX = Status("E", 101, "Syntax")
    ID_NOT_FOUND = Status("E", 103, "ID not found")
    ID_NOT_SPECIFIC_ENOUGH = Status("E", 104, "ID not specific enough")
    INTERNAL_SERVER_ERROR = Status("E", 105, "Internal server error")
    EMPTY_PACKET = Status("E", 106, "Empty packet")
    ID_ALREADY_SET = Status("E", 107, "ID already set")
    REFUSED = Status("E", 108, "Refused")
    INVALID_COMMAND = Status("E", 109, "Invalid command")
    COMMAND_DISABLED = Status("E", 110, "Command disabled")
    ID_REQUIRED = Status("E", 111, "ID required")
    ID_CONFLICT = Status("E", 112, "ID conflict")
    TOO_LARGE = Status("E", 113, "Too large")
    JSON_ERROR = Status("E", 114, "JSON error")
    ROOM_NOT_JOINED = Status("E", 115, "Room not joined")
    # Server-defined (spec §7: numbers >= 116, not 200-204).
    RATE_LIMITED = Status("E", 116, "Rate limited")
    TOO_MANY_ROOMS = Status("E", 117, "Too many rooms")
