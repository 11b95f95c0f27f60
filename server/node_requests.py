"""Requests to the other nodes of a cluster, and their replies, over the message bus.

`NodeRequests.ask(topic, payload)` sends one request to every other live node (or to one
node) and gathers the replies for at most a timeout. It never raises because a node is slow,
stopped or unreachable, and never waits longer than the timeout: the answer (`Replies`) names
the nodes that replied, those that did not reply in time, and those that could not answer.
`answer(topic, handler)` sets what this node replies to a topic: `handler(origin node,
payload)` returns bytes, or an awaitable of bytes (run in a task, so it may read the store
off the loop). Topics and payloads are opaque here: callers (the admin API) choose them.

The envelope is the core's own, on two bus topics: a request on `stratus.ask` is
`<request id> <topic> <payload>`, broadcast (or sent to one node); its reply on `stratus.reply`,
sent to the asking node only, is `<request id> <status> <payload>`, where status is `ok`,
`error` (the payload says why) or `unknown` (no handler for the topic on that node).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .backplane import MessageBus
from .logsafe import printable

log = logging.getLogger("stratus.cluster")

ASK_TOPIC = "stratus.ask"
REPLY_TOPIC = "stratus.reply"
OK, ERROR, UNKNOWN = b"ok", b"error", b"unknown"

# handler(origin node id, payload) -> reply payload (or an awaitable of it)
Answer = Callable[[str, bytes], "bytes | Awaitable[bytes]"]


@dataclass
class Replies:
    """What the other nodes answered to one request."""

    # Reply payloads by node id.
    replies: dict[str, bytes] = field(default_factory=dict)
    # Nodes asked that did not reply within the timeout (stopped, overloaded, just gone).
    missing: list[str] = field(default_factory=list)
    # Nodes that replied that they could not answer, with why (no handler, handler failed).
    failed: dict[str, str] = field(default_factory=dict)
    # Why nobody was asked: the link to the other nodes is down (None when it is up).
    link_down: str | None = None


class _Pending:
    __slots__ = ("waiting", "gone", "replies", "failed", "done")

    def __init__(self, waiting: set[str], done: asyncio.Future) -> None:
        self.waiting = waiting  # asked and not replied yet
        self.gone: set[str] = set()  # of those, nodes whose heartbeat stopped meanwhile
        self.replies: dict[str, bytes] = {}
        self.failed: dict[str, str] = {}
        self.done = done

    def settle(self) -> None:
        """Done when every node still waited for has replied or is gone."""
        if self.waiting <= self.gone and not self.done.done():
            self.done.set_result(None)


class NodeRequests:
    """Ask the other nodes of a cluster and answer them (one per server, over its bus)."""

    def __init__(self, bus: MessageBus, timeout: float,
                 link_fault: Callable[[], str | None] = lambda: None) -> None:
        self.bus = bus
        self.timeout = timeout
        self._link_fault = link_fault
        self._handlers: dict[str, Answer] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        bus.subscribe(ASK_TOPIC, self._asked)
        bus.subscribe(REPLY_TOPIC, self._replied)
        bus.on_node_gone(self._node_gone)

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.bus.node_id

    def answer(self, topic: str, handler: Answer) -> None:
        """Reply to requests on `topic` with `handler(origin, payload)`."""
        if not topic or " " in topic:
            raise ValueError(f"a request topic is a word without spaces, got {topic!r}")
        self._handlers[topic] = handler

    async def ask(self, topic: str, payload: bytes = b"", node: str | None = None,
                  timeout: float | None = None) -> Replies:
        """Send `payload` on `topic` to every other live node (or to `node`) and gather the
        replies for up to `timeout` seconds (the configured one by default)."""
        fault = self._link_fault()
        if fault:
            return Replies(link_down=fault)
        nodes = {node} if node is not None else set(self.bus.nodes())
        if not nodes:
            return Replies()
        request_id = next(self._ids)
        pending = _Pending(set(nodes), asyncio.get_running_loop().create_future())
        self._pending[request_id] = pending
        try:
            self.bus.publish(ASK_TOPIC, b"%d %s %s" % (request_id, topic.encode(), payload),
                             node=node)
            try:
                async with asyncio.timeout(self.timeout if timeout is None else timeout):
                    await pending.done
            except TimeoutError:
                pass
        finally:
            del self._pending[request_id]
        return Replies(pending.replies, sorted(pending.waiting), pending.failed)

    async def close(self) -> None:
        """Stop answering: cancel the handlers still running."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # Answering

    def _asked(self, origin: str, data: bytes) -> None:
        request_id, _, rest = data.partition(b" ")
        topic, _, payload = rest.partition(b" ")
        handler = self._handlers.get(topic.decode("utf-8", "replace"))
        if handler is None:
            self._reply(origin, request_id, UNKNOWN, b"no handler for " + topic)
            return
        try:
            result = handler(origin, payload)
        except Exception as exc:
            self._failed(origin, request_id, topic, exc)
            return
        if not inspect.isawaitable(result):
            self._reply(origin, request_id, OK, result)
            return
        task = asyncio.ensure_future(result)
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._answered(done, origin, request_id, topic))

    def _answered(self, task: asyncio.Task, origin: str, request_id: bytes, topic: bytes) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(origin, request_id, topic, exc)
        else:
            self._reply(origin, request_id, OK, task.result())

    def _failed(self, origin: str, request_id: bytes, topic: bytes, exc: BaseException) -> None:
        log.error("answering %s from node %s failed", printable(topic.decode("utf-8", "replace")),
                  printable(origin), exc_info=exc)
        self._reply(origin, request_id, ERROR, f"{type(exc).__name__} on that node".encode())

    def _reply(self, origin: str, request_id: bytes, status: bytes, payload: bytes) -> None:
        self.bus.publish(REPLY_TOPIC, b"%s %s %s" % (request_id, status, payload), node=origin)

    # Asking

    def _replied(self, origin: str, data: bytes) -> None:
        request_id, _, rest = data.partition(b" ")
        status, _, payload = rest.partition(b" ")
        try:
            pending = self._pending.get(int(request_id))
        except ValueError:
            return
        if pending is None:
            return  # too late: the request timed out
        if status == OK:
            pending.replies[origin] = payload
        else:
            pending.failed[origin] = payload.decode("utf-8", "replace")
        pending.waiting.discard(origin)
        pending.settle()

    def _node_gone(self, node: str) -> None:
        # Its heartbeat stopped: nobody waits the rest of the timeout for it (it is reported
        # missing).
        for pending in self._pending.values():
            if node in pending.waiting:
                pending.gone.add(node)
                pending.settle()
