"""CL4 on the core's connections: frames in, frames out, with a bound on what may queue.

CL4 messages are not latest-value-wins: each is its own frame and they queue in order. A
broadcast hands the same message dict to every recipient, so it is encoded once. A client
whose unsent data grows past `max_queue_bytes` is disconnected with 1013 (try again later):
it reconnects and starts fresh instead of holding the server's memory hostage.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from server.connection import OPEN
from server.framing import encode_text
from server.logsafe import printable

from .engine import Cl4Engine
from .options import Cl4Options
from .wire import encode_message

if TYPE_CHECKING:
    from server.connection import Connection

log = logging.getLogger("stratus.cl4")

TOO_FAR_BEHIND = 1013


class Cl4Endpoint:
    """The engine plus the I/O callables it needs."""

    def __init__(self, options: Cl4Options, max_queue_bytes: int) -> None:
        self.engine = Cl4Engine(self._send, self._close, options)
        self.max_queue_bytes = max_queue_bytes
        # The last message encoded, kept alive so its id cannot be reused while cached.
        self._last_message: Any = None
        self._last_frame = b""

    def session_for(self, connection: Connection) -> Cl4Session:
        """Attach a new CL4 session to a connection whose first message looked like CL4."""
        self.engine.connect(connection, connection.peer)
        return Cl4Session(self, connection)

    def _send(self, connection: Connection, message: dict | str) -> None:
        if connection.state != OPEN:
            return
        if isinstance(message, str):
            frame = encode_text(message)
        elif message is self._last_message:
            frame = self._last_frame
        else:
            frame = encode_text(encode_message(message))
            self._last_message, self._last_frame = message, frame
        transport = connection.transport
        transport.write(frame)
        if connection.paused and transport.get_write_buffer_size() > self.max_queue_bytes:
            log.info("disconnecting CL4 client %s: %d bytes unsent", printable(connection.peer),
                     transport.get_write_buffer_size())
            connection.close(TOO_FAR_BEHIND)
            self.engine.disconnect(connection)

    @staticmethod
    def _close(connection: Connection, code: int, reason: str) -> None:
        connection.close(code, reason)

    # Helpers for the plugin host

    def send_room(self, room: str, message: dict) -> int:
        members = self.engine.room_members(room)
        for member in members:
            self.engine.send(member, message)
        return len(members)

    def broadcast(self, message: dict) -> int:
        sessions = [s for s in self.engine.sessions() if s.identified]
        for session in sessions:
            self.engine.send(session, message)
        return len(sessions)


class Cl4Session:
    """One connection speaking CL4 (the engine keeps the protocol state)."""

    __slots__ = ("endpoint", "connection")

    protocol_name = "cl4"

    def __init__(self, endpoint: Cl4Endpoint, connection: Connection) -> None:
        self.endpoint = endpoint
        self.connection = connection

    @property
    def state(self):
        return self.endpoint.engine.session(self.connection)

    @property
    def identified(self) -> bool:
        """True once a valid CL4 command identified the client."""
        state = self.state
        return state is not None and state.identified

    @property
    def username(self) -> str | None:
        state = self.state
        return state.username if state is not None else None

    def on_text(self, text: str) -> None:
        self.endpoint.engine.receive(self.connection, text)

    def on_close(self) -> None:
        self.endpoint.engine.disconnect(self.connection)

    def send_message(self, message: dict) -> None:
        """Send this client one CL4 message."""
        state = self.state
        if state is not None:
            self.endpoint.engine.send(state, message)

    def close(self, code: int) -> None:
        self.connection.close(code)
        self.endpoint.engine.disconnect(self.connection)
