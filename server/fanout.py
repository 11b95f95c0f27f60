"""Fan-out: batching, encoding once, and per-member backlogs, for every protocol.

A room marks a changed variable dirty (through the backplane); a flush turns all dirty
variables into one message that is encoded once and written to every member that did not
author it (authors get their own copy without their writes). The room supplies the wire text
of each update through its namespace's `Codec`; the fan-out never builds wire text itself.

Flush timing adapts to load: a quiet room sends `burst_window` after its first pending write
(so a burst of writes leaves as one message); a busy room (one that flushed less than
`QUIET_AFTER_FLUSHES` flush intervals ago) waits for the namespace's next *tick*, one shared
timer at every multiple of 1/`batch_hz` on the loop clock, so the writes that follow share its
message and every busy room flushes in the same loop turn: one timer wakeup per tick instead of
one per room and flush (on loopback a wakeup costs about as much as a send). A busy room thus
flushes at most `batch_hz` times a second, and no update waits longer than
max(burst_window, 1/batch_hz) plus the time the tick takes to write the rooms before it.

A member whose socket buffer is full (`paused`) gets nothing until it drains: in "latest" mode
the fan-out only remembers *which* variables it missed and sends their newest values then, so
a stalled reader costs at most one entry per variable; in "all" mode (and for protocols whose
messages queue, like CL4) what it misses queues up to a bound, past which the member is closed
with TRY_AGAIN_LATER (`drop_behind`): it reconnects and starts fresh instead of holding the
server's memory hostage.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .codes import CloseCode
from .events import EventBus
from .framing import encode_text
from .logsafe import printable
from .traffic import Traffic

log = logging.getLogger("stratus.fanout")

# A room that flushed within this many flush intervals counts as busy. At 60 Hz (50 ms) a
# room with 50 writes/s is busy ~92 % of the time, one with 10 writes/s ~40 %.
QUIET_AFTER_FLUSHES = 3


@dataclass(frozen=True)
class FanoutSettings:
    """How one namespace's rooms batch their updates."""

    batch_hz: float = 66.0
    burst_window: float = 0.002
    coalesce: str = "latest"  # "latest": newest value per variable; "all": every write
    max_pending_lines: int = 4096  # "all" mode: a paused member's backlog bound


class Codec:
    """What a protocol tells the core about its wire format for variable updates."""

    def __init__(self, encode_update: Callable[[str, Any], str], batch_separator: str,
                 key_of: Callable[[Any], str], name_of: Callable[[str], Any]) -> None:
        self.encode_update = encode_update
        self.batch_separator = batch_separator
        self.key_of = key_of  # a variable name as a room key
        self.name_of = name_of  # and back

    def batch(self, updates: list[str]) -> bytes:
        """One frame carrying `updates`."""
        return encode_text(self.batch_separator.join(updates))


def drop_behind(member: Any, events: EventBus, why: str) -> None:
    """Close a member too far behind its outbound backlog with TRY_AGAIN_LATER; `why` ends
    the log line."""
    log.info("disconnecting %s: %s", why, printable(member.peer))
    member.close(CloseCode.TRY_AGAIN_LATER)
    if events.backlog_dropped:
        events.backlog_dropped(member, CloseCode.TRY_AGAIN_LATER)


def write_queued(member: Any, frame: bytes, max_queue_bytes: int, events: EventBus) -> None:
    """Write a message that must not be coalesced (CL4); close the member if it is too far
    behind (more than `max_queue_bytes` unsent)."""
    transport = member.transport
    transport.write(frame)
    if member.paused and transport.get_write_buffer_size() > max_queue_bytes:
        drop_behind(member, events,
                    f"CL4 client with {transport.get_write_buffer_size()} bytes unsent")


class _OnTick:
    """A room's `flush_handle` while it waits for the tick: cancelling it is a no-op, as the
    tick skips rooms whose handle is no longer ON_TICK."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


ON_TICK = _OnTick()


class RoomOutbound:
    """One room's pending fan-out: dirty variables and its flush timer.

    It reads the room's `id`, `members` and `updates` (a `server.rooms.Room`).
    """

    __slots__ = ("room", "fanout", "dirty", "flush_handle", "last_flush", "flush_due",
                 "pending_since")

    def __init__(self, room: Any, fanout: Fanout) -> None:
        self.room = room
        self.fanout = fanout
        self.dirty: Any = {} if fanout.keep_latest else []
        self.flush_handle: asyncio.Handle | _OnTick | None = None
        self.last_flush = -1e9
        self.flush_due = 0.0  # when the pending flush was meant to start (loop clock)
        self.pending_since = 0.0  # loop time of the first write the next flush carries

    def schedule(self) -> None:
        # Called for the first pending write after a flush. Each message costs every member a
        # send (the kernel's TCP work dominates the server's CPU), so a busy room waits for the
        # shared tick: on average half an interval, with as many writes per message as a hold
        # of about that long from this write, and all busy rooms flush in one loop turn. A
        # quiet room only waits `burst_window`, so a burst of writes still leaves as one.
        fanout = self.fanout
        loop = fanout.loop
        now = self.pending_since = loop.time()
        if fanout.flush_interval and now - self.last_flush < fanout.quiet_after:
            self.flush_handle = ON_TICK
            self.flush_due = fanout.flush_on_tick(self, now)
            return
        self.flush_due = due = now + fanout.burst_window
        if due <= now:
            self.flush_handle = loop.call_soon(self.flush)
        else:
            self.flush_handle = loop.call_at(due, self.flush)

    def flush(self) -> None:
        """Send every pending update to every member that has not seen it."""
        self.flush_handle = None
        fanout = self.fanout
        self.last_flush = now = fanout.loop.time()
        dirty = self.dirty
        if not dirty:
            return
        if fanout.keep_latest:
            self.dirty = {}
            frames = self._flush_latest(dirty)
        else:
            self.dirty = []
            frames = self._flush_all(dirty)
        events = fanout.events
        if events.room_flushed:
            events.room_flushed(fanout.namespace, self.room.id, len(dirty), frames)
        if events.flush_delay:
            events.flush_delay(fanout.namespace, now - self.pending_since)

    def cancel(self) -> None:
        """Forget the pending flush (the room leaves memory)."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()  # ON_TICK: the tick skips it (flush_handle is None)
            self.flush_handle = None

    def _flush_latest(self, dirty: dict[str, Any]) -> int:
        updates = self.room.updates
        codec = self.fanout.codec
        authored: dict[Any, int] = {}
        for author in dirty.values():
            if author is not None:
                authored[author] = authored.get(author, 0) + 1
        common: bytes | None = None
        count = len(dirty)
        shared = frames = own_lines = own_bytes = 0  # shared: members sent `common`
        for member in self.room.members:
            if member.paused:
                backlog = member.backlog
                if backlog is None:
                    backlog = member.backlog = {}
                    member.catch_up = self.catch_up
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
                shared += 1
            elif own < count:
                lines = [updates[key] for key, author in dirty.items() if author is not member]
                frame = codec.batch(lines)
                member.transport.write(frame)
                frames += 1
                own_lines += len(lines)
                own_bytes += len(frame)
        if shared or frames:
            shared_bytes = shared * len(common) if shared else 0
            self.fanout.traffic.sent(shared + frames, shared_bytes + own_bytes,
                                     shared * count + own_lines)
        return shared + frames

    def _flush_all(self, dirty: list[tuple[str, str, Any]]) -> int:
        fanout = self.fanout
        codec = fanout.codec
        authors = {author for _, _, author in dirty}
        limit = fanout.settings.max_pending_lines
        common: bytes | None = None
        shared = frames = own_lines = own_bytes = 0  # shared: members sent `common`
        for member in list(self.room.members):
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
                    member.catch_up = self.catch_up
                backlog.extend(lines)
                if len(backlog) > limit:
                    drop_behind(member, fanout.events,
                                f"a client {len(backlog)} lines behind in {self.room!r}")
                continue
            if member not in authors:
                if common is None:
                    common = codec.batch(lines)
                member.send_frame(common)
                shared += 1
            else:
                frame = codec.batch(lines)
                member.send_frame(frame)
                frames += 1
                own_lines += len(lines)
                own_bytes += len(frame)
        if shared or frames:
            shared_bytes = shared * len(common) if shared else 0
            fanout.traffic.sent(shared + frames, shared_bytes + own_bytes,
                                shared * len(dirty) + own_lines)
        return shared + frames

    def catch_up(self, member: Any) -> None:
        """Send a member that stopped reading what it missed, once its buffer drained."""
        backlog = member.backlog
        member.backlog = None
        if not backlog:
            return
        if isinstance(backlog, dict):
            updates = self.room.updates
            lines = [updates[key] for key in backlog if key in updates]
        else:
            lines = backlog
        if lines:
            frame = self.fanout.codec.batch(lines)
            member.send_frame(frame)
            self.fanout.traffic.sent(1, len(frame), len(lines))


class Fanout:
    """The fan-out of one namespace's rooms: policy, codec and the loop its timers run on."""

    def __init__(self, namespace: str, settings: FanoutSettings, codec: Codec,
                 loop: asyncio.AbstractEventLoop, events: EventBus,
                 traffic: Traffic | None = None) -> None:
        self.namespace = namespace
        self.settings = settings
        self.codec = codec
        self.loop = loop
        self.events = events
        self.traffic = Traffic() if traffic is None else traffic  # totals of what was sent
        self.keep_latest = settings.coalesce == "latest"
        self.flush_interval = 1.0 / settings.batch_hz if settings.batch_hz > 0 else 0.0
        self.quiet_after = QUIET_AFTER_FLUSHES * self.flush_interval
        self.burst_window = settings.burst_window
        self._tick_rooms: list[RoomOutbound] = []  # busy rooms waiting for the next tick
        self._tick_handle: asyncio.TimerHandle | None = None

    def flush_on_tick(self, outbound: RoomOutbound, now: float) -> float:
        """Flush `outbound` at the next tick (the next multiple of the flush interval on the
        loop clock); returns the tick's time."""
        interval = self.flush_interval
        due = (math.floor(now / interval) + 1) * interval
        self._tick_rooms.append(outbound)
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_at(due, self._tick)
        return due

    def _tick(self) -> None:
        self._tick_handle = None
        waiting, self._tick_rooms = self._tick_rooms, []
        for outbound in waiting:
            if outbound.flush_handle is ON_TICK:  # not flushed or dropped meanwhile
                outbound.flush()

    def outbound(self, room: Any) -> RoomOutbound:
        """New pending fan-out state for `room`."""
        return RoomOutbound(room, self)

    def deliver(self, room: Any, key: str, author: Any) -> None:
        """A change to `room`'s `key` (by `author`, None for the server): queue it for every
        other member. The backplane calls this on every node with members in the room."""
        if key not in room.updates:
            self.forget(room, key)  # deleted or renamed: not broadcast
            return
        members = room.members
        if author is not None and len(members) <= 1 and (not members or author in members):
            # Nobody else to tell. (An author outside the room, e.g. a client whose queued
            # sets are replayed after it left during the room's load, still reaches a lone
            # member.)
            return
        outbound = room.outbound
        dirty = outbound.dirty
        if not dirty and outbound.flush_handle is None:
            outbound.schedule()
        if self.keep_latest:
            dirty[key] = author
            if author is not None and author.backlog:
                author.backlog.pop(key, None)  # never echo a member's own newest write
        else:
            dirty.append((key, room.updates[key], author))

    def forget(self, room: Any, key: str) -> None:
        """`key` was deleted or renamed (not broadcast): drop it from the pending batch."""
        if self.keep_latest:
            room.outbound.dirty.pop(key, None)

    def dump(self, room: Any, member: Any) -> None:
        """Send a joining member every variable of `room` at once."""
        updates = room.updates
        if updates:
            frame = self.codec.batch(list(updates.values()))
            member.send_frame(frame)
            self.traffic.sent(1, len(frame), len(updates))

    def flush_all(self, rooms: list[Any]) -> None:
        """Flush every room's pending fan-out now (used at shutdown)."""
        for room in rooms:
            outbound = room.outbound
            if outbound.flush_handle is not None:
                outbound.flush_handle.cancel()
                outbound.flush()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
            self._tick_rooms = []
