"""The Scratch protocol as a component of the server: what it registers and when."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.session import ProtocolEntry

from .engine import ScratchSession, connect_refusal
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

    async def start(self, server: Server) -> None:
        """Open the room namespace (the store is open now)."""
        store = server.config.store
        self.rooms = server.open_rooms(
            NAMESPACE,
            CODEC,
            self.options.room_limits(store.room_idle_timeout, store.max_idle_rooms),
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
