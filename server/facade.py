"""The facade: one stable API over a running server, shared by plugins, the admin API and
metrics, so none of them reaches into the server's internals.

Rooms are named by namespace ("scratch" for Scratch projects) and id; variables by the names
clients use (the namespace's codec turns them into room keys). Protocol-specific services (the
CL4 engine's rooms and broadcasts, the Scratch protocol's validation) are registered by their
protocol under its name and found with `service(name)`.

The synchronous room methods (`variables`, `set_variable`, ...) read a room that is not in
memory from the store on the calling thread, as plugins always could. The `async` ones
(`read_variables`, `write_variable`, `remove_variable`, `clear_room`) never block the loop on
the disk: HTTP handlers use those.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codes import CloseCode
from .events import EventBus
from .node_requests import Answer, Replies
from .plugins import Client
from .rooms import BlockOrigin, Room, RoomRegistry
from .routes import RouteTable
from .store import HistoryEntry, StoreReadError

SCRATCH = "scratch"
# Store namespace of the rooms blocked with `block_room(..., persist=True)`: one row per
# blocked room, filed under the room namespace's name, the room id as its key.
BLOCKLIST = "stratus.blocked-rooms"
# Reads of the stored blocks `restore_blocked_rooms` makes before giving up when blocks keep
# changing on this node while it reads (each change makes the read stale).
BLOCK_READ_ATTEMPTS = 5


@dataclass(frozen=True)
class BlockChanges:
    """What `restore_blocked_rooms` did: how many blocks are stored, and the
    (namespace, room id) of the blocks it applied and of those it lifted."""

    stored: int
    applied: list[tuple[str, str]]
    lifted: list[tuple[str, str]]


class Facade:
    """What plugins (`self.host`), the admin API and metrics may do with the server."""

    def __init__(self, server: Any) -> None:
        # The `server.app.Server` it fronts: only its public attributes are used.
        self._server = server
        self._services: dict[str, Any] = {}

    # The running server

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        return self._server.loop

    @property
    def events(self) -> EventBus:
        """The event bus (subscribe to connection, message, flush, store events)."""
        return self._server.events

    @property
    def routes(self) -> RouteTable:
        """The HTTP route table (add pages and API endpoints)."""
        return self._server.routes

    def stats(self) -> dict[str, Any]:
        """Counts for a status page and metrics: connections (in all and by protocol), rooms,
        uptime, messages received by protocol, frames/bytes/updates sent, store writes."""
        return self._server.stats()

    # The other nodes of a cluster ([cluster] backend "redis")

    @property
    def node_id(self) -> str | None:
        """This node's id in its cluster; None for one process."""
        requests = self._server.node_requests
        return requests.node_id if requests is not None else None

    @property
    def worker(self) -> int:
        """This node's worker number in its cluster (0 to 1023, the high part of its client
        ids; 0 for one process): a name for the node that says nothing about its host."""
        return self._server.worker

    @property
    def cluster_fault(self) -> str | None:
        """Why the link to the other nodes is down, or None (always None for one process)."""
        return self._server.cluster.fault

    def answer(self, topic: str, handler: Answer) -> None:
        """Reply to the other nodes' `ask(topic, ...)` with `handler(origin node, payload)`,
        which returns bytes or an awaitable of bytes (nothing to do for one process)."""
        requests = self._server.node_requests
        if requests is not None:
            requests.answer(topic, handler)

    async def ask(self, topic: str, payload: bytes = b"", node: str | None = None) -> Replies:
        """Ask every other live node (or `node`) and gather their replies for up to [cluster]
        reply_timeout seconds; the answer names the nodes that did not reply in time. For one
        process there is nobody to ask: no replies."""
        requests = self._server.node_requests
        if requests is None:
            return Replies()
        return await requests.ask(topic, payload, node)

    # Services that protocols register

    def provide(self, name: str, service: Any) -> None:
        """Register a protocol's service under `name` (e.g. "cl4")."""
        self._services[name] = service

    def service(self, name: str) -> Any:
        """The service registered under `name`; LookupError if that protocol is not running."""
        try:
            return self._services[name]
        except KeyError:
            raise LookupError(f"no {name!r} service: is that protocol enabled?") from None

    # Clients

    def clients(self) -> list[Client]:
        """Every connected client."""
        client = self._server.plugins.client
        return [client(connection) for connection in self._server.connections]

    def find_client(self, client_id: int) -> Client | None:
        """The client with this id, if it is connected."""
        for connection in self._server.connections:
            if connection.id == client_id:
                return self._server.plugins.client(connection)
        return None

    def kick(self, client_id: int, code: int = CloseCode.NORMAL) -> bool:
        """Close a client's connection with `code`; False if no such client is connected."""
        client = self.find_client(client_id)
        if client is None:
            return False
        client.close(code)
        return True

    # Rooms

    def namespaces(self) -> list[str]:
        """Namespaces of rooms with variables (e.g. ["scratch"])."""
        return list(self._server.rooms)

    def _registry(self, namespace: str) -> RoomRegistry:
        try:
            return self._server.rooms[namespace]
        except KeyError:
            raise LookupError(f"no {namespace!r} rooms: is that protocol enabled?") from None

    def rooms(self, namespace: str = SCRATCH) -> list[str]:
        """Ids of the rooms in memory."""
        return list(self._registry(namespace).rooms)

    def members(self, namespace: str, room_id: str) -> list[Client]:
        """The clients in a room (none if it is not in memory)."""
        room = self._registry(namespace).get(room_id)
        if room is None:
            return []
        client = self._server.plugins.client
        return [client(member) for member in room.members]

    def variables(self, namespace: str, room_id: str) -> dict[Any, Any]:
        """A copy of a room's variables by name, in order (read from the store if needed)."""
        registry = self._registry(namespace)
        room = registry.open(room_id)
        if room is None:
            return {}
        name_of = registry.codec.name_of
        return {name_of(key): value for key, value in room.values.items()}

    def set_variable(self, namespace: str, room_id: str, name: Any, value: Any) -> bool:
        """Write a variable as the server: stored, and sent to every member of the room.

        False at the room or variable limit. The value is not validated here: callers that
        take it from outside validate it as the protocol would.
        """
        registry = self._registry(namespace)
        room = registry.open(room_id)
        if room is None:
            return False
        return room.set(registry.codec.key_of(name), value, None)

    def delete_variable(self, namespace: str, room_id: str, name: Any) -> bool:
        """Remove a variable (members keep their copy until they reload); False if missing."""
        registry = self._registry(namespace)
        room = registry.open(room_id)
        return room is not None and room.delete(registry.codec.key_of(name))

    def room_summaries(self, namespace: str = SCRATCH) -> list[dict[str, Any]]:
        """Every room of a namespace in memory: {"id", "clients", "variables"} (counts)."""
        return [{"id": room.id, "clients": len(room.members), "variables": len(room.values)}
                for room in self._registry(namespace).rooms.values()]

    def members_elsewhere(self, namespace: str = SCRATCH) -> dict[str, int]:
        """Members on other nodes of the rooms of a namespace this node holds in memory, by
        room id, as this node last heard them (rooms with none left out; always empty for one
        process)."""
        return {room.id: room.remote_members
                for room in self._registry(namespace).rooms.values() if room.remote_members}

    async def read_variables(self, namespace: str, room_id: str) -> dict[Any, Any] | None:
        """A room's variables by name, from memory or else read from the store off the loop;
        None if the room has neither. Never creates the room in memory."""
        registry = self._registry(namespace)
        room = registry.get(room_id)
        if room is None:
            store = registry.store
            rows = (await asyncio.to_thread(store.load, namespace, room_id) if store.loads_block
                    else store.load(namespace, room_id))
            room = registry.get(room_id)  # it may have been opened meanwhile: that is current
            if room is None:
                if not rows:
                    return None
                name_of = registry.codec.name_of
                return {name_of(key): value for key, _, value in sorted(rows, key=lambda r: r[1])}
        name_of = registry.codec.name_of
        return {name_of(key): value for key, value in room.values.items()}

    async def _opened(self, namespace: str, room_id: str) -> Room | None:
        """The room, read from the store off the loop if needed; None at the room limit."""
        opened = self._registry(namespace).opening(room_id)
        if isinstance(opened, asyncio.Future):
            return await asyncio.shield(opened)
        return opened

    async def write_variable(self, namespace: str, room_id: str, name: Any, value: Any) -> bool:
        """`set_variable` without blocking the loop on the disk (the room is opened if needed).

        False at the room or variable limit. Validate `value` as the protocol would first.
        """
        room = await self._opened(namespace, room_id)
        if room is None:
            return False
        return room.set(self._registry(namespace).codec.key_of(name), value, None)

    async def remove_variable(self, namespace: str, room_id: str, name: Any) -> bool:
        """`delete_variable` without blocking the loop on the disk; False if missing."""
        if await self.read_variables(namespace, room_id) is None:
            return False  # nothing stored: not worth opening the room
        room = await self._opened(namespace, room_id)
        return room is not None and room.delete(self._registry(namespace).codec.key_of(name))

    async def clear_room(self, namespace: str, room_id: str, code: int) -> tuple[int, int] | None:
        """Close a room's members with `code` and delete all its variables (stored ones too);
        returns (clients closed, variables deleted), or None if the room has neither."""
        registry = self._registry(namespace)
        if registry.get(room_id) is None and await self.read_variables(namespace, room_id) is None:
            return None
        room = await self._opened(namespace, room_id)
        if room is None:
            return None
        closed = self.close_members(namespace, room_id, code)
        keys = list(room.values)
        for key in keys:
            room.delete(key)
        return closed, len(keys)

    def close_members(self, namespace: str, room_id: str, code: int) -> int:
        """Close the members of a room on this node with `code`; returns how many."""
        return self._registry(namespace).close_members(room_id, code)

    async def read_history(self, namespace: str, room_id: str, limit: int,
                           offset: int = 0) -> list[HistoryEntry] | None:
        """Entries `offset` to `offset + limit` of a room's history, newest first (keys as the
        namespace's codec makes them); None when [history] is off. Reads the store off the
        loop and never creates the room in memory."""
        history = self._registry(namespace).history
        if history is None:
            return None
        return await history.read(room_id, limit, offset)

    def block_room(self, namespace: str, room_id: str,
                   code: int = CloseCode.SCRATCH_PROJECT_UNAVAILABLE,
                   persist: bool = False, stored: bool = False) -> int:
        """Refuse joins of a room from now on and close its members with `code`; returns how
        many were closed. With `persist`, the block is kept in the store and survives a
        restart (`blocked_rooms` lists such blocks); `stored` says another node of the
        cluster stored it and asked this one to apply it. A block made with either is also
        lifted when a re-read of the store (`restore_blocked_rooms`) no longer finds it; one
        made with neither lasts until `unblock_room`."""
        registry = self._registry(namespace)
        if persist:
            self._store().save([(BLOCKLIST, namespace,
                                 [(room_id, 0, {"code": int(code), "since": time.time()})], [])])
        origin = BlockOrigin.STORED if persist or stored else BlockOrigin.LOCAL
        return registry.block(room_id, code, origin)

    def unblock_room(self, namespace: str, room_id: str, persist: bool = True) -> bool:
        """Accept joins of a room blocked with `block_room` again (with `persist`, a stored
        block is removed too); False if it was not blocked."""
        registry = self._registry(namespace)
        if persist and room_id in registry.blocked:
            self._store().save([(BLOCKLIST, namespace, [], [room_id])])
        return registry.unblock(room_id)

    def is_blocked(self, namespace: str, room_id: str) -> bool:
        """Whether joins of a room are refused by `block_room`."""
        return room_id in self._registry(namespace).blocked

    def blocked_rooms(self, namespace: str) -> list[str]:
        """Ids of the rooms blocked with `block_room`, sorted."""
        return sorted(self._registry(namespace).blocked)

    async def restore_blocked_rooms(self) -> BlockChanges:
        """Make this node's blocks agree with the stored ones (read off the loop): block
        every room stored as blocked (with persist, before a restart or on another node of a
        cluster) that is not blocked here yet, closing its members, and lift the blocks held
        because they were stored that the store no longer has (unblocked while this node
        could not hear it). Blocks made without persist are never lifted here.

        Raises `StoreReadError`, changing nothing, when the store cannot be read: a failed
        read never passes for "nothing stored". The server calls it at start, before it
        listens, and on a cluster each time the link to the other nodes comes back."""
        store = self._store()
        registries = self._server.rooms
        for _attempt in range(BLOCK_READ_ATTEMPTS):
            changes = sum(registry.block_changes for registry in registries.values())
            stored = {namespace: await asyncio.to_thread(store.read_stored, BLOCKLIST, namespace)
                      for namespace in list(registries)}
            # A block or unblock made here during the read may be missing from what was
            # read (it is on its way to the store): read again rather than undo it.
            if sum(registry.block_changes for registry in registries.values()) == changes:
                break
        else:
            raise StoreReadError(f"blocks changed during each of {BLOCK_READ_ATTEMPTS} reads")
        applied: list[tuple[str, str]] = []
        lifted: list[tuple[str, str]] = []
        for namespace, rows in stored.items():
            registry = registries[namespace]
            for room_id, _, value in rows:
                origin = registry.blocked.get(room_id)
                if origin is BlockOrigin.STORED:
                    continue
                code = value.get("code") if isinstance(value, dict) else None
                registry.block(room_id, code if type(code) is int
                               else CloseCode.SCRATCH_PROJECT_UNAVAILABLE, BlockOrigin.STORED)
                if origin is None:
                    applied.append((namespace, room_id))
            kept = {room_id for room_id, _, _ in rows}
            for room_id, origin in list(registry.blocked.items()):
                if origin is BlockOrigin.STORED and room_id not in kept:
                    registry.unblock(room_id)
                    lifted.append((namespace, room_id))
        return BlockChanges(sum(len(rows) for rows in stored.values()), applied, lifted)

    def _store(self) -> Any:
        store = self._server.store
        if store is None:
            raise RuntimeError("the store is not open yet")
        return store

    def on_http(self, path: str, handler: Callable[..., Any], methods: tuple[str, ...] = ("GET",),
                cors: bool = False) -> None:
        """Serve `methods` of the path template `path` with `handler(request) -> Response`
        (see `RouteTable.add`: path parameters, bodies, CORS)."""
        self._server.routes.add(path, handler, methods, cors)

    # Shorthands kept for plugins written against the first plugin API

    def scratch_rooms(self) -> list[str]:
        """Ids of the Scratch rooms in memory."""
        return self.rooms(SCRATCH)

    def scratch_variables(self, room_id: str) -> dict[Any, Any]:
        """A copy of a Scratch room's variables by name, in order (loaded if stored)."""
        return self.variables(SCRATCH, room_id)

    def scratch_members(self, room_id: str) -> list[Client]:
        """The clients in a Scratch room."""
        return self.members(SCRATCH, room_id)

    def set_scratch_variable(self, room_id: str, name: str, value: Any) -> bool:
        """Write a Scratch variable as the server: stored, and sent to every member."""
        return self.set_variable(SCRATCH, room_id, name, value)

    def cl4_send_room(self, room: str, message: dict) -> int:
        """Send a CL4 message to every member of a CL4 room; returns how many got it."""
        return self.service("cl4").send_room(room, message)

    def cl4_broadcast(self, message: dict) -> int:
        """Send a CL4 message to every CL4 client."""
        return self.service("cl4").broadcast(message)

    def cl4_rooms(self) -> dict[str, list[Client]]:
        """CL4 rooms and their members."""
        return self.service("cl4").rooms()


# The first plugin API called it the plugin host.
PluginHost = Facade
