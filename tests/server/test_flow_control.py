"""One client cannot hurt the others: read budgets, CL4 flooders, close_timeout."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.conformance.cl4_client import Cl4
from tests.conformance.helpers import http_get
from tests.server.rawclient import OP_TEXT, RawClient, build_frame

CL4_HELLO = json.dumps({"cmd": "handshake", "val": {"language": "Scratch"}})


def set_frames(name: str, values: range) -> bytes:
    """Masked `set` frames for `values`, to be written in one go."""
    return b"".join(
        build_frame(OP_TEXT, json.dumps({"method": "set", "name": name, "value": str(value)}))
        for value in values
    )


def open_connections(http_url: str) -> int:
    """The "N connections" figure of the status page (the request itself included)."""
    _status, _headers, body = http_get(http_url, "/")
    return int(body.decode().split(" connections", 1)[0].rsplit(">", 1)[1])


async def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll a blocking predicate (in a thread) until it holds."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("frames_per_second", [1000, 0])
async def test_scratch_flooder_is_slowed_down_not_dropped_and_others_are_served(
    make_server, frames_per_second
):
    """A Scratch client over its message rate gets every set applied, later; others meanwhile."""
    server = make_server(server={"max_frames_per_second": frames_per_second},
                         scratch={"messages_per_second": 400, "message_burst": 40})
    flooder = await RawClient.open(server.url)
    watcher = await RawClient.open(server.url)
    alice = await RawClient.open(server.url)
    bob = await RawClient.open(server.url)
    try:
        await flooder.handshake("flood-room", "flooder")
        await watcher.handshake("flood-room", "watcher")
        await alice.handshake("quiet-room", "alice")
        await bob.handshake("quiet-room", "bob")
        await flooder.send_raw(set_frames("☁ n", range(2000)))  # 5 s of its budget at once

        await alice.set_var("☁ hi", "1")
        assert await bob.recv_sets() == [{"method": "set", "name": "☁ hi", "value": "1"}]
        # Bob was served while the flood was still being read: the flooder's sets arrive
        # spread out, in order, and none is lost.
        seen = []
        while not seen or seen[-1] != 1999:
            seen += [int(line["value"]) for line in await watcher.recv_sets()]
            if len(seen) == 1:
                assert seen[0] < 1999, "the whole flood was read at once"
        assert seen == sorted(seen)
        assert await flooder.is_open()
    finally:
        for client in (flooder, watcher, alice, bob):
            await client.abort()


async def test_cl4_flooder_is_closed_with_1008_and_bystander_keeps_working(make_server):
    """A CL4 client that keeps sending past its rate limit is closed 1008; others carry on."""
    server = make_server()
    bystander = await Cl4.open(server.url, "bystander")
    await bystander.handshake()
    flooder = await RawClient.open(server.url)
    try:
        await flooder.send_text(CL4_HELLO)
        gmsg = build_frame(OP_TEXT, json.dumps({"cmd": "gmsg", "val": "spam"}))
        await flooder.send_raw(gmsg * 2000)
        closed = await flooder.expect_close(timeout=10)
        assert closed.code == 1008
        replies = [json.loads(text) for text in closed.messages]
        assert any(reply.get("code") == "E:116 | Rate limited" for reply in replies)
        await flooder.send_raw(gmsg * 100)  # what it sends after the close is not answered

        await bystander.send({"cmd": "gmsg", "val": "still here"})
        await bystander.recv_until(lambda m: m.get("val") == "still here", timeout=10)
    finally:
        await flooder.abort()
        await bystander.close()
    assert "Traceback" not in server.log()


async def test_client_that_never_answers_our_close_is_dropped_after_close_timeout(make_server):
    """The server ends TCP close_timeout after its close frame if the client does not answer."""
    server = make_server(server={"close_timeout": 0.5})
    client = await RawClient.open(server.url)
    try:
        await client.send_text("not json")  # the server closes with 4000
        frame = await client.recv_message()
        assert frame.opcode == 0x8
        assert await client.wait_eof(timeout=4.0)  # without answering: dropped
    finally:
        await client.abort()


async def test_cl4_client_closed_for_unsent_bytes_is_dropped_after_close_timeout(make_server):
    """A CL4 client closed for not reading loses its TCP connection close_timeout later."""
    server = make_server(server={"close_timeout": 0.5, "write_buffer_high": 4096},
                         cl4={"max_queue_bytes": 65536})
    sleeper = await RawClient.open(server.url, rcvbuf=4096, read_limit=1024)
    sender = await RawClient.open(server.url)  # reads everything it is sent
    try:
        await sleeper.send_text(CL4_HELLO)
        await sender.send_text(CL4_HELLO)
        await wait_until(lambda: open_connections(server.http_url) == 3, 5, "both connected")
        # Within the rate limit; each is queued for the sleeper too, more than the kernel holds.
        gmsg = build_frame(OP_TEXT, json.dumps({"cmd": "gmsg", "val": "x" * 100_000}))
        await sender.send_raw(gmsg * 90)
        # The sleeper never reads, so it cannot answer the 1013 close: it is dropped anyway.
        await wait_until(lambda: open_connections(server.http_url) == 2, 4, "sleeper dropped")
        assert "disconnecting CL4 client" in server.log()
    finally:
        await sleeper.abort()
        await sender.abort()
