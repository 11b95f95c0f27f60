"""Requests to the other nodes and their replies (server/node_requests.py), over an in-memory
bus that delivers like RedisBus (never to the sender; to one node or all). The same facility
over real Redis and real processes is exercised by tests/ops/test_admin_cluster.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from server.node_requests import NodeRequests


class Hub:
    """The nodes of an in-memory cluster; `silent` nodes receive nothing (as if stopped)."""

    def __init__(self) -> None:
        self.buses: dict[str, HubBus] = {}
        self.silent: set[str] = set()


class HubBus:
    """A `MessageBus` on a `Hub`: messages arrive on a later loop pass, in order."""

    def __init__(self, hub: Hub, node_id: str) -> None:
        self.hub = hub
        self.node_id = node_id
        self.receivers: dict[str, Callable[[str, bytes], None]] = {}
        self.gone: list[Callable[[str], None]] = []
        hub.buses[node_id] = self

    def subscribe(self, topic, receiver) -> None:
        self.receivers[topic] = receiver

    def publish(self, topic, payload, node=None) -> None:
        targets = [node] if node is not None else [n for n in self.hub.buses if n != self.node_id]
        loop = asyncio.get_running_loop()
        for target in targets:
            bus = self.hub.buses.get(target)
            if bus is not None and target not in self.hub.silent and topic in bus.receivers:
                loop.call_soon(bus.receivers[topic], self.node_id, payload)

    def nodes(self) -> list[str]:
        return [node for node in self.hub.buses if node != self.node_id]

    def on_node_gone(self, listener) -> None:
        self.gone.append(listener)

    def on_relinked(self, listener) -> None:
        pass


def cluster(*names: str, timeout: float = 0.5) -> tuple[Hub, dict[str, NodeRequests]]:
    hub = Hub()
    return hub, {name: NodeRequests(HubBus(hub, name), timeout) for name in names}


async def test_every_other_node_replies_by_its_id():
    """ask() gathers one reply from each other node, keyed by node id."""
    _, nodes = cluster("a", "b", "c")
    for name, requests in nodes.items():
        requests.answer("who", lambda origin, payload, name=name: f"{name}<-{origin}".encode())
    replies = await nodes["a"].ask("who", b"")
    assert replies.replies == {"b": b"b<-a", "c": b"c<-a"}
    assert replies.missing == [] and replies.failed == {} and replies.link_down is None


async def test_a_silent_node_is_named_missing_after_the_timeout():
    """A node that does not reply is listed as missing once the timeout passes, not waited
    for longer."""
    hub, nodes = cluster("a", "b", "c", timeout=0.3)
    for requests in nodes.values():
        requests.answer("ping", lambda origin, payload: b"pong")
    hub.silent.add("c")
    started = time.monotonic()
    replies = await nodes["a"].ask("ping")
    assert 0.3 <= time.monotonic() - started < 0.6
    assert replies.replies == {"b": b"pong"} and replies.missing == ["c"]


async def test_a_node_gone_meanwhile_ends_the_wait_early():
    """When the only node still awaited stops beating, the answer comes at once."""
    hub, nodes = cluster("a", "b", timeout=5.0)
    hub.silent.add("b")
    asking = asyncio.ensure_future(nodes["a"].ask("ping"))
    await asyncio.sleep(0.05)
    for listener in hub.buses["a"].gone:
        listener("b")
    replies = await asyncio.wait_for(asking, 1.0)
    assert replies.missing == ["b"]


async def test_unknown_topics_and_failing_handlers_are_reported_not_raised():
    """A node without a handler says so, and a handler that raises is reported as failed."""
    _, nodes = cluster("a", "b", "c")

    def broken(origin, payload):
        raise KeyError("id")

    nodes["b"].answer("task", broken)
    replies = await nodes["a"].ask("task", b"{}")
    assert replies.replies == {}
    assert replies.failed == {"b": "KeyError on that node", "c": "no handler for task"}


async def test_an_async_handler_replies_when_done():
    """A handler may return an awaitable (e.g. a read off the loop); its result is sent."""
    _, nodes = cluster("a", "b")

    async def slow(origin, payload):
        await asyncio.sleep(0.05)
        return payload.upper()

    nodes["b"].answer("shout", slow)
    assert (await nodes["a"].ask("shout", b"hi")).replies == {"b": b"HI"}


async def test_one_node_can_be_asked_alone():
    """ask(..., node=X) asks only X."""
    _, nodes = cluster("a", "b", "c")
    asked = []
    for name in ("b", "c"):
        nodes[name].answer("mark", lambda origin, payload, name=name: asked.append(name) or b"")
    replies = await nodes["a"].ask("mark", node="c")
    assert list(replies.replies) == ["c"] and asked == ["c"]


async def test_with_the_link_down_nobody_is_asked():
    """While the cluster link is down, ask() answers at once with the reason."""
    hub = Hub()
    requests = NodeRequests(HubBus(hub, "a"), 5.0, lambda: "cluster link to Redis down (x)")
    HubBus(hub, "b")
    replies = await asyncio.wait_for(requests.ask("ping"), 0.5)
    assert replies.link_down == "cluster link to Redis down (x)" and replies.replies == {}


def test_a_topic_is_one_word():
    """A topic with a space (it would break the envelope) is refused when registered."""
    _, nodes = cluster("a")
    with pytest.raises(ValueError, match="without spaces"):
        nodes["a"].answer("two words", lambda origin, payload: b"")
