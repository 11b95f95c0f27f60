"""The one interface between the core and a wire protocol, and the registry that picks one.

The core owns sockets; a protocol engine owns what the text means. A connection's first text
message goes to `ProtocolRegistry.select`, which offers it to each registered protocol in
order; the first whose `detect` claims it opens a session for the connection (with what
`detect` learnt, so the message is parsed once). From then on the core calls `receive` for
every text message, the first included, and `closed` once when the connection is done (our
close frame sent, or TCP gone). The engine answers only through the
`Peer` it was given: text or pre-encoded frames out, a close code. It never touches a socket,
a task or the clock of the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


class Peer(Protocol):
    """What a protocol engine may do with the connection it serves (the core implements it)."""

    id: int  # unique per connection for the life of the process (admin API, plugins)
    peer: str  # the client's address, after trusted-proxy processing

    @property
    def username(self) -> str | None:
        """The name its session's client gave, if any (unauthenticated): how the core names
        the author of a write, e.g. in the history."""

    @property
    def is_open(self) -> bool:
        """True while frames can be sent."""

    def header(self, name: str) -> str:
        """A header of the upgrade request ("" when absent)."""

    def send_text(self, text: str) -> None:
        """Encode and send one text message (ignored once the connection is closing)."""

    def send_frame(self, frame: bytes) -> None:
        """Send one pre-encoded frame (ignored once the connection is closing)."""

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake with `code`."""


class Session(Protocol):
    """One connection speaking one protocol."""

    protocol_name: ClassVar[str]

    @property
    def identified(self) -> bool:
        """True once the client identified itself (the handshake deadline stops applying)."""

    @property
    def username(self) -> str | None:
        """The name the client gave, if any (unauthenticated)."""

    @property
    def room_id(self) -> str | None:
        """The room the client is in (its first, for protocols with several), if any."""

    def receive(self, text: str) -> None:
        """Handle one text message; never raises."""

    def closed(self) -> None:
        """The connection ended (called once)."""


@dataclass(frozen=True)
class ProtocolEntry:
    """A protocol the core can hand connections to.

    `detect(first_text)` returns None to let the next protocol look at the first message, or
    a token (for example the message already parsed) that `open(peer, token)` gets to start
    the session with; the core then hands the session that first message through `receive`.
    `read_limits`, if given, replaces the connection's read budget once the protocol is chosen
    (e.g. Scratch reads messages faster than the core's default).
    """

    name: str
    detect: Callable[[str], Any]
    open: Callable[[Any, Any], Session]
    read_limits: Any = None


class ProtocolRegistry:
    """Protocols in the order they are offered a connection's first message."""

    def __init__(self) -> None:
        self.entries: list[ProtocolEntry] = []

    def add(self, entry: ProtocolEntry, *, first: bool = False) -> None:
        """Register a protocol (after those registered before, or first)."""
        if any(existing.name == entry.name for existing in self.entries):
            raise ValueError(f"protocol {entry.name!r} is registered twice")
        if first:
            self.entries.insert(0, entry)
        else:
            self.entries.append(entry)

    def names(self) -> list[str]:
        """Registered protocol names, in order."""
        return [entry.name for entry in self.entries]

    def select(self, first_text: str) -> tuple[ProtocolEntry, Any] | None:
        """The first protocol whose `detect` claims `first_text`, with its token; or None."""
        for entry in self.entries:
            token = entry.detect(first_text)
            if token is not None:
                return entry, token
        return None
