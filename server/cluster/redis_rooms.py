"""Rooms whose values live in Redis: the Redis backplane and the store rooms load from.

Per room (namespace `ns`, room id `r`):
  stratus:v:<ns>:<r>  hash   variable key -> "<version> <position> <JSON value>"
  stratus:m:<ns>:<r>  hash   version (the room's write counter), next (next position)
  stratus:n:<ns>:<r>  hash   node id -> members of the room on that node
  stratus:c:<ns>:<r>  channel every change of the room is published on
  stratus:h:<ns>:<r>  list    history entries ([history] enabled), newest first, `keep` long

A write accepted on a node is delivered to that node's members at once (as with one process)
and queued for Redis. The writer sends it through a Lua script that stores it, bumps the room's
version and publishes it, atomically, so Redis gives every room one order. Every node following
the room applies what it receives in that order, keyed by the version each variable was
written at, and delivers it through its own fan-out (latest-value-wins batching unchanged: one
Redis message per write and node, never per recipient). A node skips changes of a variable for
which its own newer write is still on the way (it arrives later and wins), so all members of
all nodes converge on the value Redis stored last. A missing version (a lost publish), a new
subscription and a link that comes back re-read the room (`resync`).

Members count across nodes: a node's member count goes to Redis through a script that stores
it and answers the room's total over the live nodes. Scripts run one at a time, so when two
nodes admit the last place at the same moment, only the count that arrives second sees the
total above `max_clients`: that node closes its newest members beyond it, as a join refused for
a full room is closed (`RoomRegistry.evict`). Joins stay synchronous, and a count costs one
command as before; variable writes pay nothing for it.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import NoScriptError, RedisError

from ..logsafe import printable
from ..store import HistoryBatch, HistoryEntry, StoreReadError, newest_first

if TYPE_CHECKING:
    from ..rooms import Room

# The `server.cluster.redis_link.RedisCluster` these serve (not imported: it imports this).
RedisCluster = Any

log = logging.getLogger("stratus.cluster")

LINK_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
NODE_KEY = b"stratus:node:"  # + node id: a node's heartbeat, gone when the node is dead

# ARGV: key, JSON value, max variables (0 = none), node id, the kind of write (`WRITE`,
# `QUIET` or `RESTORE`), channel. Returns the new version, or -1 if the room is full.
SET_SCRIPT = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
local position
if old then
  position = string.match(old, '^%d+ (%d+) ')
else
  local max = tonumber(ARGV[3])
  if max > 0 and redis.call('HLEN', KEYS[1]) >= max then return -1 end
  position = redis.call('HINCRBY', KEYS[2], 'next', 1) - 1
end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('HSET', KEYS[1], ARGV[1], version .. ' ' .. position .. ' ' .. ARGV[2])
redis.call('PUBLISH', ARGV[6], ARGV[5] .. ' ' .. version .. ' ' .. ARGV[4] .. ' '
  .. string.len(ARGV[1]) .. ' ' .. ARGV[1] .. ARGV[2])
return version
"""

# ARGV: key, node id, channel. Returns the new version, or 0 if there was no such variable.
DELETE_SCRIPT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
redis.call('PUBLISH', ARGV[3], 'd ' .. version .. ' ' .. ARGV[2] .. ' '
  .. string.len(ARGV[1]) .. ' ' .. ARGV[1])
return version
"""

# KEYS: values, meta, member counts; ARGV: the node key prefix. Returns {version, values as a
# flat list, member counts of live nodes as a flat list}; counts of dead nodes are removed.
READ_SCRIPT = """
local counts = redis.call('HGETALL', KEYS[3])
local live = {}
for i = 1, #counts, 2 do
  if redis.call('EXISTS', ARGV[1] .. counts[i]) == 1 then
    live[#live + 1] = counts[i]
    live[#live + 1] = counts[i + 1]
  else
    redis.call('HDEL', KEYS[3], counts[i])
  end
end
return {redis.call('HGET', KEYS[2], 'version') or '0', redis.call('HGETALL', KEYS[1]), live}
"""

# KEYS: member counts; ARGV: node id, this node's members, channel, the node key prefix.
# Stores (or, at 0, removes) this node's count, tells the room's nodes, and returns the room's
# members over the live nodes; counts of dead nodes are removed.
COUNT_SCRIPT = """
if tonumber(ARGV[2]) > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], 'n ' .. ARGV[2] .. ' ' .. ARGV[1])
local counts = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #counts, 2 do
  if counts[i] == ARGV[1] or redis.call('EXISTS', ARGV[4] .. counts[i]) == 1 then
    total = total + tonumber(counts[i + 1])
  else
    redis.call('HDEL', KEYS[1], counts[i])
  end
end
return total
"""

# Kinds of write. A client's write is delivered to every member of every node (Scratch relays
# repeated values too); a rename's new key to nobody; a value written again because it may not
# have reached Redis (the link failed, Redis lost its data) only where it changes something.
WRITE, QUIET, RESTORE = b"s", b"q", b"r"

SCRIPTS = {name: (text, hashlib.sha1(text.encode()).hexdigest())
           for name, text in (("set", SET_SCRIPT), ("delete", DELETE_SCRIPT),
                              ("read", READ_SCRIPT),
                              ("count", COUNT_SCRIPT))}


def encode(text: str) -> bytes:
    """Text as Redis bytes; lone surrogates (valid in JS strings) survive the round trip."""
    return text.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> str:
    """The text `encode` made."""
    return data.decode("utf-8", "surrogatepass")


def room_keys(namespace: str, room_id: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(values, meta, member counts, channel) of a room."""
    suffix = encode(f"{namespace}:{room_id}")
    return (b"stratus:v:" + suffix, b"stratus:m:" + suffix, b"stratus:n:" + suffix,
            b"stratus:c:" + suffix)


def dump_value(value: Any) -> bytes:
    """A variable's value as stored (ASCII JSON, so lone surrogates survive)."""
    return json.dumps(value).encode()


def parse_stored(stored: bytes) -> tuple[int, int, Any]:
    """(version, position, value) of a stored variable."""
    version, position, value = stored.split(b" ", 2)
    return int(version), int(position), json.loads(value)


def history_key(namespace: str, room_id: str) -> bytes:
    """The list of a room's history entries."""
    return b"stratus:h:" + encode(f"{namespace}:{room_id}")


def dump_entry(entry: HistoryEntry) -> bytes:
    """A history entry as stored (ASCII JSON: lone surrogates survive)."""
    return json.dumps(list(entry)).encode()


def parse_entry(stored: bytes) -> HistoryEntry:
    """The entry `dump_entry` made."""
    return HistoryEntry(*json.loads(stored))


def history_id(milliseconds: int, low: int) -> int:
    """A history entry's id: milliseconds since the epoch, then 22 bits that tell entries of
    one millisecond apart (ids of every node then order by time)."""
    return (milliseconds << 22) | (low & 0x3FFFFF)


def history_sequence() -> Iterator[int]:
    """Ids for this process's history entries that never collide with another node's: the
    low bits are a tag of this process and a counter."""
    tag = secrets.randbits(10) << 12
    counter = itertools.count()
    while True:
        yield history_id(int(time.time() * 1000), tag | (next(counter) & 0xFFF))


def stored_value(version: int, position: int, value: Any) -> bytes:
    """What the set script stores for a variable (used by `migrate-store`)."""
    return b"%d %d " % (version, position) + dump_value(value)


class RoomLink:
    """One room's state towards Redis (`room.cluster`)."""

    __slots__ = ("values_key", "meta_key", "counts_key", "channel", "outbox", "inflight",
                 "versions", "last_version", "unsynced", "remote_counts", "counted",
                 "members_dirty", "reported", "resyncing", "resync_again")

    def __init__(self, namespace: str, room_id: str) -> None:
        self.values_key, self.meta_key, self.counts_key, self.channel = room_keys(namespace,
                                                                                  room_id)
        # Variables accepted here and not sent yet (key -> kind of write), newest value only.
        self.outbox: dict[str, bytes] = {}
        # Variables sent and not echoed back yet: how many of their writes are on the way.
        self.inflight: dict[str, int] = {}
        # The version each variable was last written at (as far as this node knows).
        self.versions: dict[str, int] = {}
        self.last_version = -1  # the room's version last seen in order (-1: not read yet)
        # (lowest, highest) version received while last_version was unknown.
        self.unsynced: tuple[int, int] | None = None
        self.remote_counts: dict[bytes, int] = {}  # members on other nodes, by node
        # Nodes whose count arrived while the room was being re-read: newer than the re-read.
        self.counted: set[bytes] = set()
        self.members_dirty = True
        # The member count last sent to Redis: members beyond it joined since (the newest),
        # and only they can have taken a place another node took first.
        self.reported = 0
        self.resyncing = False
        self.resync_again = False  # a gap was seen while a re-read was on its way

    def pending(self, key: str) -> bool:
        """True while a write of `key` accepted here has not come back from Redis."""
        return key in self.outbox or key in self.inflight

    def sent_back(self, key: str) -> None:
        count = self.inflight.get(key, 0)
        if count > 1:
            self.inflight[key] = count - 1
        elif count:
            del self.inflight[key]


class RedisBackplane:
    """The `Backplane` of one room namespace with the Redis engine."""

    def __init__(self, cluster: RedisCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.node = cluster.node
        self.deliver: Callable[[Any, str, Any], None] | None = None
        self.rooms: dict[Room, None] = {}  # rooms in this node's memory
        self.dirty: dict[Room, None] = {}  # rooms with something to send
        self._tasks: set[asyncio.Task] = set()

    def attach(self, deliver: Callable[[Any, str, Any], None]) -> None:
        """Local members get changes through `deliver`, from this node and from the others."""
        self.deliver = deliver

    # From the rooms (synchronous, on every write)

    def publish(self, room: Room, key: str, author: Any) -> None:
        """Deliver to this node's members now; queue the change for Redis."""
        self.deliver(room, key, author)
        room.cluster.outbox[key] = WRITE
        if room not in self.dirty:
            self.dirty[room] = None
            self.cluster.wake()

    def stored(self, room: Room, key: str) -> None:
        """A rename's new key: stored in Redis, not broadcast."""
        room.cluster.outbox[key] = QUIET
        if room not in self.dirty:
            self.dirty[room] = None
            self.cluster.wake()

    def room_opened(self, room: Room) -> None:
        """Follow the room's channel; once the subscription is live, re-read the room."""
        link = room.cluster = RoomLink(self.namespace, room.id)
        self.rooms[room] = None
        store = self.cluster.store
        counts = store.loaded_counts.pop((self.namespace, room.id), None) if store else None
        if counts:
            # Other nodes' members as the load found them, so the first joins here count them.
            self._set_counts(room, counts)
        self.cluster.subscribe_channel(link.channel, lambda data: self._received(room, data),
                                       lambda: self.resync(room))

    def room_closed(self, room: Room) -> None:
        """Stop following the room."""
        self.rooms.pop(room, None)
        self.cluster.unsubscribe_channel(room.cluster.channel)

    def members_changed(self, room: Room) -> None:
        """Tell the cluster how many members this node has in the room."""
        room.cluster.members_dirty = True
        if room not in self.dirty:
            self.dirty[room] = None
            self.cluster.wake()

    def is_settled(self, room: Room) -> bool:
        """True when the room has nothing on its way to Redis."""
        link = room.cluster
        return not (link.outbox or link.inflight or link.members_dirty)

    def unsent(self) -> int:
        """Variables accepted here that have not reached Redis."""
        return sum(len(room.cluster.outbox) for room in self.rooms)

    async def close(self) -> None:
        """Stop re-reading rooms (the cluster sends what is queued and disconnects)."""
        for task in list(self._tasks):
            task.cancel()

    # To Redis (the cluster's writer calls `drain`)

    def drain(self, commands: list[tuple]) -> Callable[[list | None], None] | None:
        """Append every pending write and member count to `commands`; returns what handles
        the replies (None: the link failed, everything is put back)."""
        if not self.dirty:
            return None
        rooms, self.dirty = self.dirty, {}
        node = self.node
        set_sha, delete_sha, count_sha = (SCRIPTS["set"][1], SCRIPTS["delete"][1],
                                          SCRIPTS["count"][1])
        # (room, key, kind of write) per variable; (room, None, (count sent before, members
        # that joined since, newest first)) per member count.
        sent: list[tuple[Room, str | None, Any]] = []
        for room in rooms:
            link = room.cluster
            max_variables = room.registry.limits.max_variables
            for key, kind in link.outbox.items():
                field = encode(key)
                if key in room.values:
                    commands.append((b"EVALSHA", set_sha, 2, link.values_key, link.meta_key,
                                     field, dump_value(room.values[key]), max_variables, node,
                                     kind, link.channel))
                else:
                    commands.append((b"EVALSHA", delete_sha, 2, link.values_key,
                                     link.meta_key, field, node, link.channel))
                link.inflight[key] = link.inflight.get(key, 0) + 1
                sent.append((room, key, kind))
            link.outbox = {}
            if link.members_dirty:
                link.members_dirty = False
                count = len(room.members)
                # Members are kept in join order: the newest are the last ones.
                joined = tuple(islice(reversed(room.members), max(count - link.reported, 0)))
                sent.append((room, None, (link.reported, joined)))
                link.reported = count
                commands.append((b"EVALSHA", count_sha, 1, link.counts_key, node, count,
                                 link.channel, NODE_KEY))

        def finish(replies: list | None) -> None:
            self._finish(sent, replies)

        return finish

    def _finish(self, sent: list[tuple[Room, str | None, Any]], replies: list | None) -> None:
        failures: list[str] = []
        for index, (room, key, kind) in enumerate(sent):
            link = room.cluster
            reply = replies[index] if replies is not None else None
            failed = replies is None or isinstance(reply, Exception)
            if failed and replies is not None:
                failures.append(one_line(reply))
                if str(reply).startswith("NOSCRIPT"):
                    self.cluster.scripts_lost()
            if key is None:
                if failed:
                    # Sent again (after a lost link, `relinked` counts every member anew).
                    link.reported = min(link.reported, kind[0])
                    link.members_dirty = True
                    self._requeue(room)
                else:
                    self._counted(room, reply, kind[1])
                continue
            if failed:
                link.sent_back(key)
                # Redis may have stored it (only the reply was lost): others get it again
                # only if it changes something for them.
                link.outbox.setdefault(key, kind if replies is not None else RESTORE)
                self._requeue(room)
                continue
            if reply == -1:
                # The room is full cluster-wide: another node's new variables got there first.
                link.sent_back(key)
                if not link.pending(key):
                    log.info("room %s is full across the cluster: variable %s is dropped",
                             printable(room.id), printable(key))
                    room.discard(key)
            elif reply == 0:
                link.sent_back(key)  # nothing was published (a delete of a missing variable)
        if failures:
            log.warning("Redis refused %d room writes (%s); retrying", len(failures),
                        failures[0])

    def _counted(self, room: Room, total: int, joined: tuple) -> None:
        """Redis counted `total` members in the room over the live nodes, with this node's
        newest count: if that is over the limit, this node's count came last, and its members
        that `joined` since its previous count (newest first) give the places back."""
        surplus = total - room.registry.limits.max_clients
        if surplus <= 0:
            return
        late = [member for member in joined if member in room.members][:surplus]
        if late:
            log.info("room %s is full across the cluster: %d member(s) that joined here at the "
                     "same time as others elsewhere are closed", printable(room.id), len(late))
            room.registry.evict(room, late)

    def _requeue(self, room: Room) -> None:
        self.dirty[room] = None

    # From Redis

    def _received(self, room: Room, data: bytes) -> None:
        link = room.cluster
        op = data[:1]
        if op == b"n":
            count, node = data[2:].split(b" ", 1)
            if node != self.node:
                link.remote_counts[node] = int(count)
                room.remote_members = sum(link.remote_counts.values())
                if link.resyncing:
                    link.counted.add(node)
            return
        version, node, length, rest = data[2:].split(b" ", 3)
        version = int(version)
        length = int(length)
        key = decode(rest[:length])
        if node == self.node:
            link.sent_back(key)
        last = link.last_version
        if last >= 0:
            if version > last + 1:
                log.info("room %s missed %d changes from Redis: re-reading it",
                         printable(room.id), version - last - 1)
                self.resync(room)
            if version > last:
                link.last_version = version
        else:
            # Not read yet: the re-read on its way checks these follow what it finds.
            low, high = link.unsynced or (version, version)
            link.unsynced = (min(low, version), max(high, version))
        if link.pending(key) or version <= link.versions.get(key, 0):
            return
        link.versions[key] = version
        if op == b"d":
            room.discard(key)
            return
        if node == self.node:
            # This node's own write, back from Redis with nothing newer of it on the way: the
            # room holds that value (a re-read leaves pending keys alone) and its members had
            # it at once, so there is nothing to parse or deliver.
            return
        value = json.loads(rest[length:])
        if op == RESTORE:
            # A value written again after a failure: only news if it differs.
            old = room.values.get(key, _MISSING)
            if type(old) is type(value) and old == value:
                return
        # Another node's write is delivered even if the value is unchanged: Scratch relays
        # every set, repeated values included.
        room.apply(key, value, quiet=op == QUIET)

    def resync(self, room: Room) -> None:
        """Re-read the room from Redis and apply what this node missed."""
        link = room.cluster
        if not self.cluster.up:
            return
        if link.resyncing:
            link.resync_again = True
            return
        link.resyncing = True
        link.resync_again = False
        task = asyncio.get_running_loop().create_task(self._resync(room, link))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, room: Room, link: RoomLink) -> None:
        try:
            version, values, counts = await self.cluster.redis.evalsha(
                SCRIPTS["read"][1], 3, link.values_key, link.meta_key, link.counts_key,
                NODE_KEY)
        except NoScriptError:
            self.cluster.scripts_lost()
            link.resyncing = False
            return
        except LINK_ERRORS as exc:
            link.resyncing = False
            self.cluster.link_failed(exc)
            return
        link.resyncing = False
        if room.cluster is not link:
            return
        self.apply_snapshot(room, int(version), values, counts)
        if link.resync_again:
            self.resync(room)

    def apply_snapshot(self, room: Room, version: int, values: list, counts: list) -> None:
        """Bring the room in line with what Redis holds at `version`."""
        link = room.cluster
        present = set()
        for index in range(0, len(values), 2):
            key = decode(values[index])
            present.add(key)
            if link.pending(key):
                continue
            written, _position, value = parse_stored(values[index + 1])
            if written < link.versions.get(key, 0):
                continue
            link.versions[key] = written
            old = room.values.get(key, _MISSING)
            if not (type(old) is type(value) and old == value):
                room.apply(key, value)
        for key in [key for key in room.values if key not in present]:
            if not link.pending(key) and link.versions.get(key, 0) <= version:
                room.discard(key)
        unsynced, link.unsynced = link.unsynced, None
        if unsynced is not None and link.last_version < 0:
            low, high = unsynced
            if low > version + 1:
                log.info("room %s missed %d changes from Redis while it was read: re-reading it",
                         printable(room.id), low - version - 1)
                link.resync_again = True
            version = max(version, high)
        link.last_version = max(link.last_version, version)
        # A count published while the read was on its way may have arrived first: it is newer.
        newer = {node: link.remote_counts[node] for node in link.counted
                 if node in link.remote_counts}
        link.counted = set()
        self._set_counts(room, counts, newer)

    def _set_counts(self, room: Room, counts: list, newer: dict | None = None) -> None:
        """Members of other nodes from a flat [node, count, ...] list (this node left out)."""
        link = room.cluster
        link.remote_counts = {counts[i]: int(counts[i + 1]) for i in range(0, len(counts), 2)
                              if counts[i] != self.node}
        if newer:
            link.remote_counts.update(newer)
        room.remote_members = sum(link.remote_counts.values())

    # From the cluster

    def relinked(self, data_lost: bool) -> None:
        """The link is back: echoes of writes sent before are lost; count members again; if
        Redis lost its data, write every room back from memory."""
        for room in self.rooms:
            link = room.cluster
            for key in link.inflight:
                link.outbox.setdefault(key, RESTORE)
            link.inflight.clear()
            link.unsynced = None
            # Redis may have come back from an older state (its last second of writes lost):
            # versions start over from what the room re-read finds.
            link.last_version = -1
            link.versions.clear()
            if data_lost:
                for key in room.values:
                    link.outbox.setdefault(key, RESTORE)
            link.members_dirty = True
            # Every member counts as new: if the room grew past its limit across the cluster
            # during the outage, this node's count arrives after the others' and it gives back
            # its newest places.
            link.reported = 0
            self.dirty[room] = None

    def node_gone(self, node: bytes) -> None:
        """A dead node's members no longer count."""
        for room in self.rooms:
            link = room.cluster
            if link.remote_counts.pop(node, None) is not None:
                room.remote_members = sum(link.remote_counts.values())


_MISSING = object()


class RedisRoomStore:
    """The store of the Redis backend: rooms load from Redis (on the registry's reader
    thread); nothing is persisted separately, since the backplane writes every change
    through."""

    loads_block = True
    fault = None

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.committed = 0
        self.writes = 0  # pipelines of changes Redis accepted (metrics: store writes)
        self.write_errors = 0  # pipelines that failed or had a refused change
        self._client: redis.Redis | None = None
        # Members of live nodes per room just loaded ((namespace, room id) -> flat list), for
        # the backplane to pick up when the room opens (`RedisBackplane.room_opened`).
        self.loaded_counts: dict[tuple[str, str], list] = {}
        # Changes of namespaces that are not room namespaces, waiting for the writer, and
        # those it sent and Redis has not confirmed, oldest first; read by `read_stored` on
        # its thread, hence the lock.
        self.rows: list = []
        self._rows_sending: list = []
        self._rows_lock = threading.Lock()
        # History entries waiting for the writer, and those it sent and Redis has not
        # confirmed, by (namespace, room id), oldest first; read by `read_history` on its
        # thread, hence the lock.
        self.history: dict[tuple[str, str], deque[HistoryEntry]] = {}
        self._history_sending: dict[tuple[str, str], list[HistoryEntry]] = {}
        self._history_keep = 0
        self._history_lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._sequence = history_sequence()

    def client(self) -> redis.Redis:
        """The blocking client of the reader threads (room loads, history reads)."""
        with self._client_lock:
            if self._client is None:
                self._client = redis.Redis.from_url(self.cluster.url, socket_timeout=2.0,
                                                    socket_connect_timeout=2.0)
            return self._client

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """The room's variables as Redis holds them; empty while Redis is unreachable (the
        room is re-read when the link is back)."""
        if not self.cluster.up:
            return []
        values_key, meta_key, counts_key, _channel = room_keys(namespace, room_id)
        try:
            _version, values, counts = self.client().eval(
                READ_SCRIPT, 3, values_key, meta_key, counts_key, NODE_KEY)
        except (RedisError, OSError) as exc:
            log.warning("cannot read room %s from Redis (%s): it starts empty on this node "
                        "and is re-read when Redis answers", printable(room_id), one_line(exc))
            return []
        rows = []
        for index in range(0, len(values), 2):
            _written, position, value = parse_stored(values[index + 1])
            rows.append((decode(values[index]), position, value))
        if any(backplane.namespace == namespace for backplane in self.cluster.backplanes):
            self.loaded_counts[namespace, room_id] = counts
        return rows

    def read_stored(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """What Redis holds for a namespace this store writes itself (e.g. the facade's
        block list), with the rows still on their way there applied; StoreReadError while
        Redis is unreachable or the read fails (never "nothing stored"). Room namespaces'
        writes travel with the backplane and are not included."""
        # Taken before Redis is read: rows it confirms meanwhile are then in both, alike.
        with self._rows_lock:
            unwritten = [change for change in (*self._rows_sending, *self.rows)
                         if change[0] == namespace and change[1] == room_id]
        if not self.cluster.up:
            raise StoreReadError("the link to Redis is down")
        try:
            stored = self.client().hgetall(room_keys(namespace, room_id)[0])
            rows = {}
            for key, raw in stored.items():
                _written, position, value = parse_stored(raw)
                rows[decode(key)] = (position, value)
        except (RedisError, OSError, ValueError) as exc:
            raise StoreReadError(one_line(exc)) from exc
        for _namespace, _room_id, upserts, deletes in unwritten:
            for key, position, value in upserts:
                rows[key] = (position, value)
            for key in deletes:
                rows.pop(key, None)
        return [(key, position, value) for key, (position, value) in rows.items()]

    def save(self, changes: list) -> int:
        """Room changes: nothing to do, the backplane wrote them through. Rows of other
        namespaces (e.g. the facade's persisted block list) are queued for Redis."""
        rooms = {backplane.namespace for backplane in self.cluster.backplanes}
        with self._rows_lock:
            self.rows.extend(change for change in changes if change[0] not in rooms)
            queued = bool(self.rows)
        if queued:
            self.cluster.wake()
        self.committed += 1
        return self.committed

    def drain(self, commands: list[tuple]) -> Callable[[list | None], None] | None:
        """Append queued rows to `commands` (the cluster's writer calls this)."""
        if not self.rows:
            return None
        with self._rows_lock:
            rows, self.rows = self.rows, []
            self._rows_sending.append(rows)
        for namespace, room_id, upserts, deletes in rows:
            values_key = room_keys(namespace, room_id)[0]
            for key, position, value in upserts:
                commands.append((b"HSET", values_key, encode(key),
                                 stored_value(0, position, value)))
            for key in deletes:
                commands.append((b"HDEL", values_key, encode(key)))

        def finish(replies: list | None) -> None:
            failed = replies is None or any(isinstance(reply, Exception) for reply in replies)
            with self._rows_lock:
                self._rows_sending.remove(rows)
                if failed:
                    self.rows[:0] = rows  # kept, in order, and sent again
            if failed:
                log.warning("%d stored rows could not be written to Redis; retrying", len(rows))

        return finish

    # History ([history] enabled): a list per room, written by the cluster's writer

    def history_sequence(self) -> Iterator[int]:
        """Entry ids ordered by time across nodes (see `history_sequence`)."""
        return self._sequence

    def append_history(self, batch: list[HistoryBatch], keep: int) -> int:
        """Queue entries for Redis, at most the newest `keep` per room (older ones would be
        trimmed there anyway, so an outage cannot grow the queue without bound)."""
        self._history_keep = keep
        with self._history_lock:
            for namespace, room_id, entries in batch:
                queued = self.history.get((namespace, room_id))
                if queued is None:
                    queued = self.history[namespace, room_id] = deque(maxlen=keep)
                queued.extend(entries)
        self.cluster.wake()
        self.committed += 1
        return self.committed

    def read_history(self, namespace: str, room_id: str, limit: int) -> list[HistoryEntry]:
        """The newest `limit` entries of a room, newest first: Redis's list and what is still
        on its way there (only the latter while Redis is unreachable)."""
        with self._history_lock:
            unsent = [*self._history_sending.get((namespace, room_id), ()),
                      *self.history.get((namespace, room_id), ())]
        stored: list[HistoryEntry] = []
        if self.cluster.up:
            try:
                raw = self.client().lrange(history_key(namespace, room_id), 0, limit - 1)
            except (RedisError, OSError) as exc:
                log.warning("cannot read the history of room %s from Redis (%s)",
                            printable(room_id), one_line(exc))
                raw = []
            for item in raw:
                try:
                    stored.append(parse_entry(item))
                except (ValueError, TypeError):
                    log.warning("skipped a malformed history entry of room %s",
                                printable(room_id))
        return newest_first(stored, unsent, limit)

    def drain_history(self, commands: list[tuple]) -> Callable[[list | None], None] | None:
        """Append queued history entries to `commands` (one LPUSH and LTRIM per room)."""
        if not self.history:
            return None
        keep = self._history_keep
        with self._history_lock:
            queued, self.history = self.history, {}
            sending = {room: list(entries) for room, entries in queued.items()}
            self._history_sending.update(sending)
        for (namespace, room_id), entries in sending.items():
            key = history_key(namespace, room_id)
            commands.append((b"LPUSH", key, *map(dump_entry, entries)))
            commands.append((b"LTRIM", key, 0, keep - 1))

        def finish(replies: list | None) -> None:
            failed = replies is None or any(isinstance(reply, Exception) for reply in replies)
            with self._history_lock:
                for room, entries in sending.items():
                    if self._history_sending.get(room) is entries:
                        del self._history_sending[room]
                    if failed:  # kept, oldest first, ahead of newer ones, and sent again
                        newer = self.history.get(room, ())
                        self.history[room] = deque([*entries, *newer], maxlen=keep)
            if failed:
                log.warning("history entries of %d rooms could not be written to Redis; "
                            "retrying", len(sending))

        return finish

    def close(self) -> None:
        """Nothing queued here."""

    def close_client(self) -> None:
        """Close the reader thread's connection (after the readers stopped)."""
        if self._client is not None:
            self._client.close()
            self._client = None


def one_line(exc: BaseException) -> str:
    """An exception as one short log line."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]
