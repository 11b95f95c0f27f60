"""The Scratch protocol as a component of the server: what it registers and when."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.codes import CloseCode
from server.session import ProtocolEntry

from ..validators import is_valid_room_id, is_valid_value
from .engine import ROOM_FULL, ScratchSession, accepts_name, connect_refusal
from .options import ScratchOptions, ScratchSection
from .wire import CODEC, NAMESPACE

if TYPE_CHECKING:
    from server.app import Server
    from server.rooms import RoomRegistry


class ScratchProtocol:
    """Serves Scratch/TurboWarp clients: the "scratch" room namespace and its sessions.

    It takes every connection whose first message no other protocol claimed, so it is
    registered last.
    """

    name = "scratch"

    def __init__(self, section: ScratchSection) -> None:
        self.options = ScratchOptions.from_config(section)
        self.server: Server | None = None
        self.rooms: RoomRegistry | None = None

    def install(self, server: Server) -> None:
        """Register the protocol and the upgrade check (cookie tripwire, User-Agent)."""
        self.server = server
        read_limits = self.options.read_limits(server.config.server.max_bytes_per_second)
        server.protocols.add(ProtocolEntry(self.name, self.detect, self.open, read_limits))
        server.upgrade_checks.append(self.refusal)
        server.facade.provide(self.name, ScratchService(self.options))

    async def start(self, server: Server) -> None:
        """Open the room namespace (the store is open now)."""
        store = server.config.store
        self.rooms = server.open_rooms(
            NAMESPACE,
            CODEC,
            self.options.room_limits(store.room_idle_timeout, store.max_idle_rooms, ROOM_FULL),
            self.options.fanout_settings(),
        )
        if server.plugins.hooks("variable"):
            self.rooms.variable_hooks_for = server.plugins.variable_hooks

    async def stop(self) -> None:
        """Nothing of its own: the server flushes and persists the rooms."""

    @staticmethod
    def detect(first_text: str) -> bool:
        """Every first message is Scratch's if no protocol before it claimed it."""
        return True

    def open(self, peer: Any, token: Any) -> ScratchSession:
        """A new session for `peer`."""
        return ScratchSession(peer, self.rooms, self.options, self.server.plugins)

    def refusal(self, peer: Any) -> tuple[str, int] | None:
        """Why a new connection is refused before its first message, if it is."""
        return connect_refusal(peer, self.options)


class ScratchService:
    """The Scratch protocol's rules for writers that are not clients (the admin API, tools):
    the facade service "scratch". The checks are the engine's own, so a value an operator
    writes is accepted exactly when a client's `set` of it would be."""

    namespace = NAMESPACE
    # The code a client of a blocked project is closed with: TurboWarp stops reconnecting.
    blocked_code = CloseCode.SCRATCH_PROJECT_UNAVAILABLE

    def __init__(self, options: ScratchOptions) -> None:
        self.options = options

    def valid_room_id(self, room_id: str) -> bool:
        """Whether a client could join a room of this id ([scratch] max_room_id_length)."""
        return is_valid_room_id(room_id, self.options.section.max_room_id_length)

    def blocked_by_config(self, room_id: str) -> bool:
        """Whether [scratch] blocked_rooms (or its file) refuses this room (runtime blocks are
        the facade's `is_blocked`)."""
        return room_id in self.options.blocked_rooms

    def write_refusal(self, name: Any, value: Any) -> str | None:
        """Why a client's `set` of `name` to `value` would be dropped, or None if it would not."""
        section = self.options.section
        if not is_valid_value(value, section.max_value_length, section.allow_non_numeric_values):
            kind = "a number or a string" if section.allow_non_numeric_values else (
                "a number or a numeric string")
            return (f"the value must be {kind} of at most {section.max_value_length} "
                    "characters ([scratch] max_value_length, allow_non_numeric_values)")
        if not accepts_name(name, section):
            return ("the name must start with \"☁ \" or \":cloud: \" "
                    "([scratch] strict_variable_names)")
        return None
