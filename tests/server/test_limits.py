"""Limits on connections and rooms: open files, connections per address, empty rooms kept."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conformance.helpers import rooms_in_memory
from tests.server.rawclient import RawClient


async def upgrade_status(url: str,
                         headers: list[tuple[str, str]] | None = None) -> tuple[int, RawClient]:
    """Open a connection and return (HTTP status of the upgrade, the client)."""
    client = await RawClient.open(url, headers=headers, check=False)
    return client.response.status, client


async def eventually_upgrades(url: str, timeout: float = 5.0) -> RawClient:
    """A client whose upgrade succeeded, retrying while the server still refuses."""
    deadline = time.monotonic() + timeout
    while True:
        status, client = await upgrade_status(url)
        if status == 101:
            return client
        await client.abort()
        if time.monotonic() > deadline:
            raise AssertionError(f"still refused with {status} after {timeout} s")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
async def test_connections_past_the_open_file_limit_get_503_and_recover(make_server, event_loop):
    """Past the fd-derived limit new clients get HTTP 503, logged once; closing frees room."""
    # 100 files less 40 reserved: 60 connections. Without the limit the 61st accept would run
    # into EMFILE as the server's own files fill the rest: uvloop then resets the clients
    # waiting to be accepted, asyncio logs a traceback per attempt.
    server = make_server(open_files=100, server={"reserved_fds": 40, "event_loop": event_loop,
                                                 "max_connections_per_ip": 0})
    clients = []
    statuses = []
    try:
        for _ in range(66):
            status, client = await upgrade_status(server.url)
            statuses.append(status)
            clients.append(client)
        assert statuses.count(101) == 60
        assert statuses[60:] == [503] * 6
        assert server.log().count("connection limit reached") == 1
        assert "Too many open files" not in server.log()

        for client in clients[:10]:
            await client.abort()
        clients.append(await eventually_upgrades(server.url))
        assert await clients[-1].is_open()
        assert await clients[11].is_open()  # those that stayed were never disturbed
    finally:
        for client in clients:
            await client.abort()


async def test_connections_per_address_are_limited_with_429(make_server):
    """One address gets max_connections_per_ip connections; more get 429 until one closes."""
    server = make_server(server={"max_connections_per_ip": 3})
    clients = []
    try:
        for _ in range(3):
            status, client = await upgrade_status(server.url)
            clients.append(client)
            assert status == 101
        status, refused = await upgrade_status(server.url)
        clients.append(refused)
        assert status == 429
        await clients[0].abort()
        clients.append(await eventually_upgrades(server.url))
    finally:
        for client in clients:
            await client.abort()


async def test_connections_per_address_count_the_forwarded_client(make_server):
    """Behind a trusted proxy, the limit applies to each forwarded client address."""
    server = make_server(server={"max_connections_per_ip": 2, "trusted_proxies": ["127.0.0.1"]})
    first = [("X-Forwarded-For", "203.0.113.7")]
    second = [("X-Forwarded-For", "203.0.113.8")]
    clients = []
    try:
        statuses = []
        for headers in (first, first, first, second):
            status, client = await upgrade_status(server.url, headers)
            statuses.append(status)
            clients.append(client)
        assert statuses == [101, 101, 429, 101]
    finally:
        for client in clients:
            await client.abort()


async def test_oldest_empty_rooms_leave_memory_past_max_idle_rooms(make_server):
    """Past max_idle_rooms the oldest empty rooms leave memory; their values stay stored."""
    server = make_server(store={"max_idle_rooms": 5, "flush_interval": 0.05})
    for index in range(20):
        client = await RawClient.open(server.url)
        await client.handshake(f"fuzz-{index}")
        await client.set_var("☁ v", str(index))
        await client.close()
    await asyncio.sleep(0.3)  # the last writes reach the store
    client = await RawClient.open(server.url)
    await client.handshake("one-more")
    await client.close()  # its leaving evicts what was still being written before

    deadline = time.monotonic() + 5
    while (count := await asyncio.to_thread(rooms_in_memory, server.http_url)) > 5:
        assert time.monotonic() < deadline, f"{count} rooms in memory"
        await asyncio.sleep(0.05)
    assert count == 5

    client = await RawClient.open(server.url)
    try:
        await client.handshake("fuzz-0")  # evicted long ago: loaded from the store
        assert await client.recv_sets() == [{"method": "set", "name": "☁ v", "value": "0"}]
    finally:
        await client.abort()


async def test_connections_that_never_send_a_request_cannot_eat_the_fd_reserve(make_server):
    """Silent connections far past the limit are dropped at once; the server then recovers."""
    server = make_server(open_files=100, server={"reserved_fds": 40})  # 60, dropped past 80
    silent = [await RawClient.connect_tcp(server.url) for _ in range(90)]
    try:
        dropped = 0
        for client in silent:
            dropped += await client.wait_eof(timeout=0.05)
        assert dropped >= 9
        for client in silent:
            await client.abort()
        client = await eventually_upgrades(server.url)
        await client.abort()
        assert server.log().count("connection limit reached") == 1
        assert "Too many open files" not in server.log()
    finally:
        for client in silent:
            await client.abort()
