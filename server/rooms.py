"""Rooms of cloud variables: ordered values, members, batched fan-out and persistence marks.

A room knows variables as (key, value) pairs plus one pre-encoded *update* per variable, which
the protocol supplies (the wire text that says "this variable now has this value"); it never
parses or builds wire text itself. Fan-out is batched per room: a write marks the variable
dirty, and a flush turns all dirty variables into one message that is encoded once and written
to every member that did not author it (authors get their own copy without their writes).

Flush timing adapts to load: a quiet room sends `burst_window` after its first pending write
(so a burst of writes leaves as one message); a busy room (one that flushed less than
`QUIET_AFTER_FLUSHES` flush intervals ago) holds its first pending write for one flush interval
(1/`batch_hz`, less how late its flushes start and how long they take to reach every member),
so the writes that follow share its message. Either way a room flushes at most `batch_hz` times
a second and no update takes longer than max(burst_window, 1/batch_hz) to reach the last member.

A member whose socket buffer is full (`paused`) gets nothing until it drains; in "latest"
mode the room only remembers *which* variables it missed and sends their current values then,
so a stalled reader costs at most one entry per variable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from .framing import encode_text
from .logsafe import printable

if TYPE_CHECKING:
    from .connection import Connection
    from .store import Store

log = logging.getLogger("stratus.rooms")

TRY_AGAIN_LATER = 1013  # a client too far behind in "all" mode; it reconnects and gets a dump

# Empty rooms past max_idle_rooms that one eviction pass may look at beyond those it drops.
EVICTION_SCAN_SLACK = 64

# A room that flushed within this many flush intervals counts as busy. At 60 Hz (50 ms) a
# room with 50 writes/s is busy ~92 % of the time, one with 10 writes/s ~40 %.
QUIET_AFTER_FLUSHES = 3


@dataclass(frozen=True)
class RoomLimits:
    """Per-namespace limits and batching policy."""

    max_variables: int = 128
    max_clients: int = 128
    max_rooms: int = 16384
    batch_hz: float = 60.0
    burst_window: float = 0.002
    coalesce: str = "latest"
    max_pending_lines: int = 4096
    idle_timeout: float = 3600.0
    max_idle_rooms: int = 1000


class RoomCodec:
    """What a protocol tells its rooms about its wire format."""

    def __init__(self, encode_update: Callable[[str, Any], str], batch_separator: str) -> None:
        self.encode_update = encode_update
        self.batch_separator = batch_separator

    def batch(self, updates: list[str]) -> bytes:
        """One frame carrying `updates`."""
        return encode_text(self.batch_separator.join(updates))


class Room:
    """One room: variables in insertion order, members, and pending fan-out."""

    __slots__ = (
        "registry",
        "id",
        "values",
        "updates",
        "positions",
        "next_position",
        "members",
        "dirty",
        "flush_handle",
        "last_flush",
        "flush_cost",
        "flush_due",
        "empty_since",
        "unsaved",
        "removed",
        "save_ticket",
        "variable_hooks",
    )

    def __init__(self, registry: RoomRegistry, room_id: str) -> None:
        self.registry = registry
        self.id = room_id
        self.values: dict[str, Any] = {}
        self.updates: dict[str, str] = {}
        self.positions: dict[str, int] = {}
        self.next_position = 0
        self.members: dict[Connection, None] = {}
        self.dirty: Any = {} if registry.keep_latest else []
        self.flush_handle: asyncio.Handle | None = None
        self.last_flush = -1e9
        self.flush_cost = 0.0  # seconds from a flush's due time to its last write (smoothed)
        self.flush_due = 0.0
        self.empty_since = registry.loop.time()
        self.unsaved: dict[str, None] = {}
        self.removed: set[str] = set()
        self.save_ticket = 0
        self.variable_hooks: list[Callable[..., Any]] = []

    def __repr__(self) -> str:
        return f"<Room {printable(self.id, 40)} {len(self.members)} members>"

    # Membership

    def join(self, member: Connection) -> bool:
        """Add `member` and send it every variable at once; False if the room is full."""
        if len(self.members) >= self.registry.limits.max_clients:
            return False
        if not self.members:
            self.registry.idle.pop(self, None)
        if self.updates:
            # The dump goes out before the member is registered for batches, so every
            # batched update it receives is at least as new as the dump.
            member.send_frame(self.registry.codec.batch(list(self.updates.values())))
        self.members[member] = None
        member.room = self
        return True

    def leave(self, member: Connection) -> None:
        """Remove `member`; an empty room starts its idle clock."""
        if self.members.pop(member, 0) is None:
            member.room = None
            member.backlog = None
            if not self.members:
                self.empty_since = self.registry.loop.time()
                self.registry.room_emptied(self)

    # Variables

    def set(self, key: str, value: Any, author: Connection | None) -> bool:
        """Store a value and queue it for every other member; False at the variable limit."""
        values = self.values
        if key not in values:
            if len(values) >= self.registry.limits.max_variables:
                return False
            self.positions[key] = self.next_position
            self.next_position += 1
        values[key] = value
        update = self.updates[key] = self.registry.codec.encode_update(key, value)
        if len(self.members) > 1 or author is None:
            dirty = self.dirty
            if not dirty and self.flush_handle is None:
                self._schedule_flush()
            if self.registry.keep_latest:
                dirty[key] = author
                if author is not None and author.backlog:
                    author.backlog.pop(key, None)  # never echo a member's own newest write
            else:
                dirty.append((key, update, author))
        if not self.unsaved:
            self.registry.mark_unsaved(self)
        self.unsaved[key] = None
        for observer in self.registry.write_observers:
            observer(self, key, value)
        return True

    def delete(self, key: str) -> bool:
        """Remove a variable (not broadcast); False if it does not exist."""
        if key not in self.values:
            return False
        del self.values[key]
        del self.updates[key]
        del self.positions[key]
        if self.registry.keep_latest:
            self.dirty.pop(key, None)
        self._mark_removed(key)
        return True

    def rename(self, key: str, new_key: str) -> bool:
        """Give a variable a new key in place (not broadcast); False if missing or taken."""
        if key not in self.values or new_key in self.values:
            return False
        position = self.positions[key]
        self.values = {new_key if k == key else k: v for k, v in self.values.items()}
        new_update = self.registry.codec.encode_update(new_key, self.values[new_key])
        self.updates = {
            new_key if k == key else k: new_update if k == key else u
            for k, u in self.updates.items()
        }
        del self.positions[key]
        self.positions[new_key] = position
        if self.registry.keep_latest:
            self.dirty.pop(key, None)
        self._mark_removed(key)
        self.unsaved[new_key] = None
        return True

    def _mark_removed(self, key: str) -> None:
        """Record for the store that `key` no longer exists."""
        self.unsaved.pop(key, None)
        self.registry.mark_unsaved(self)
        self.removed.add(key)

    def load(self, rows: list[tuple[str, int, Any]]) -> None:
        """Fill a new room from stored (key, position, value) rows, in stored order."""
        encode = self.registry.codec.encode_update
        for key, position, value in sorted(rows, key=lambda row: row[1]):
            self.values[key] = value
            self.updates[key] = encode(key, value)
            self.positions[key] = position
        self.next_position = max((row[1] for row in rows), default=-1) + 1

    # Fan-out

    def _schedule_flush(self) -> None:
        # Called for the first pending write after a flush. Each message costs every member a
        # send (the kernel's TCP work dominates the server's CPU), so a busy room holds the
        # write for a whole flush interval: anchoring the hold on this write rather than on
        # the last flush means more writes share each message for the same longest wait.
        # A quiet room only waits `burst_window`, so a burst of writes still leaves as one.
        registry = self.registry
        loop = registry.loop
        now = loop.time()
        if now - self.last_flush < registry.quiet_after:
            # A timer fires late when the loop is busy, and writing to hundreds of members
            # takes milliseconds; starting that much earlier keeps "the last member has it
            # within 1/batch_hz" true in big and busy rooms too.
            due = now + max(registry.flush_interval - self.flush_cost, registry.burst_window)
        else:
            due = now + registry.burst_window
        self.flush_due = due
        if due <= now:
            self.flush_handle = loop.call_soon(self.flush)
        else:
            self.flush_handle = loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Send every pending update to every member that has not seen it."""
        self.flush_handle = None
        self.last_flush = now = self.registry.loop.time()
        dirty = self.dirty
        if not dirty:
            return
        late = now - self.flush_due if now > self.flush_due else 0.0
        started = time.monotonic()  # loop.time() is cached per loop iteration
        if self.registry.keep_latest:
            self.dirty = {}
            self._flush_latest(dirty)
        else:
            self.dirty = []
            self._flush_all(dirty)
        self.flush_cost += (late + time.monotonic() - started - self.flush_cost) * 0.25

    def _flush_latest(self, dirty: dict[str, Connection | None]) -> None:
        updates = self.updates
        codec = self.registry.codec
        authored: dict[Connection, int] = {}
        for author in dirty.values():
            if author is not None:
                authored[author] = authored.get(author, 0) + 1
        common: bytes | None = None
        count = len(dirty)
        for member in self.members:
            if member.paused:
                backlog = member.backlog
                if backlog is None:
                    backlog = member.backlog = {}
                for key, author in dirty.items():
                    if author is not member:
                        backlog[key] = None
                continue
            # Members are always open (a closing connection leaves its room at once), so
            # the frame goes straight to the transport.
            own = authored.get(member)
            if own is None:
                if common is None:
                    common = codec.batch([updates[key] for key in dirty])
                member.transport.write(common)
            elif own < count:
                lines = [updates[key] for key, author in dirty.items() if author is not member]
                member.transport.write(codec.batch(lines))

    def _flush_all(self, dirty: list[tuple[str, str, Connection | None]]) -> None:
        codec = self.registry.codec
        authors = {author for _, _, author in dirty}
        limit = self.registry.limits.max_pending_lines
        common: bytes | None = None
        for member in list(self.members):
            lines = (
                [update for _, update, _ in dirty]
                if member not in authors
                else [update for _, update, author in dirty if author is not member]
            )
            if not lines:
                continue
            if member.paused:
                backlog = member.backlog
                if backlog is None:
                    backlog = member.backlog = []
                backlog.extend(lines)
                if len(backlog) > limit:
                    log.info("closing a client %d lines behind in %r", len(backlog), self)
                    member.close(TRY_AGAIN_LATER)
                continue
            if member not in authors:
                if common is None:
                    common = codec.batch(lines)
                member.send_frame(common)
            else:
                member.send_frame(codec.batch(lines))

    def catch_up(self, member: Connection) -> None:
        """Send a member that stopped reading what it missed, once its buffer drained."""
        backlog = member.backlog
        member.backlog = None
        if not backlog:
            return
        if isinstance(backlog, dict):
            updates = self.updates
            lines = [updates[key] for key in backlog if key in updates]
        else:
            lines = backlog
        if lines:
            member.send_frame(self.registry.codec.batch(lines))


class RoomRegistry:
    """All rooms of one namespace (e.g. Scratch projects), with limits, store and janitor."""

    def __init__(
        self,
        namespace: str,
        codec: RoomCodec,
        limits: RoomLimits,
        store: Store,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.namespace = namespace
        self.codec = codec
        self.limits = limits
        self.store = store
        self.loop = loop
        self.rooms: dict[str, Room] = {}
        # Rooms whose stored values are being read, each with the future their joins wait on.
        self.loading: dict[str, asyncio.Future] = {}
        self._reader: ThreadPoolExecutor | None = None
        self.keep_latest = limits.coalesce == "latest"
        self.flush_interval = 1.0 / limits.batch_hz if limits.batch_hz > 0 else 0.0
        self.quiet_after = QUIET_AFTER_FLUSHES * self.flush_interval
        self.burst_window = limits.burst_window
        self.unsaved_rooms: dict[Room, None] = {}
        # Rooms without members, oldest-empty first (a dict used as an ordered set).
        self.idle: dict[Room, None] = {}
        # Called after every stored write with (room, key, value), e.g. by the CL4 bridge.
        self.write_observers: list[Callable[[Room, str, Any], None]] = []
        # Called with a new room's id; returns the plugin hooks for its variable writes.
        self.variable_hooks_for: Callable[[str], list] | None = None

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
        """Stop the store reader thread (waits for a read in progress)."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)

    def mark_unsaved(self, room: Room) -> None:
        self.unsaved_rooms[room] = None

    def persist(self) -> None:
        """Hand every room's unsaved changes to the store (which may write them later)."""
        if not self.unsaved_rooms:
            return
        rooms = list(self.unsaved_rooms)
        changes = []
        for room in rooms:
            values, positions = room.values, room.positions
            upserts = [(key, positions[key], values[key]) for key in room.unsaved if key in values]
            deletes = [key for key in room.removed if key not in values]
            room.unsaved = {}
            room.removed = set()
            changes.append((self.namespace, room.id, upserts, deletes))
        self.unsaved_rooms = {}
        ticket = self.store.save(changes)
        for room in rooms:
            room.save_ticket = ticket

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
        return room not in self.unsaved_rooms and room.save_ticket <= committed_ticket

    def _drop(self, room: Room) -> None:
        if room.flush_handle is not None:
            room.flush_handle.cancel()
        del self.idle[room]
        del self.rooms[room.id]

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
        for room in list(self.rooms.values()):
            if room.flush_handle is not None:
                room.flush_handle.cancel()
                room.flush()
