"""CL4 as a component of the server: the engine wired to the core's connections.

CL4 messages are not latest-value-wins: each is its own frame and they queue in order, through
the core fan-out's queued path (`server.fanout.write_queued`), which closes a client whose
unsent data grows past `max_queue_bytes` with TRY_AGAIN_LATER. A broadcast hands the same
message dict to every recipient, so it is encoded once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from server.fanout import write_queued
from server.framing import encode_text
from server.session import ProtocolEntry

from ..js import MISSING
from .cluster import Cl4Cluster, RemotePeer, is_remote
from .engine import Cl4Engine
from .options import Cl4Options
from .plugins import Cl4PluginAdapter
from .wire import detect_cl4, encode_message

if TYPE_CHECKING:
    from server.app import Server
    from server.plugins import Client

log = logging.getLogger("stratus.cl4")


class Cl4Protocol:
    """Serves CloudLink 4 clients on the shared port (those whose first message is CL4)."""

    name = "cl4"

    def __init__(self, options: Cl4Options) -> None:
        self.options = options
        self.engine = Cl4Engine(self._send, self._close, options)
        self.server: Server | None = None
        self._events: Any = None
        self._traffic: Any = None
        # The last message encoded, kept alive so its id cannot be reused while cached.
        self._last_message: Any = None
        self._last_frame = b""
        # With a cluster engine that has a message bus: the clients of the other nodes.
        self.cluster: Cl4Cluster | None = None

    def install(self, server: Server) -> None:
        """Register the protocol, its plugin hooks and its facade service."""
        self.server = server
        self._events = server.events
        self._traffic = server.traffic
        self.engine.rate_limited_observers.append(self._rate_limited)
        if self.options.enabled:
            server.protocols.add(ProtocolEntry(self.name, detect_cl4, self.open))
        Cl4PluginAdapter(server.plugins, self.engine).attach()
        server.facade.provide(self.name, Cl4Service(self))
        bus = server.cluster.bus
        if bus is not None and self.options.enabled:
            # Subscribed now, before the cluster connects, so the first snapshots are heard.
            self.cluster = Cl4Cluster(self, bus, server.cluster.claims)
            self.cluster.attach()
            self.engine.replace_send(self._send_clustered)

    async def start(self, server: Server) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to release."""

    def open(self, peer: Any, first_message: dict) -> Cl4Session:
        """A session for a connection whose first message `detect_cl4` parsed."""
        if self.cluster is not None:
            # Snowflakes unique across the nodes: this node's worker number as the instance.
            self.engine.use_snowflake_instance(self.server.worker)
        self.engine.connect(peer, peer.peer)
        return Cl4Session(self, peer, first_message)

    def _send(self, connection: Any, message: dict | str) -> None:
        if not connection.is_open:
            return
        if isinstance(message, str):
            frame = encode_text(message)
        elif message is self._last_message:
            frame = self._last_frame
        else:
            frame = encode_text(encode_message(message))
            self._last_message, self._last_frame = message, frame
        write_queued(connection, frame, self.options.max_queue_bytes, self._events)
        self._traffic.sent(1, len(frame))

    def _rate_limited(self, state: Any) -> None:
        events = self._events
        if events.rate_limited:
            events.rate_limited(state.connection)

    def _send_clustered(self, connection: Any, message: dict | str) -> None:
        if connection.__class__ is RemotePeer:
            self.cluster.forward(connection, message)
        else:
            self._send(connection, message)

    @staticmethod
    def _close(connection: Any, code: int, reason: str) -> None:
        connection.close(code, reason)


class Cl4Service:
    """What the facade offers about CL4 (`facade.service("cl4")`)."""

    def __init__(self, protocol: Cl4Protocol) -> None:
        self._protocol = protocol

    def send_room(self, room: str, message: dict) -> int:
        """Send a CL4 message to every member of a CL4 room; returns how many got it."""
        engine = self._protocol.engine
        members = engine.room_members(room)
        for member in members:
            engine.send(member, message)
        return len(members)

    def broadcast(self, message: dict) -> int:
        """Send a CL4 message to every identified CL4 client."""
        engine = self._protocol.engine
        sessions = [s for s in engine.sessions() if s.identified]
        for session in sessions:
            engine.send(session, message)
        return len(sessions)

    def rooms(self) -> dict[str, list[Client]]:
        """CL4 rooms and their members on this node (members on other nodes are left out)."""
        engine = self._protocol.engine
        client = self._protocol.server.plugins.client
        rooms = {room: [client(m.connection) for m in engine.room_members(room)
                        if not is_remote(m.connection)]
                 for room in engine.rooms()}
        return {room: members for room, members in rooms.items() if members}

    def members_elsewhere(self) -> dict[str, int]:
        """Members on other nodes of the CL4 rooms with a member on this node, by room (rooms
        with none left out; always empty for one process)."""
        engine = self._protocol.engine
        counts = {}
        for room in engine.rooms():
            members = engine.room_members(room)
            remote = sum(1 for member in members if is_remote(member.connection))
            if remote and remote < len(members):
                counts[room] = remote
        return counts


class Cl4Session:
    """One connection speaking CL4 (a `server.session.Session`; the engine keeps the state)."""

    __slots__ = ("protocol", "peer", "first_message")

    protocol_name = "cl4"

    def __init__(self, protocol: Cl4Protocol, peer: Any, first_message: Any = MISSING) -> None:
        self.protocol = protocol
        self.peer = peer
        self.first_message = first_message  # parsed by detect_cl4, handed over once

    @property
    def state(self):
        return self.protocol.engine.session(self.peer)

    @property
    def identified(self) -> bool:
        """True once a valid CL4 command identified the client."""
        state = self.state
        return state is not None and state.identified

    @property
    def username(self) -> str | None:
        state = self.state
        return state.username if state is not None else None

    @property
    def room_id(self) -> None:
        """None: a CL4 client is in no Scratch project (its CL4 rooms are the engine's)."""
        return None

    def receive(self, text: str) -> None:
        parsed = self.first_message
        if parsed is not MISSING:
            self.first_message = MISSING
        self.protocol.engine.receive(self.peer, text, parsed)

    def closed(self) -> None:
        self.protocol.engine.disconnect(self.peer)

    def send_message(self, message: dict) -> None:
        """Send this client one CL4 message."""
        state = self.state
        if state is not None:
            self.protocol.engine.send(state, message)
