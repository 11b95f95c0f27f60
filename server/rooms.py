"""Rooms of cloud variables: values in order, versions, members and limits.

A room knows variables as (key, value) pairs plus one pre-encoded *update* per variable, which
the protocol's `Codec` supplies (the wire text that says "this variable now has this value");
it never parses or builds wire text itself. An accepted change bumps the room's version and is
published through the backplane, which hands it to the fan-out (`server.fanout`) of every node
with members in the room, and reported to the persister (`server.persistence`), which hands it
to the store. Observers (the CL4 bridge, the history) see every stored write, delete and
rename, with its author.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from .codes import CloseCode
from .logsafe import printable

if TYPE_CHECKING:
    from .backplane import Backplane
    from .fanout import Fanout
    from .persistence import Persister
    from .store import Store

log = logging.getLogger("stratus.rooms")

# Empty rooms past max_idle_rooms that one eviction pass may look at beyond those it drops.
EVICTION_SCAN_SLACK = 64


class BlockOrigin(enum.Enum):
    """Where a run-time block of a room came from (`RoomRegistry.blocked`)."""

    # Made on this node and kept nowhere else (e.g. a plugin's `block_room` without
    # persist): only an unblock lifts it.
    LOCAL = "local"
    # Stored (made with persist, read from the store, or applied for a block another node
    # stored): a re-read of the store that no longer finds it lifts it too.
    STORED = "stored"


@dataclass(frozen=True)
class RoomLimits:
    """Per-namespace limits on rooms."""

    max_variables: int = 128
    max_clients: int = 128
    max_rooms: int = 16384
    idle_timeout: float = 3600.0
    max_idle_rooms: int = 1000
    # What a member is closed with when a cluster finds it took a place past max_clients at
    # the same moment as a member of another node: the protocol's answer to a full room.
    full_close_code: int = CloseCode.TRY_AGAIN_LATER


class NamedWriter:
    """The author of a write no client made (the bridge, a plugin), named for the history.

    Like None it is no member, so every member gets the write; unlike None it says who wrote.
    """

    __slots__ = ("username",)
    backlog = None  # what the fan-out reads from an author that is a member; never one here

    def __init__(self, username: str) -> None:
        self.username = username

    def __repr__(self) -> str:
        return f"<NamedWriter {self.username}>"


class Room:
    """One room: variables in insertion order, their version, and members."""

    __slots__ = (
        "registry",
        "id",
        "values",
        "updates",
        "positions",
        "next_position",
        "version",
        "members",
        "outbound",
        "empty_since",
        "variable_hooks",
        "cluster",
        "remote_members",
    )

    def __init__(self, registry: RoomRegistry, room_id: str) -> None:
        self.registry = registry
        self.id = room_id
        self.values: dict[str, Any] = {}
        self.updates: dict[str, str] = {}
        self.positions: dict[str, int] = {}
        self.next_position = 0
        self.version = 0  # accepted changes so far (sets, deletes, renames)
        self.members: dict[Any, None] = {}
        self.outbound = registry.fanout.outbound(self)
        self.empty_since = registry.loop.time()
        self.variable_hooks: list[Callable[..., Any]] = []
        self.cluster: Any = None  # the backplane's state for this room (None in one process)
        self.remote_members = 0  # members on other nodes (counted against max_clients)

    def __repr__(self) -> str:
        return f"<Room {printable(self.id, 40)} {len(self.members)} members>"

    # Membership

    def join(self, member: Any) -> bool:
        """Add `member` and send it every variable at once; False if the room is full.

        On a cluster "full" counts the other nodes' members as last heard of; if another node
        took the last place at the same moment, the cluster closes one of the two moments
        later (`RoomRegistry.evict`).
        """
        if len(self.members) + self.remote_members >= self.registry.limits.max_clients:
            return False
        if not self.members:
            self.registry.idle.pop(self, None)
        # The dump goes out before the member is registered for batches, so every batched
        # update it receives is at least as new as the dump.
        self.registry.fanout.dump(self, member)
        self.members[member] = None
        self.registry.backplane.members_changed(self)
        return True

    def leave(self, member: Any) -> None:
        """Remove `member` (the one place a member leaves); an empty room starts its idle clock."""
        if self.members.pop(member, 0) is None:
            member.backlog = member.catch_up = None
            self.registry.backplane.members_changed(self)
            if not self.members:
                self.empty_since = self.registry.loop.time()
                self.registry.room_emptied(self)

    # Variables

    def set(self, key: str, value: Any, author: Any) -> bool:
        """Store a value and publish the change; False at the variable limit.

        `author` is the member that wrote it (it is not sent its own write), or None or a
        `NamedWriter` for the server (every member gets it).
        """
        values = self.values
        if key not in values:
            registry = self.registry
            if len(values) >= registry.limits.max_variables:
                return False
            self.positions[key] = self.next_position
            self.next_position += 1
        else:
            registry = self.registry
        values[key] = value
        self.updates[key] = registry.codec.encode_update(key, value)
        self.version += 1
        registry.backplane.publish(self, key, author)
        registry.persister.changed(self, key)
        for observer in registry.write_observers:
            observer(self, key, value, author)
        return True

    def delete(self, key: str, author: Any = None) -> bool:
        """Remove a variable (not broadcast); False if it does not exist."""
        if key not in self.values:
            return False
        value = self.values.pop(key)
        del self.updates[key]
        del self.positions[key]
        self.version += 1
        registry = self.registry
        registry.backplane.publish(self, key, None)
        registry.persister.removed(self, key)
        for observer in registry.delete_observers:
            observer(self, key, value, author)
        return True

    def rename(self, key: str, new_key: str, author: Any = None) -> bool:
        """Give a variable a new key in place (not broadcast); False if missing or taken."""
        if key not in self.values or new_key in self.values:
            return False
        registry = self.registry
        position = self.positions[key]
        self.values = {new_key if k == key else k: v for k, v in self.values.items()}
        new_update = registry.codec.encode_update(new_key, self.values[new_key])
        self.updates = {
            new_key if k == key else k: new_update if k == key else u
            for k, u in self.updates.items()
        }
        del self.positions[key]
        self.positions[new_key] = position
        self.version += 1
        registry.backplane.publish(self, key, None)  # the old key is gone
        registry.backplane.stored(self, new_key)
        registry.persister.removed(self, key)
        registry.persister.changed(self, new_key)
        for observer in registry.rename_observers:
            observer(self, key, new_key, author)
        return True

    def apply(self, key: str, value: Any, quiet: bool = False) -> None:
        """A change another node accepted: store it and deliver it to the members here (unless
        `quiet`, a rename's new key). Not published again, not handed to write observers: those
        ran once, on the node that accepted the write."""
        if key not in self.values:
            self.positions[key] = self.next_position
            self.next_position += 1
        self.values[key] = value
        self.updates[key] = self.registry.codec.encode_update(key, value)
        self.version += 1
        if not quiet:
            self.registry.fanout.deliver(self, key, None)

    def discard(self, key: str) -> None:
        """A variable another node deleted (or the cluster refused): remove it here."""
        if key in self.values:
            del self.values[key]
            del self.updates[key]
            del self.positions[key]
            self.version += 1
            self.registry.fanout.forget(self, key)

    def load(self, rows: list[tuple[str, int, Any]]) -> None:
        """Fill a new room from stored (key, position, value) rows, in stored order."""
        encode = self.registry.codec.encode_update
        for key, position, value in sorted(rows, key=lambda row: row[1]):
            self.values[key] = value
            self.updates[key] = encode(key, value)
            self.positions[key] = position
        self.next_position = max((row[1] for row in rows), default=-1) + 1


class RoomRegistry:
    """All rooms of one namespace (e.g. Scratch projects): limits, loading, idle rooms."""

    def __init__(
        self,
        namespace: str,
        limits: RoomLimits,
        store: Store,
        fanout: Fanout,
        backplane: Backplane,
        persister: Persister,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.namespace = namespace
        self.codec = fanout.codec
        self.limits = limits
        self.store = store
        self.fanout = fanout
        self.backplane = backplane
        self.persister = persister
        self.loop = loop
        self.rooms: dict[str, Room] = {}
        # Rooms whose stored values are being read, each with the future their joins wait on.
        self.loading: dict[str, asyncio.Future] = {}
        self._reader: ThreadPoolExecutor | None = None
        # Rooms blocked at run time (`block`), with where each block came from: joins are
        # refused. `block_changes` counts blocks and unblocks (a re-read of the stored
        # blocks that overlapped one reads again).
        self.blocked: dict[str, BlockOrigin] = {}
        self.block_changes = 0
        # Rooms without members, oldest-empty first (a dict used as an ordered set).
        self.idle: dict[Room, None] = {}
        # Called after every stored write with (room, key, value, author), e.g. by the CL4
        # bridge; after every delete with (room, key, last value, author); after every rename
        # with (room, old key, new key, author). `author` is as `Room.set` takes it. Empty
        # lists cost the write nothing.
        self.write_observers: list[Callable[[Room, str, Any, Any], None]] = []
        self.delete_observers: list[Callable[[Room, str, Any, Any], None]] = []
        self.rename_observers: list[Callable[[Room, str, str, Any], None]] = []
        # The namespace's change history (`server.history.RoomHistory`), with [history] on.
        self.history: Any = None
        # Called with a new room's id; returns the plugin hooks for its variable writes.
        self.variable_hooks_for: Callable[[str], list] | None = None

    def block(self, room_id: str, code: int, origin: BlockOrigin = BlockOrigin.LOCAL) -> int:
        """Refuse joins of `room_id` and close its members with `code`; returns how many.

        A block stays STORED once it was: blocking a stored block again locally does not
        keep it from being lifted with the stored one."""
        if self.blocked.get(room_id) is not BlockOrigin.STORED:
            self.blocked[room_id] = origin
        self.block_changes += 1
        return self.close_members(room_id, code)

    def close_members(self, room_id: str, code: int) -> int:
        """Close the members `room_id` has in memory with `code`; returns how many."""
        room = self.rooms.get(room_id)
        if room is None:
            return 0
        members = list(room.members)
        for member in members:
            member.close(code)
            room.leave(member)  # in case closing did not remove it (already closing)
        return len(members)

    def evict(self, room: Room, members: list) -> None:
        """Close `members` as a join refused for a full room is (`full_close_code`): the
        cluster counted them past max_clients."""
        for member in members:
            member.close(self.limits.full_close_code)
            room.leave(member)  # in case closing did not remove it (already closing)

    def unblock(self, room_id: str) -> bool:
        """Accept joins of `room_id` again; False if it was not blocked."""
        if room_id in self.blocked:
            del self.blocked[room_id]
            self.block_changes += 1
            return True
        return False

    def get(self, room_id: str) -> Room | None:
        """The room if it is in memory (never reads the store)."""
        return self.rooms.get(room_id)

    def open(self, room_id: str) -> Room | None:
        """The room, created (and loaded from the store) if needed; None at the room limit.

        Reads the store on the calling thread: joins use `opening`, which does not.
        """
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        if room_id not in self.loading and self._full():
            return None
        return self._add(room_id, self.store.load(self.namespace, room_id))

    def opening(self, room_id: str) -> Room | asyncio.Future | None:
        """The room if it is in memory (or the store reads without blocking), else a future.

        The future resolves to the room once its stored values are read on the store's reader
        thread (every caller for the same room shares one read), or fails with the store's
        error. None at the room limit.
        """
        room = self.rooms.get(room_id)
        if room is not None:
            return room
        loading = self.loading.get(room_id)
        if loading is not None:
            return loading
        if self._full():
            return None
        if not self.store.loads_block:
            return self._add(room_id, self.store.load(self.namespace, room_id))
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="stratus-store-read")
        loading = self.loading[room_id] = self.loop.create_future()
        read = self.loop.run_in_executor(self._reader, self.store.load, self.namespace, room_id)
        read.add_done_callback(lambda done: self._loaded(room_id, done))
        return loading

    def _loaded(self, room_id: str, read: asyncio.Future) -> None:
        loading = self.loading.pop(room_id)
        if read.cancelled():
            loading.cancel()
            return
        error = read.exception()
        if error is not None:
            log.error("cannot read room %s from the store: %s", printable(room_id),
                      printable(str(error) or repr(error), 300))
            loading.set_exception(error)
            loading.exception()  # waiting joins read it; if all left, it is still handled
            return
        # A plugin may have opened the room synchronously meanwhile: that one is current.
        room = self.rooms.get(room_id)
        loading.set_result(room if room is not None else self._add(room_id, read.result()))

    def _full(self) -> bool:
        return len(self.rooms) + len(self.loading) >= self.limits.max_rooms

    def _add(self, room_id: str, rows: list[tuple[str, int, Any]]) -> Room:
        room = Room(self, room_id)
        if rows:
            room.load(rows)
        if self.variable_hooks_for is not None:
            room.variable_hooks = self.variable_hooks_for(room_id)
        self.rooms[room_id] = room
        self.backplane.room_opened(room)
        # A new room counts as empty until its first join, which may never come (the client
        # can leave while the room is read): bound the empty rooms here too.
        self._evict_excess_idle(reserve=1)
        self.idle[room] = None
        log.debug("room %s created (%d stored variables)", printable(room_id), len(rows))
        return room

    async def settle_loads(self, timeout: float) -> None:
        """Wait (at most `timeout` s) for rooms being read, so the messages queued behind their
        joins are applied before the final write at shutdown."""
        deadline = self.loop.time() + timeout
        while self.loading and (left := deadline - self.loop.time()) > 0:
            await asyncio.wait(list(self.loading.values()), timeout=left)

    def close(self) -> None:
        """Stop the store reader threads (waits for a read in progress)."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
        if self.history is not None:
            self.history.close()

    def persist(self) -> None:
        """Hand every room's unsaved changes to the store (which may write them later)."""
        self.persister.persist()

    def room_emptied(self, room: Room) -> None:
        """`room` lost its last member: keep it, unless more than max_idle_rooms are empty."""
        self.idle[room] = None
        self._evict_excess_idle()

    def _evict_excess_idle(self, reserve: int = 0) -> None:
        excess = len(self.idle) + reserve - self.limits.max_idle_rooms
        if excess > 0:
            self._evict_oldest_idle(excess, self.store.committed)

    def _evict_oldest_idle(self, count: int, committed_ticket: int) -> int:
        # Rooms whose changes are not on disk yet are skipped (a later pass takes them); the
        # scan is bounded so a run of them cannot make every leave walk all empty rooms.
        dropped = 0
        for room in list(islice(self.idle, count + EVICTION_SCAN_SLACK)):
            if self._is_stored(room, committed_ticket):
                self._drop(room)
                dropped += 1
                if dropped == count:
                    break
        return dropped

    def _is_stored(self, room: Room, committed_ticket: int) -> bool:
        return (self.persister.is_stored(room, committed_ticket)
                and self.backplane.is_settled(room))

    def _drop(self, room: Room) -> None:
        room.outbound.cancel()
        self.persister.forget(room)
        del self.idle[room]
        del self.rooms[room.id]
        self.backplane.room_closed(room)

    def sweep_idle(self, now: float, committed_ticket: int) -> int:
        """Drop rooms empty for longer than the idle timeout, and the oldest empty rooms past
        max_idle_rooms, as long as their values are safely stored."""
        timeout = self.limits.idle_timeout
        dropped = 0
        for room in list(self.idle):
            if now - room.empty_since < timeout:
                break  # oldest-empty first: the rest are younger
            if self._is_stored(room, committed_ticket):
                self._drop(room)
                dropped += 1
        excess = len(self.idle) - self.limits.max_idle_rooms
        if excess > 0:
            dropped += self._evict_oldest_idle(excess, committed_ticket)
        return dropped

    def flush_all(self) -> None:
        """Flush every room's pending fan-out now (used at shutdown)."""
        self.fanout.flush_all(list(self.rooms.values()))
