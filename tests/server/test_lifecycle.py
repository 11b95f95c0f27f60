"""Server lifecycle: persistence across restarts, graceful signals, idle rooms leaving memory."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    fresh_room,
    joined,
    recv,
    recv_until,
    rooms_in_memory,
    set_line,
    set_text,
    ws_connect,
)

# (message sent, line expected back in the dump): numbers stay numbers, strings stay strings.
TYPED_VALUES = [
    (set_text("☁ number", 5), '{"method":"set","name":"☁ number","value":5}'),
    (set_text("☁ string", "5"), '{"method":"set","name":"☁ string","value":"5"}'),
    ('{"method":"set","name":"☁ float","value":-2.50}',
     '{"method":"set","name":"☁ float","value":-2.5}'),
    ('{"method":"set","name":"☁ big","value":1e21}',
     '{"method":"set","name":"☁ big","value":1e+21}'),
    (set_text("☁ odd", "-00.50"), '{"method":"set","name":"☁ odd","value":"-00.50"}'),
    (set_text("☁ empty", ""), '{"method":"set","name":"☁ empty","value":""}'),
    ('{"method":"set","value":"8"}', '{"method":"set","value":"8"}'),
    ('{"method":"set","name":12,"value":"3"}', '{"method":"set","name":12,"value":"3"}'),
]


async def wait_for(predicate, timeout: float, interval: float = 0.1) -> None:
    """Poll a blocking predicate (run in a thread) until it is true."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def fill_room(url: str, room: str) -> None:
    """Set every TYPED_VALUES variable in `room` (plus an overwrite), then leave."""
    a = await joined(url, room, "player1")
    b = await joined(url, room, "player2")
    for text, _ in TYPED_VALUES:
        await a.send(text)
    await a.send(set_text("☁ string", "5"))  # an overwrite keeps the first position
    await recv_until(b, lambda got: set_line("☁ string", "5") in got and len(got) >= 2)
    await close_all(a, b)


async def test_values_survive_restart_with_sqlite(make_server, room):
    """After a SIGTERM and a restart, a new client gets the same dump, types and order kept."""
    srv = make_server()
    await fill_room(srv.url, room)
    writer = await joined(srv.url, room, "player3")  # still connected at shutdown
    await recv(writer)
    await writer.send(set_text("☁ last", "1"))  # written just before the signal
    await asyncio.sleep(0.05)
    assert await asyncio.to_thread(srv.stop, signal.SIGTERM) == 0
    await asyncio.to_thread(srv.start)
    c = await joined(srv.url, room, "player4")
    expected = [line for _, line in TYPED_VALUES] + [set_line("☁ last", "1")]
    assert str(await recv(c)).split("\n") == expected
    await expect_nothing(c)
    await c.close()


async def test_memory_store_forgets_on_restart(make_server, room):
    """With the memory store, a restarted server has no variables."""
    srv = make_server(store={"backend": "memory"})
    await fill_room(srv.url, room)
    await asyncio.to_thread(srv.restart)
    c = await joined(srv.url, room, "player3")
    await expect_nothing(c)
    await c.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_clients_with_1001_and_exits_0(make_server, room, sig):
    """SIGTERM or SIGINT closes every client with 1001 and the process exits 0 promptly."""
    srv = make_server()
    members = [await joined(srv.url, room, f"player{i}") for i in range(3)]
    idle = await ws_connect(srv.url)  # upgraded but no handshake yet
    await asyncio.sleep(0.1)
    start = time.monotonic()
    srv.proc.send_signal(sig)
    await asyncio.gather(*(expect_close(ws, 1001, timeout=5) for ws in [*members, idle]))
    code = await asyncio.to_thread(srv.proc.wait, 10)
    assert code == 0
    assert time.monotonic() - start < 5


async def test_idle_room_leaves_memory_and_comes_back(make_server, room):
    """An empty room leaves memory after room_idle_timeout; joining again brings its values."""
    srv = make_server(store={"room_idle_timeout": 0.3, "flush_interval": 0.05})
    await fill_room(srv.url, room)
    await wait_for(lambda: rooms_in_memory(srv.http_url) == 0, timeout=5)
    c = await joined(srv.url, room, "player3")
    assert str(await recv(c)).split("\n") == [line for _, line in TYPED_VALUES]
    assert rooms_in_memory(srv.http_url) == 1
    await c.close()


async def test_occupied_room_stays_in_memory(make_server, room):
    """A room with a member never leaves memory, however long it is idle."""
    srv = make_server(store={"room_idle_timeout": 0.3, "flush_interval": 0.05})
    a = await joined(srv.url, room, "player1")
    await a.send(set_text("☁ x", "1"))
    await asyncio.sleep(1.6)  # the janitor runs every second here
    assert rooms_in_memory(srv.http_url) == 1
    b = await joined(srv.url, room, "player2")
    assert await recv(b) == set_line("☁ x", "1")
    await close_all(a, b)


async def test_room_limit_counts_resident_rooms_only(make_server):
    """A stored room that left memory does not count towards max_rooms until it is rejoined."""
    srv = make_server(scratch={"max_rooms": 2},
                      store={"room_idle_timeout": 0.3, "flush_interval": 0.05})
    stored = fresh_room()
    await fill_room(srv.url, stored)
    await wait_for(lambda: rooms_in_memory(srv.http_url) == 0, timeout=5)
    # Two new rooms fit, although three rooms now have data.
    y = await joined(srv.url, fresh_room(), "player1")
    z = await joined(srv.url, fresh_room(), "player2")
    await asyncio.gather(expect_nothing(y), expect_nothing(z))
    # Bringing the stored room back would make a third resident room.
    refused = await joined(srv.url, stored, "player3")
    await expect_close(refused, 4003)
    await close_all(y, z)
    await wait_for(lambda: rooms_in_memory(srv.http_url) == 0, timeout=5)
    back = await joined(srv.url, stored, "player4")
    assert str(await recv(back)).split("\n") == [line for _, line in TYPED_VALUES]
    await back.close()
