"""A Redis connection driven directly, for the cluster link's two hot paths: the writer's
batches and the subscription every change of every followed room arrives on.

redis-py's asyncio client costs tens of microseconds of Python per command and per pub/sub
message (a task step, a timeout context and several layers of parsing per reply), which was
most of what a node spent per cross-node write (bench/RESULTS.md, issue 11). Here a batch of
commands is packed by hiredis and written in one call, and replies are parsed by hiredis'
`Reader` inside `data_received` and handed to callbacks in the order the commands were sent:
no task, future or timer per command or message. redis-py stays for everything that is not
per write (connecting the control client, scripts, re-reading rooms, heartbeats).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis.asyncio.connection import SSLConnection, parse_url

log = logging.getLogger("stratus.cluster")

Replies = Callable[[list | None], None]


class RespConnection(asyncio.Protocol):
    """One connection to Redis speaking RESP2: `send` writes a batch, its callback gets the
    batch's replies (None if the connection was lost first); replies nobody waits for (pub/sub
    messages, subscription confirmations) go to `on_push`."""

    def __init__(self, on_push: Callable[[Any], None] | None = None,
                 on_lost: Callable[[RespConnection, BaseException], None] | None = None) -> None:
        self.on_push = on_push
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.received_at = time.monotonic()  # when Redis last sent anything
        self._reader = hiredis.Reader()
        # Batches sent and not fully answered: [replies expected, replies, callback, sent at]
        self._waiting: deque[list] = deque()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_at = time.monotonic()
        reader = self._reader
        reader.feed(data)
        waiting = self._waiting
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(exc)
                return
            if reply is False:  # RESP2 has no booleans: False means "incomplete"
                return
            try:
                if waiting:
                    batch = waiting[0]
                    batch[1].append(reply)
                    if len(batch[1]) == batch[0]:
                        waiting.popleft()
                        batch[2](batch[1])
                elif self.on_push is not None:
                    self.on_push(reply)
            except Exception:  # a handler's bug must not cost the link
                log.exception("handling a reply from Redis failed")

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(exc or ConnectionError("Redis closed the connection"))

    # Use

    def send(self, commands: Sequence[Sequence[Any]], done: Replies | None = None) -> None:
        """Write `commands` at once; `done(replies)` once all are answered (None: lost)."""
        if self.closed or self.transport is None:
            raise ConnectionError("the connection to Redis is closed")
        self.transport.write(b"".join(map(hiredis.pack_command, commands)))
        if done is not None:
            self._waiting.append([len(commands), [], done, time.monotonic()])

    async def call(self, *commands: Sequence[Any]) -> list:
        """Send `commands` and wait for their replies (errors returned, not raised)."""
        future = asyncio.get_running_loop().create_future()

        def done(replies: list | None) -> None:
            if not future.done():
                if replies is None:
                    future.set_exception(ConnectionError("lost the connection to Redis"))
                else:
                    future.set_result(replies)

        self.send(commands, done)
        return await future

    def waiting_since(self) -> float | None:
        """When the oldest unanswered batch was sent (None: nothing is waiting)."""
        return self._waiting[0][3] if self._waiting else None

    def busy(self) -> bool:
        """True while a batch waits for its replies."""
        return bool(self._waiting)

    def close(self) -> None:
        """Drop the connection: waiting batches get None, `on_lost` is not called."""
        self.on_lost = None
        self._fail(ConnectionError("closed"))

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        waiting, self._waiting = self._waiting, deque()
        for batch in waiting:
            try:
                batch[2](None)
            except Exception:
                log.exception("handling a lost Redis batch failed")
        if self.on_lost is not None:
            self.on_lost(self, exc)


async def connect(url: str, timeout: float, on_push: Callable[[Any], None] | None = None,
                  on_lost: Callable[[RespConnection, BaseException], None] | None = None,
                  ) -> RespConnection:
    """A `RespConnection` to the Redis of `url` (redis://, rediss://, unix://, with user,
    password and database as redis-py reads them), authenticated and on its database."""
    params = parse_url(url)
    loop = asyncio.get_running_loop()

    def factory() -> RespConnection:
        return RespConnection(on_push, on_lost)

    async def open_transport() -> RespConnection:
        if "path" in params:
            _, protocol = await loop.create_unix_connection(factory, params["path"])
        else:
            host = params.get("host", "localhost")
            context = _ssl_context(params) if params.get("connection_class") is SSLConnection \
                else None
            _, protocol = await loop.create_connection(
                factory, host, params.get("port", 6379), ssl=context,
                server_hostname=host if context is not None else None)
        return protocol

    async with asyncio.timeout(timeout):
        connection = await open_transport()
        try:
            setup: list[tuple] = []
            if params.get("password") is not None:
                setup.append(("AUTH", params["username"], params["password"])
                             if params.get("username") else ("AUTH", params["password"]))
            if params.get("db"):
                setup.append(("SELECT", params["db"]))
            if setup:
                for reply in await connection.call(*setup):
                    if isinstance(reply, Exception):
                        raise ConnectionError(f"Redis refused the connection: {reply}")
        except BaseException:
            connection.close()
            raise
    return connection


def _ssl_context(params: dict) -> ssl.SSLContext:
    """TLS exactly as redis-py makes it for the same rediss:// URL (every `ssl_*` parameter it
    knows: CA file, data or path, client certificate and its password, cert_reqs,
    check_hostname, verify flags, minimum version, ciphers), so the lean connections and
    redis-py's agree."""
    options = {name: value for name, value in params.items() if name != "connection_class"}
    return SSLConnection(**options).ssl_context.get()
