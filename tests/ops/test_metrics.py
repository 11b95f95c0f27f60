"""Prometheus metrics (ops/metrics.py): a real server scraped over HTTP while Scratch and CL4
clients connect, write, flood and leave; the text is parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server import __version__
from server.__main__ import build_server, default_config
from tests.conformance.cl4_client import Cl4
from tests.conformance.helpers import (
    close_all,
    expect_close,
    fresh_room,
    handshake_text,
    http_get,
    joined,
    private_server,
    recv_until,
    set_text,
    ws_connect,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def metered(tmp_path_factory):
    """A server with small rate limits, a blocked room and a fast store flush."""
    yield from private_server(
        tmp_path_factory, "metrics",
        store={"flush_interval": 0.1},
        scratch={"messages_per_second": 50, "message_burst": 10, "blocked_rooms": ["blocked"]},
        cl4={"messages_per_second": 2.0, "message_burst": 3},
    )


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_now(http_url: str) -> Samples:
    status, headers, body = http_get(http_url, "/metrics")
    assert status == 200, body
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body.decode())


async def scrape(http_url: str) -> Samples:
    """GET /metrics without blocking the test's own clients."""
    return await asyncio.to_thread(scrape_now, http_url)


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the series is absent (a counter that never moved)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(http_url: str, check: Callable[[Samples], bool],
                       timeout: float = 5.0) -> Samples:
    """Scrape until `check` holds (figures the server updates as clients come and go)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = await scrape(http_url)
        if check(samples):
            return samples
        assert time.monotonic() < deadline, "metrics did not reach the expected figures"
        await asyncio.sleep(0.05)


async def test_figures_move_with_scratch_and_cl4_traffic(metered):
    """Connections, rooms, messages, updates, frames, bytes and store writes all move."""
    url = metered.http_url
    before = await scrape_until(url, lambda s: value(s, "stratus_connections",
                                                     protocol="scratch") == 0)
    room = fresh_room()
    writer = await joined(metered.url, room, "writer")
    reader = await joined(metered.url, room, "reader")
    cl4 = await Cl4.open(metered.url, "c", quiet=False)
    await cl4.handshake()

    during = await scrape_until(url, lambda s: (
        value(s, "stratus_connections", protocol="scratch") == 2
        and value(s, "stratus_connections", protocol="cl4") == 1))
    assert value(during, "stratus_rooms", protocol="scratch") == 1
    assert value(during, "stratus_rooms", protocol="cl4") >= 1  # the default room

    for n in range(3):
        await writer.send(set_text(f"☁ v{n}", str(n)))
    await recv_until(reader, lambda lines: len(lines) >= 3)
    await cl4.send({"cmd": "gmsg", "val": "hello"})
    await cl4.recv_until(lambda message: message.get("cmd") == "gmsg")

    after = await scrape_until(url, lambda s: (
        value(s, "stratus_store_writes_total") > value(before, "stratus_store_writes_total")))

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("stratus_messages_received_total", protocol="scratch") == 2 + 3
    assert moved("stratus_messages_received_total", protocol="cl4") == 2
    assert moved("stratus_updates_delivered_total") == 3  # the reader got each set once
    frames = moved("stratus_frames_sent_total")
    assert frames >= 1 + 3  # >= one update batch, and the CL4 handshake burst and gmsg
    assert moved("stratus_bytes_sent_total") > 2 * frames
    assert moved("stratus_flush_delay_seconds_count") >= 1
    assert moved("stratus_flush_delay_seconds_sum") > 0
    assert value(after, "stratus_store_errors_total") == 0
    assert value(after, "stratus_store_healthy") == 1
    await close_all(writer, reader, cl4.ws)


async def test_closes_are_counted_by_code(metered):
    """A client's close (1000), a refusal (4004) and a dropped TCP connection ("none") count."""
    url = metered.http_url
    before = await scrape(url)
    polite = await joined(metered.url, fresh_room(), "polite")
    await polite.close()
    refused = await ws_connect(metered.url)
    await refused.send(handshake_text("blocked"))
    await expect_close(refused, 4004)
    dropped = await joined(metered.url, fresh_room(), "dropped")
    dropped.transport.abort()

    def closed(samples: Samples, code: str) -> float:
        return (value(samples, "stratus_connections_closed_total", code=code)
                - value(before, "stratus_connections_closed_total", code=code))

    after = await scrape_until(url, lambda s: closed(s, "none") >= 1)
    assert closed(after, "1000") == 1
    assert closed(after, "4004") == 1
    assert closed(after, "none") == 1


async def test_floods_count_as_rate_limited(metered):
    """A Scratch client over its read budget and a CL4 client answered E:116 are counted."""
    url = metered.http_url
    before = await scrape(url)
    flooder = await joined(metered.url, fresh_room(), "flooder")
    for n in range(200):
        await flooder.send(set_text("☁ flood", str(n)))
    cl4 = await Cl4.open(metered.url, "c", quiet=False)
    for n in range(6):
        await cl4.send({"cmd": "ping", "listener": n})
    replies = [await cl4.recv() for _ in range(6)]
    assert [reply["code_id"] for reply in replies[3:]] == [116, 116, 116]

    def limited(samples: Samples, protocol: str) -> float:
        return (value(samples, "stratus_rate_limited_total", protocol=protocol)
                - value(before, "stratus_rate_limited_total", protocol=protocol))

    after = await scrape_until(url, lambda s: limited(s, "scratch") >= 1)
    assert limited(after, "cl4") == 3
    await close_all(flooder, cl4.ws)


async def test_build_info_and_process_figures(metered):
    """The scrape names the running version and carries the process collector's figures."""
    samples = await scrape(metered.http_url)
    assert value(samples, "stratus_build_info", version=__version__) == 1
    assert value(samples, "process_cpu_seconds_total") > 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_open_fds") > 0


async def test_metrics_off_is_404(make_server):
    """With [http] metrics = false there is no /metrics page."""
    srv = make_server(http={"metrics": False})
    status, _, _ = await asyncio.to_thread(http_get, srv.http_url, "/metrics")
    assert status == 404


def in_process_config(metrics: bool = True, dashboard: bool = True):
    config = default_config()
    config.server = dataclasses.replace(config.server, host="127.0.0.1", port=0)
    config.store = dataclasses.replace(config.store, backend="memory")
    config.http = dataclasses.replace(config.http, metrics=metrics, dashboard=dashboard)
    return config


async def test_two_servers_in_one_process_keep_their_own_figures():
    """Each server has its own registry: two in one process neither clash nor share counts."""
    first, second = build_server(in_process_config()), build_server(in_process_config())
    await first.start()
    await second.start()
    try:
        client = await joined(f"ws://127.0.0.1:{first.port}", fresh_room())
        await client.send(set_text("☁ a", "1"))
        await asyncio.sleep(0.1)
        one = await scrape(f"http://127.0.0.1:{first.port}")
        two = await scrape(f"http://127.0.0.1:{second.port}")
        assert value(one, "stratus_connections", protocol="scratch") == 1
        assert value(two, "stratus_connections", protocol="scratch") == 0
        assert value(one, "stratus_messages_received_total", protocol="scratch") == 2
        assert value(two, "stratus_messages_received_total", protocol="scratch") == 0
        await client.close()
    finally:
        await first.shutdown()
        await second.shutdown()


async def test_metrics_off_listens_to_nothing():
    """With metrics and the dashboard off (and no admin token) no listener is subscribed, so
    the hot paths skip every event; on, nothing listens per message."""
    server = build_server(in_process_config(metrics=False, dashboard=False))
    assert not any(getattr(server.events, name) for name in server.events.NAMES)
    assert "/metrics" not in server.routes.paths()
    metered_server = build_server(in_process_config())
    assert metered_server.events.flush_delay and metered_server.events.rate_limited
    assert not metered_server.events.message_received  # counted per connection, not per event


async def test_head_and_scrape_of_a_fresh_server(metered):
    """A HEAD of /metrics answers 200 with no body; a GET parses as Prometheus text."""
    status, headers, body = await asyncio.to_thread(http_get, metered.http_url, "/metrics",
                                                    "HEAD")
    assert status == 200 and body == b""
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = await scrape(metered.http_url)
    buckets = [v for (name, labels), v in samples.items()
               if name == "stratus_flush_delay_seconds_bucket"]
    assert buckets == sorted(buckets)  # cumulative
    assert value(samples, "stratus_flush_delay_seconds_bucket", le="+Inf") == value(
        samples, "stratus_flush_delay_seconds_count")



async def test_store_writes_count_redis_pipelines(redis_server, make_redis_node, room):
    """With the Redis backend, accepted writes show up as store writes (what Redis took)."""
    node = make_redis_node(redis_server)
    client = await joined(node.url, room)
    try:
        await client.send(set_text("☁ a", "1"))
        samples = await scrape_until(node.http_url,
                                     lambda got: value(got, "stratus_store_writes_total") >= 1)
        assert value(samples, "stratus_store_errors_total") == 0
    finally:
        await close_all(client)
