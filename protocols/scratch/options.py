"""The [scratch] table of config.toml, and what it resolves to at start."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from server.budget import ReadLimits
from server.config import at_least, choice
from server.fanout import FanoutSettings
from server.rooms import RoomLimits

from ..validators import combine_filters, load_username_filters


@dataclass(frozen=True)
class ScratchSection:
    batch_hz: float = field(default=66.0, metadata=at_least(0.0))
    burst_window_ms: float = field(default=2.0, metadata={"min": 0.0, "max": 1000.0})
    coalesce: str = field(default="latest", metadata=choice("latest", "all"))
    max_pending_lines: int = field(default=4096, metadata=at_least(1))
    messages_per_second: float = field(default=10_000.0, metadata=at_least(0.0))
    message_burst: int = field(default=1000, metadata=at_least(1))
    max_variables_per_room: int = field(default=128, metadata=at_least(1))
    max_clients_per_room: int = field(default=128, metadata=at_least(1))
    max_rooms: int = field(default=16384, metadata=at_least(1))
    max_room_id_length: int = field(default=999, metadata=at_least(1))
    max_value_length: int = field(default=100_000, metadata=at_least(1))
    invalid_room_close_code: int = field(default=4004, metadata=choice(4000, 4004))
    blocked_rooms: list[str] = field(default_factory=list)
    blocked_rooms_file: str = ""
    cookie_tripwire: bool = True
    require_user_agent: bool = False
    user_agent_message: str = (
        "Please provide a valid User-Agent header with contact information. If you use a cloud "
        "variable library, contact the author to find out how to do that."
    )
    username_filters: list[str] = field(default_factory=lambda: ["builtin:impersonation"])
    allow_delete: bool = False
    allow_rename: bool = False
    allow_non_numeric_values: bool = False
    split_newline_messages: bool = False
    strict_variable_names: bool = False


@dataclass(frozen=True)
class ScratchOptions:
    """Settings of the [scratch] table, prepared for the hot path."""

    section: ScratchSection
    blocked_rooms: frozenset[str] = frozenset()
    username_filters: list[re.Pattern] = field(default_factory=list)

    @classmethod
    def from_config(cls, section: ScratchSection) -> ScratchOptions:
        """Load filter lists and block lists named by config; raises ValueError naming them."""
        blocked = set(section.blocked_rooms)
        if section.blocked_rooms_file:
            path = Path(section.blocked_rooms_file)
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(
                    f"[scratch] blocked_rooms_file {str(path)!r} cannot be read: {exc}"
                ) from None
            blocked.update(line.strip() for line in lines if line.strip())
        try:
            filters = combine_filters(load_username_filters(section.username_filters))
        except ValueError as exc:
            raise ValueError(f"[scratch] username_filters: {exc}") from None
        return cls(section, frozenset(blocked), filters)

    def room_limits(self, idle_timeout: float, max_idle_rooms: int,
                    full_close_code: int) -> RoomLimits:
        """The limits of the Scratch room namespace ([store] adds the idle-room policy; the
        engine says how a full room refuses a join)."""
        section = self.section
        return RoomLimits(
            max_variables=section.max_variables_per_room,
            max_clients=section.max_clients_per_room,
            max_rooms=section.max_rooms,
            idle_timeout=idle_timeout,
            max_idle_rooms=max_idle_rooms,
            full_close_code=full_close_code,
        )

    def fanout_settings(self) -> FanoutSettings:
        """How Scratch rooms batch their updates."""
        section = self.section
        return FanoutSettings(
            batch_hz=section.batch_hz,
            burst_window=section.burst_window_ms / 1000.0,
            coalesce=section.coalesce,
            max_pending_lines=section.max_pending_lines,
        )

    def read_limits(self, bytes_per_second: float) -> ReadLimits:
        """How fast a Scratch client is read: its messages are nearly all sets."""
        section = self.section
        return ReadLimits(section.messages_per_second, section.message_burst, bytes_per_second)
