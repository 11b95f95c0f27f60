"""The Redis cluster engine: one node's link to Redis and, through it, to the other nodes.

One `RedisCluster` per process. It owns a redis-py client for what is rare (connecting,
scripts, re-reading rooms, the heartbeat: `stratus:node:<id>` with a TTL, plus a message on
`stratus:nodes` that every node hears) and two lean connections (`resp.RespConnection`) for
what is per write: the writer and the subscription. Everything a node sends (room writes,
member counts, bus messages) is queued by the synchronous callers and sent as one batch per
loop turn, with one batch waiting for replies at a time, so no caller ever awaits Redis and a
busy node sends many writes per round trip.

Outage: when a command or the subscription fails, the link is marked down (one warning; the
`fault` note shows on /healthz, which still answers 200), every node keeps serving its own
clients from memory, and a supervisor retries. When Redis answers again the node subscribes
again, writes through what it accepted meanwhile, and re-reads every room in memory, so all
members converge within a second or two. If Redis came back empty (its data was lost), every
node writes its rooms back from memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..logsafe import printable
from ..store import StoreError
from .redis_claims import CLAIM_SCRIPTS, RedisClaims
from .redis_rooms import (
    NODE_KEY,
    SCRIPTS,
    RedisBackplane,
    RedisRoomStore,
    decode,
    encode,
    one_line,
)
from .resp import RespConnection, connect

if TYPE_CHECKING:
    from ..config import ClusterSection, Config

log = logging.getLogger("stratus.cluster")

NODES_CHANNEL = b"stratus:nodes"
EPOCH_KEY = b"stratus:epoch"
BUS_PREFIX = b"stratus:b:"
WORKER_KEY = b"stratus:worker:"
WORKERS = 1024  # worker numbers 0 to 1023 (the node part of client ids and CL4 snowflakes)
# Hold a worker number: this node's if it still holds it, else the first free one from the
# preferred one on (each held by a key naming its node, expiring like the heartbeat). Returns
# the number, or -1 when all are taken. ARGV: key prefix, node id, ms to live, preferred, count.
CLAIM_WORKER = """
local prefix, node, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local preferred, count = tonumber(ARGV[4]), tonumber(ARGV[5])
for step = 0, count - 1 do
  local number = (preferred + step) % count
  local key = prefix .. number
  local holder = redis.call('GET', key)
  if holder == node then
    redis.call('PEXPIRE', key, ttl)
    return number
  end
  if not holder then
    redis.call('SET', key, node, 'PX', ttl)
    return number
  end
end
return -1
"""
RELEASE_WORKER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
RETRY_INTERVAL = 0.25  # seconds between attempts to reach Redis while the link is down
FAILED_REPLY_RETRY = 1.0  # seconds before a write Redis answered with an error is retried
COMMAND_TIMEOUT = 2.0  # seconds Redis may take to answer before the link counts as down
LINK_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def default_node_id() -> str:
    """Host name and process id: unique per running process."""
    return f"{socket.gethostname()}-{os.getpid()}"


class RedisCluster:
    """The `Cluster` of `[cluster] backend = "redis"`."""

    def __init__(self, section: ClusterSection) -> None:
        self.section = section
        self.node_id = section.node_id or default_node_id()
        self.node = encode(self.node_id)
        self.url = section.redis_url
        self.node_timeout = section.node_timeout
        # A beat at least every second: the subscription hears this node's own beats, so a
        # silence of four beats means it is dead even when nothing else is published.
        self.heartbeat = max(min(self.node_timeout / 5, 1.0), 0.05)
        self.redis: aioredis.Redis | None = None
        self.bus = RedisBus(self)
        self.claims = RedisClaims(self)
        # Held in Redis while this node lives (`CLAIM_WORKER`); a random one until then.
        self.worker = secrets.randbelow(WORKERS)
        self.backplanes: list[RedisBackplane] = []
        self.up = False
        self._reason = "not connected yet"
        self._fault: str | None = "cluster link to Redis down (not connected yet)"
        self._commands: RespConnection | None = None  # the writer's connection
        self._subscriber: RespConnection | None = None  # the subscription's connection
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._more = False  # something was queued since the last batch was sent
        self._script_task: asyncio.Task | None = None
        # Channels this node follows: handler(data), and what to do once a subscription is
        # confirmed (e.g. re-read the room, so nothing published before it is missed).
        self._channels: dict[bytes, Callable[[bytes], None]] = {}
        self._confirmed: dict[bytes, Callable[[], None]] = {}
        self._subscribe: dict[bytes, None] = {}
        self._unsubscribe: dict[bytes, None] = {}
        self._tasks: list[asyncio.Task] = []
        self._supervisor: asyncio.Task | None = None
        self._epoch: bytes | None = None
        self._last_seen: dict[bytes, float] = {}  # other nodes by id: when last heard
        self._retry_handle: asyncio.TimerHandle | None = None
        self._scripts_lost = True
        self._closing = False
        self.store: RedisRoomStore | None = None
        self.subscribe_channel(NODES_CHANNEL, self._heard_node)

    # The Cluster interface

    @property
    def fault(self) -> str | None:
        """A note for /healthz while the link is down."""
        return self._fault

    def open_store(self, config: Config) -> RedisRoomStore:
        """Rooms load their values from Redis (SQLite is not used with this backend)."""
        self.store = RedisRoomStore(self)
        return self.store

    def describe(self, config: Config) -> str:
        """Redis and this node's id."""
        return (f"store: Redis at {_safe_url(self.url)}, cluster node "
                f"{printable(self.node_id)}, worker number {self.worker}")

    def backplane(self, namespace: str) -> RedisBackplane:
        """A backplane whose rooms keep their values in Redis."""
        backplane = RedisBackplane(self, namespace)
        self.backplanes.append(backplane)
        return backplane

    async def start(self) -> None:
        """Connect; without Redis start degraded, or refuse ([cluster] require_redis_at_start)."""
        self._loop = asyncio.get_running_loop()
        self.redis = aioredis.Redis.from_url(
            self.url, socket_timeout=COMMAND_TIMEOUT, socket_connect_timeout=COMMAND_TIMEOUT,
            health_check_interval=0,
        )
        try:
            await self._relink()
        except LINK_ERRORS as exc:
            reason = one_line(exc)
            if self.section.require_redis_at_start:
                await self._close_connections()
                raise StoreError(f"cannot reach Redis at {_safe_url(self.url)} ({reason}) and "
                                 "[cluster] require_redis_at_start = true") from None
            self._down(reason, starting=True)
        self._tasks = [self._loop.create_task(self._beat_loop(), name="stratus-redis-heartbeat")]

    async def close(self, timeout: float = 3.0) -> None:
        """Send what is queued (for up to `timeout` s), leave the cluster, disconnect."""
        deadline = time.monotonic() + timeout
        while self.up and self._queued() and time.monotonic() < deadline:
            self.wake()
            await asyncio.sleep(0.02)
        lost = sum(backplane.unsent() for backplane in self.backplanes)
        if lost:
            log.warning("%d room values accepted by this node did not reach Redis before "
                        "shutdown; the other nodes keep theirs", lost)
        self._closing = True
        self.claims.close()
        for task in [*self._tasks, self._supervisor, self._script_task]:
            if task is not None:
                task.cancel()
        if self.up:
            try:
                async with asyncio.timeout(1.0):
                    await self.redis.delete(NODE_KEY + self.node)
                    # Free the worker number at once (only if this node still holds it).
                    await self.redis.eval(RELEASE_WORKER, 1, WORKER_KEY + b"%d" % self.worker,
                                          self.node)
            except (*LINK_ERRORS, TimeoutError):
                pass
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self.store is not None:
            self.store.close_client()
        self._drop_connections()
        if self.redis is not None:
            await self.redis.aclose()

    # Channels

    def subscribe_channel(self, channel: bytes, handler: Callable[[bytes], None],
                          confirmed: Callable[[], None] | None = None) -> None:
        """Follow `channel` (handler(data) per message); `confirmed()` once it is live."""
        self._channels[channel] = handler
        if confirmed is not None:
            self._confirmed[channel] = confirmed
        self._unsubscribe.pop(channel, None)
        self._subscribe[channel] = None
        self.wake()

    def unsubscribe_channel(self, channel: bytes) -> None:
        """Stop following `channel`."""
        self._channels.pop(channel, None)
        self._confirmed.pop(channel, None)
        self._subscribe.pop(channel, None)
        self._unsubscribe[channel] = None
        self.wake()

    def link_failed(self, exc: BaseException) -> None:
        """A command failed on the link: mark it down (the supervisor brings it back)."""
        self._down(one_line(exc))

    def scripts_lost(self) -> None:
        """Redis answered NOSCRIPT (it restarted or was flushed): load them before retrying."""
        self._scripts_lost = True
        self.wake()

    async def _load_scripts(self) -> None:
        for text, sha in (*SCRIPTS.values(), *CLAIM_SCRIPTS.values()):
            loaded = await self.redis.script_load(text)
            loaded = loaded.decode() if isinstance(loaded, bytes) else loaded
            if loaded != sha:
                raise RuntimeError(f"Redis gave script {sha} the hash {loaded}")
        self._scripts_lost = False

    def wake(self) -> None:
        """Something was queued: it goes out with the next batch (at the end of this loop
        turn, or when the batch waiting for replies has them)."""
        self._more = True
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # The link

    def _down(self, reason: str, starting: bool = False) -> None:
        if self._closing:
            return
        if self.up or starting:
            self.up = False
            self._drop_connections()
            self.claims.link_down()
            self._reason = reason
            self._fault = f"cluster link to Redis down ({reason}); serving this node's clients"
            if starting:
                log.warning("cannot reach Redis at %s (%s): starting degraded, serving this "
                            "node's clients only, and retrying", _safe_url(self.url), reason)
            else:
                log.warning("lost the link to Redis (%s): serving this node's clients from "
                            "memory until it is back", reason)
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._reconnect(), name="stratus-redis-reconnect")

    async def _reconnect(self) -> None:
        started = time.monotonic()
        while not self._closing:
            await asyncio.sleep(RETRY_INTERVAL)
            try:
                await self._relink()
            except LINK_ERRORS as exc:
                self._reason = one_line(exc)
                continue
            log.warning("the link to Redis is back after %.1f s: rooms re-read, values accepted "
                        "meanwhile written through", time.monotonic() - started)
            return

    async def _relink(self) -> None:
        """(Re)connect: check Redis kept its data, subscribe to everything, resync rooms."""
        redis = self.redis
        # Pooled connections from before an outage are dead: start from fresh ones (nothing
        # else uses the link while it is down).
        await redis.connection_pool.disconnect()
        await redis.ping()
        await redis.set(EPOCH_KEY, secrets.token_hex(8), nx=True)
        epoch = await redis.get(EPOCH_KEY)
        data_lost = self._epoch is not None and epoch != self._epoch
        if data_lost:
            log.warning("Redis came back without the cluster's data (a new epoch): writing "
                        "this node's rooms back from memory")
        await self._load_scripts()
        if self._epoch is None:
            await self._forget_earlier_counts()
        self._epoch = epoch
        await redis.set(NODE_KEY + self.node, b"1", px=int(self.node_timeout * 1000))
        self._claimed(await redis.eval(CLAIM_WORKER, 0, *self._claim_arguments()))
        # Nodes whose heartbeat key lives are known at once, not a beat later (requests to
        # every node, e.g. the admin API's, must not miss them); and they hear of this one.
        async for key in redis.scan_iter(match=NODE_KEY + b"*", count=1000):
            self._heard_node(key[len(NODE_KEY):])
        await redis.publish(NODES_CHANNEL, self.node)
        self._drop_connections()
        commands = await connect(self.url, COMMAND_TIMEOUT, on_lost=self._connection_lost)
        try:
            subscriber = await connect(self.url, COMMAND_TIMEOUT, on_push=self._pushed,
                                       on_lost=self._connection_lost)
        except BaseException:
            commands.close()
            raise
        self._commands, self._subscriber = commands, subscriber
        self._subscribe.clear()
        self._unsubscribe.clear()
        # Nothing sent before this point can still be echoed on the old subscription.
        for backplane in self.backplanes:
            backplane.relinked(data_lost)
        self.claims.relinked()
        subscriber.send([(b"SUBSCRIBE", *self._channels)])
        now = time.monotonic()
        self._last_seen = dict.fromkeys(self._last_seen, now)  # heard again within a beat
        self.up = True
        self._fault = None
        self.wake()
        self.bus.relinked()

    def _drop_connections(self) -> None:
        commands, subscriber = self._commands, self._subscriber
        self._commands = self._subscriber = None
        for connection in (commands, subscriber):
            if connection is not None:
                connection.close()  # a waiting batch is put back by its finishers

    def _connection_lost(self, connection: RespConnection, exc: BaseException) -> None:
        if connection is self._commands or connection is self._subscriber:
            self._down(one_line(exc))

    async def _forget_earlier_counts(self) -> None:
        """At start: drop member counts and names an earlier process with this node id left
        behind (a node_id set in config, restarted within node_timeout, would otherwise keep
        them)."""
        pipe = self.redis.pipeline(transaction=False)
        async for key in self.redis.scan_iter(match=b"stratus:n:*", count=1000):
            pipe.hdel(key, self.node)
        if pipe.command_stack:
            await pipe.execute()
        await self.claims.purge(earlier=self.node)

    def _queued(self) -> bool:
        return bool(self._subscribe or self._unsubscribe or self.bus.queue or self.claims.queue
                    or (self.store is not None and (self.store.rows or self.store.history))
                    or any(backplane.dirty for backplane in self.backplanes)
                    or (self._commands is not None and self._commands.busy()))

    def _flush(self) -> None:
        """Send subscription changes, and the next batch unless one waits for replies."""
        self._flush_scheduled = False
        if not self.up:
            return
        if self._scripts_lost:
            if self._script_task is None or self._script_task.done():
                self._script_task = self._loop.create_task(self._reload_scripts())
            return
        try:
            self._send_subscriptions()
            if self._commands.busy():
                return  # its replies call wake() again if more was queued meanwhile
            self._more = False
            self._send_batch()
        except ConnectionError as exc:
            self._down(one_line(exc))
        except Exception:  # a bug must not stop the writer: log it and keep going
            log.exception("cluster writer failed")

    async def _reload_scripts(self) -> None:
        try:
            await self._load_scripts()
        except LINK_ERRORS as exc:
            self._down(one_line(exc))
            return
        self.wake()

    def _send_subscriptions(self) -> None:
        if self._unsubscribe:
            channels, self._unsubscribe = list(self._unsubscribe), {}
            self._subscriber.send([(b"UNSUBSCRIBE", *channels)])
        if self._subscribe:
            channels, self._subscribe = list(self._subscribe), {}
            self._subscriber.send([(b"SUBSCRIBE", *channels)])

    def _send_batch(self) -> None:
        commands: list[tuple] = []
        finishers: list[tuple[Callable[[list | None], None], int, int]] = []
        drains = [backplane.drain for backplane in self.backplanes]
        # The store's rows go before the bus's messages: a node asked over the bus to apply
        # a block finds it stored if it reads the block list then.
        if self.store is not None:
            drains.append(self.store.drain)
        drains += [self.bus.drain, self.claims.drain]
        if self.store is not None:
            drains.append(self.store.drain_history)
        for drain in drains:
            start = len(commands)
            finish = drain(commands)
            if finish is not None:
                finishers.append((finish, start, len(commands)))
        if not finishers:
            return

        def done(replies: list | None) -> None:
            self._batch_done(finishers, replies)

        try:
            self._commands.send(commands, done)
        except ConnectionError:
            done(None)  # put back: written through once the link is back
            raise

    def _batch_done(self, finishers: list, replies: list | None) -> None:
        store = self.store  # counts what metrics report as store writes and errors
        if replies is None:  # the link failed: everything is put back
            for finish, _, _ in finishers:
                finish(None)
            if store is not None:
                store.write_errors += 1
            return
        failed = False
        for finish, start, end in finishers:
            answers = replies[start:end]
            failed = failed or any(isinstance(reply, Exception) for reply in answers)
            finish(answers)
        if store is not None:
            if failed:
                store.write_errors += 1
            else:
                store.writes += 1
        if failed and self._retry_handle is None:
            self._retry_handle = self._loop.call_later(FAILED_REPLY_RETRY, self._retry_failed)
        if self._more:
            self.wake()

    def _retry_failed(self) -> None:
        self._retry_handle = None
        self.wake()

    def _pushed(self, reply: list) -> None:
        """A message on the subscription (or a confirmation of one)."""
        kind, channel = reply[0], reply[1]
        try:
            if kind == b"message":
                handler = self._channels.get(channel)
                if handler is not None:
                    handler(reply[2])
            elif kind == b"subscribe":
                confirmed = self._confirmed.get(channel)
                if confirmed is not None:
                    confirmed()
        except Exception:
            log.exception("handling a cluster message on %s failed",
                          printable(channel.decode("utf-8", "replace")))

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            self._expire_nodes()
            if not self.up:
                continue
            now = time.monotonic()
            # Every node (this one included) publishes a heartbeat each beat: a silent
            # subscription is a dead one.
            if now - self._subscriber.received_at > 4 * self.heartbeat:
                self._down("no messages on the subscription")
                continue
            since = self._commands.waiting_since()
            if since is not None and now - since > COMMAND_TIMEOUT:
                self._down(f"Redis did not answer for {COMMAND_TIMEOUT:g} s")
                continue
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.set(NODE_KEY + self.node, b"1", px=int(self.node_timeout * 1000))
                pipe.eval(CLAIM_WORKER, 0, *self._claim_arguments())
                pipe.publish(NODES_CHANNEL, self.node)
                _, worker, _ = await pipe.execute()
            except LINK_ERRORS as exc:
                self._down(one_line(exc))
            else:
                self._claimed(worker)

    def _claim_arguments(self) -> tuple:
        return (WORKER_KEY, self.node, int(self.node_timeout * 1000), self.worker, WORKERS)

    def _claimed(self, worker: int) -> None:
        """Redis answered `CLAIM_WORKER`: keep the number it gave (ids made from now on)."""
        if worker < 0:
            log.error("all %d worker numbers are held by live nodes: this node keeps %d, so "
                      "client ids may clash with another node's", WORKERS, self.worker)
        elif worker != self.worker:
            log.info("cluster node %s holds worker number %d (the node part of its client ids)",
                     printable(self.node_id), worker)
            self.worker = worker

    def _heard_node(self, data: bytes) -> None:
        if data != self.node:
            if data not in self._last_seen:
                log.info("cluster node %s joined", printable(decode(data)))
            self._last_seen[data] = time.monotonic()

    def _expire_nodes(self) -> None:
        if not self.up:
            return  # silence is this node's problem, not theirs
        deadline = time.monotonic() - self.node_timeout
        for node, seen in list(self._last_seen.items()):
            if seen < deadline:
                del self._last_seen[node]
                self.node_gone(node)

    def node_gone(self, node: bytes) -> None:
        """A node stopped beating: its members no longer count, its clients are gone."""
        log.warning("cluster node %s stopped answering for %g s: its members expire",
                    printable(decode(node)), self.node_timeout)
        for backplane in self.backplanes:
            backplane.node_gone(node)
        self.claims.node_gone(node)
        self.bus.node_gone(decode(node))

    def live_nodes(self) -> list[bytes]:
        """Other nodes heard from within node_timeout."""
        return list(self._last_seen)


class RedisBus:
    """The `MessageBus` over Redis pub/sub: `stratus:b:<topic>` for broadcasts and
    `stratus:b:<topic>@<node>` for one node. While the link is down, messages are dropped
    (they are not state: what matters is re-announced when the link is back)."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.node_id = cluster.node_id
        self.queue: list[tuple[bytes, bytes]] = []
        self._gone: list[Callable[[str], None]] = []
        self._relinked: list[Callable[[], None]] = []
        self._dropped = 0

    def subscribe(self, topic: str, receiver: Callable[[str, bytes], None]) -> None:
        """Receive `topic` broadcasts from the other nodes and messages sent to this node."""
        node = self.cluster.node

        def received(data: bytes) -> None:
            origin, _, payload = data.partition(b" ")
            if origin != node:
                receiver(decode(origin), payload)

        channel = BUS_PREFIX + encode(topic)
        self.cluster.subscribe_channel(channel, received)
        self.cluster.subscribe_channel(channel + b"@" + node, received)

    def publish(self, topic: str, payload: bytes, node: str | None = None) -> None:
        """Queue `payload` for every other node (or `node`)."""
        if not self.cluster.up:
            self._dropped += 1
            return
        channel = BUS_PREFIX + encode(topic)
        if node is not None:
            channel += b"@" + encode(node)
        self.queue.append((channel, self.cluster.node + b" " + payload))
        self.cluster.wake()

    def nodes(self) -> list[str]:
        """The other nodes heard from within node_timeout."""
        return [decode(node) for node in self.cluster.live_nodes()]

    def on_node_gone(self, listener: Callable[[str], None]) -> None:
        self._gone.append(listener)

    def on_relinked(self, listener: Callable[[], None]) -> None:
        self._relinked.append(listener)

    def node_gone(self, node: str) -> None:
        for listener in self._gone:
            try:
                listener(node)
            except Exception:
                log.exception("node-gone listener %r failed", listener)

    def relinked(self) -> None:
        if self._dropped:
            log.info("%d cluster bus messages were dropped while Redis was unreachable",
                     self._dropped)
            self._dropped = 0
        for listener in self._relinked:
            try:
                listener()
            except Exception:
                log.exception("relink listener %r failed", listener)

    def drain(self, commands: list[tuple]) -> Callable[[list | None], None] | None:
        """Append queued messages to `commands`; the returned function sees the replies."""
        if not self.queue:
            return None
        queue, self.queue = self.queue, []
        commands.extend((b"PUBLISH", channel, data) for channel, data in queue)

        def finish(replies: list | None) -> None:
            if replies is None or any(isinstance(reply, Exception) for reply in replies):
                log.warning("%d cluster bus messages may not have reached the other nodes",
                            len(queue))

        return finish


def _safe_url(url: str) -> str:
    """The Redis URL without its password, for logs and errors."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return printable(scheme + sep + rest)
