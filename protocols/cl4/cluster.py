"""CL4 across the nodes of a cluster, over the core's protocol-agnostic message bus.

Each node mirrors the identified clients of the other nodes in its engine (a `Cl4ClientState`
whose connection is a `RemotePeer`), so user lists, username/uuid/snowflake lookups and
`unique_usernames` see the whole cluster, and the built-in commands work unchanged: a message
the engine sends to a mirrored client is forwarded to its node. Forwarding is batched: the
messages a node sends during one pass of the event loop go to each other node as one bus
message, and a message shared by many recipients (a gmsg to a room) is encoded once and named
once in it with the list of its recipients, never a bus message per recipient.

Presence (a local client identified, named, joined or left a room, disconnected) is broadcast
on topic `cl4.presence`; what the node that owns a client announces to members (`ulist add` /
`remove`) reaches the members of other nodes as forwarded messages, so the other nodes only
update their mirrors. When a node stops answering, each node announces `ulist remove` for its
mirrored clients to its own members. After an outage (and at start) every node sends a full
snapshot of its clients, which the others reconcile their mirrors with.

With `unique_usernames`, mirrors alone would let two nodes name two clients alike within the
time a presence change takes to travel, so setid also claims the name in the cluster's
`NameClaims` (space "cl4", owner the client's uuid) and answers once the claim is decided; the
name is released when the client leaves. A name granted while Redis was unreachable that
another node's client got first is taken back: that client gets E:112 and is closed with 1000
("Username conflict"), so it reconnects and picks a name again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Hashable
from typing import Any

from server.backplane import MessageBus, NameClaims
from server.codes import CloseCode
from server.fanout import write_queued
from server.framing import encode_text
from server.logsafe import printable

from .codes import StatusCode
from .state import Cl4ClientState
from .wire import encode_message

log = logging.getLogger("stratus.cl4")

PRESENCE = "cl4.presence"
DELIVER = "cl4.deliver"
USERNAMES = "cl4"  # the space of CL4 usernames in the cluster's name claims


class RemotePeer:
    """The connection of a client on another node (a stand-in the engine can send to)."""

    __slots__ = ("node", "uuid")

    is_open = True

    def __init__(self, node: str, uuid: str) -> None:
        self.node = node
        self.uuid = uuid

    def __repr__(self) -> str:
        return f"<RemotePeer {printable(self.uuid)} on {printable(self.node)}>"


class Cl4Cluster:
    """Mirrors other nodes' CL4 clients and forwards messages to them."""

    def __init__(self, protocol: Any, bus: MessageBus, claims: NameClaims | None = None) -> None:
        # `protocol`: the `endpoint.Cl4Protocol` (not imported: it imports this module).
        self.protocol = protocol
        self.engine = protocol.engine
        self.bus = bus
        self.claims = claims
        # Usernames claimed in the cluster for this node's clients, by client uuid.
        self.claimed: dict[str, str] = {}
        # Mirrors of other nodes' clients, by node, then uuid.
        self.remote: dict[str, dict[str, Cl4ClientState]] = {}
        # Messages waiting to be forwarded, by node: [message, [recipient uuids]] in order.
        self._outbox: dict[str, list[list[Any]]] = {}
        self._flush_scheduled = False
        # True while applying what another node did: its own members were told by it.
        self._applying = False

    def attach(self) -> None:
        """Start mirroring and forwarding."""
        self.engine.presence_observers.append(self.presence_changed)
        self.bus.subscribe(PRESENCE, self._presence_received)
        self.bus.subscribe(DELIVER, self._deliver_received)
        self.bus.on_node_gone(self.node_gone)
        self.bus.on_relinked(self.relinked)
        if self.claims is not None and self.engine.options.unique_usernames:
            self.engine.username_claim = self.claim_username
            self.claims.on_lost(self.username_lost)

    # Forwarding

    def forward(self, peer: RemotePeer, message: dict | str) -> None:
        """Queue `message` for a client of another node (sent at the end of this loop pass)."""
        if self._applying:
            return  # its own node tells it
        queue = self._outbox.get(peer.node)
        if queue is None:
            queue = self._outbox[peer.node] = []
        if queue and queue[-1][0] is message:
            queue[-1][1].append(peer.uuid)
        else:
            queue.append([message, [peer.uuid]])
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False  # a scheduled call after an early flush finds nothing
        outbox, self._outbox = self._outbox, {}
        for node, queue in outbox.items():
            batch = [[message if isinstance(message, str) else encode_message(message), uuids]
                     for message, uuids in queue]
            self.bus.publish(DELIVER, json.dumps(batch).encode(), node=node)

    def _deliver_received(self, origin: str, payload: bytes) -> None:
        engine = self.engine
        events = self.protocol.server.events
        limit = self.protocol.options.max_queue_bytes
        for text, uuids in json.loads(payload):
            frame = encode_text(text)
            for uuid in uuids:
                session = engine.find_by_uuid(uuid)
                if session is not None and not isinstance(session.connection, RemotePeer):
                    connection = session.connection
                    if connection.is_open:
                        write_queued(connection, frame, limit, events)

    # Usernames unique across the nodes

    def claim_username(self, session: Cl4ClientState, username: str) -> Any:
        """The engine's `username_claim`: claim `username` for a client of this node."""
        outcome = self.claims.claim(USERNAMES, username, session.uuid)
        if outcome is False:
            return False
        self.claimed[session.uuid] = username
        if outcome is not True:
            outcome.add_done_callback(
                lambda done: done.result() or self._forget_claim(session.uuid, username))
        return outcome

    def _forget_claim(self, uuid: str, username: str) -> None:
        if self.claimed.get(uuid) == username:
            del self.claimed[uuid]

    def username_lost(self, space: str, name: str, owner: str) -> None:
        """A name this node granted while Redis was unreachable belongs to another node's
        client: ours gets E:112 and is closed, so it reconnects and names itself again."""
        if space != USERNAMES:
            return
        self._forget_claim(owner, name)
        session = self.engine.find_by_uuid(owner)
        if session is None or is_remote(session.connection) or session.username != name:
            return
        log.warning("CL4 client %s loses the username %s, taken on another node while the "
                    "cluster link was down", printable(session.ip), printable(name))
        self.engine.reply(session, StatusCode.ID_CONFLICT,
                          details="This username was taken on another node while the server "
                          "was cut off from it; reconnect and choose another.")
        self.engine.close(session, CloseCode.NORMAL, "Username conflict")

    # Presence of this node's clients

    def presence_changed(self, event: str, session: Cl4ClientState, room: str | None) -> None:
        """A local client changed: tell the other nodes (mirrors are not told about)."""
        if isinstance(session.connection, RemotePeer):
            return
        if self.claimed and (event == "gone" or event == "named"):
            claimed = self.claimed.get(session.uuid)
            if claimed is not None and (event == "gone" or claimed != session.username):
                del self.claimed[session.uuid]  # it left, or a plugin renamed it
                self.claims.release(USERNAMES, claimed, session.uuid)
        if event == "left" and session.closed:
            return  # "gone" follows
        if self._outbox:
            self._flush()  # what was sent before the change arrives before it
        record: dict[str, Any] = {"op": event, "client": _identity(session)}
        if room is not None:
            record["room"] = room
        self.bus.publish(PRESENCE, json.dumps(record).encode())

    def relinked(self) -> None:
        """(Re)connected: send every other node this node's clients, and ask for theirs."""
        self._send_snapshot(None, ask=True)

    def _send_snapshot(self, node: str | None, ask: bool = False) -> None:
        clients = [
            {**_identity(session), "rooms": list(session.rooms)}
            for session in self.engine.sessions()
            if session.identified and not session.closed
        ]
        record = {"op": "snapshot", "clients": clients, "ask": ask}
        self.bus.publish(PRESENCE, json.dumps(record).encode(), node=node)

    # Presence of other nodes' clients

    def _presence_received(self, origin: str, payload: bytes) -> None:
        record = json.loads(payload)
        op = record["op"]
        self._applying = True
        try:
            if op == "snapshot":
                self._reconcile(origin, record["clients"])
                if record.get("ask"):
                    self._send_snapshot(origin)
                return
            identity = record["client"]
            if op == "gone":
                mirror = self.remote.get(origin, {}).pop(identity["uuid"], None)
                if mirror is not None:
                    self.engine.drop(mirror)
                return
            mirror = self._mirror(origin, identity)
            if op == "joined":
                self.engine.subscribe(mirror, record["room"])
            elif op == "left":
                self.engine.unsubscribe(mirror, record["room"])
        finally:
            self._applying = False

    def _mirror(self, node: str, identity: dict) -> Cl4ClientState:
        clients = self.remote.setdefault(node, {})
        mirror = clients.get(identity["uuid"])
        if mirror is None:
            mirror = Cl4ClientState(RemotePeer(node, identity["uuid"]), "", identity["id"],
                                    identity["uuid"], None, None)
            clients[identity["uuid"]] = mirror
            self.engine.adopt(mirror)
        username = identity.get("username")
        if username is not None and mirror.username != username:
            self.engine.set_username(mirror, username)
        return mirror

    def _reconcile(self, node: str, clients: list[dict]) -> None:
        """Bring the mirrors of `node` in line with its snapshot, telling local members what
        changed (the snapshot comes after an outage, when announcements may have been lost)."""
        engine = self.engine
        known = self.remote.get(node, {})
        listed = {client["uuid"] for client in clients}
        for uuid in [uuid for uuid in known if uuid not in listed]:
            self._remove_announced(known.pop(uuid))
        for client in clients:
            fresh = client["uuid"] not in known
            mirror = self._mirror(node, client)
            rooms = client["rooms"]
            for room in [room for room in mirror.rooms if room not in rooms]:
                engine.unsubscribe(mirror, room)
                engine.announce_leave(mirror, room)
            for room in rooms:
                if engine.subscribe(mirror, room) and (mirror.named or not fresh):
                    self._announce_added(mirror, room)

    def _announce_added(self, mirror: Cl4ClientState, room: str) -> None:
        if not mirror.named:
            return
        added = {"cmd": "ulist", "mode": "add", "val": mirror.user_object, "rooms": room}
        for member in self.engine.room_members(room):
            if not isinstance(member.connection, RemotePeer):
                self.engine.send(member, added)

    def _remove_announced(self, mirror: Cl4ClientState) -> None:
        rooms = list(mirror.rooms)
        self.engine.drop(mirror)
        for room in rooms:
            self.engine.announce_leave(mirror, room)

    def node_gone(self, node: str) -> None:
        """A node stopped answering: its clients leave, announced to this node's members."""
        clients = self.remote.pop(node, {})
        self._applying = True
        try:
            for mirror in clients.values():
                self._remove_announced(mirror)
        finally:
            self._applying = False
        if clients:
            log.info("%d CL4 clients of node %s left with it", len(clients), printable(node))


def _identity(session: Cl4ClientState) -> dict[str, Any]:
    return {"uuid": session.uuid, "id": session.snowflake, "username": session.username}


def is_remote(connection: Hashable) -> bool:
    """True for the stand-in connection of a client on another node."""
    return isinstance(connection, RemotePeer)
