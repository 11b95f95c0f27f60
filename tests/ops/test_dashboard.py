"""The live dashboard (ops/dashboard.py, ops/dashboard.html): its figures over real HTTP, and
the page itself in headless Chromium against a real server with real websocket clients."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from pathlib import Path

import pytest

from ops.admin import Counters
from ops.dashboard import (
    MAX_SAMPLES,
    NONCE_MARK,
    STATS_PATH,
    STATUS_MARK,
    VERSION_MARK,
    Dashboard,
    Sample,
    content_security_policy,
    history_columns,
    rate,
    render_template,
)
from server.__main__ import load_config
from server.config import ConfigError, HttpSection
from tests.conformance.helpers import (
    close_all,
    expect_close,
    http_get,
    joined,
    private_server,
    recv_until,
    set_text,
)
from tests.ops.api import TOKEN, call
from tests.ops.browser import Browser

SCORE = "☁ score"
# Room ids are free text: the page must show this one as text, never as markup.
HOSTILE_ROOM = '<img src=x onerror="document.title=1">'
HOSTILE_NAME = "☁ <b>bold</b>"
INTERVAL = 0.3


@pytest.fixture(scope="module")
def dash_server(tmp_path_factory):
    """One server with the dashboard sampling fast and the admin API on."""
    yield from private_server(tmp_path_factory, "dashboard-server", admin={"token": TOKEN},
                              http={"dashboard_interval": INTERVAL},
                              store={"backend": "memory"})


def stats(port: int) -> dict:
    reply = call(port, "GET", STATS_PATH, token=None)
    assert reply.status == 200, reply
    assert reply.headers["content-type"] == "application/json"
    return reply.json


async def until_stats(port: int, predicate, what: str, timeout: float = 8.0) -> dict:
    """stats.json of the server on `port` once `predicate(document)` holds (the sampler runs
    every few tenths of a second in these tests)."""
    deadline = time.monotonic() + timeout
    while True:
        document = await asyncio.to_thread(stats, port)
        if predicate(document):
            return document
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s; last {document!r}")
        await asyncio.sleep(0.05)


# Pure parts


def test_rate_is_events_per_second_between_two_readings():
    """A counter's rate is its growth over the seconds between readings, never negative."""
    assert rate(150, 100, 2.0) == 25.0
    assert rate(100, 100, 2.0) == 0.0
    assert rate(5, 10, 1.0) == 0.0  # a counter never runs backwards; guard anyway
    assert rate(10, 0, 0.0) == 0.0


def test_history_is_sent_as_columns():
    """Samples become one list per field, times rounded to milliseconds."""
    samples = [Sample(1.23456, 3, 2, 1, 0.5, 4.0), Sample(3.0, 4, 2, 2, 1.0, 8.0)]
    columns = history_columns(samples)
    assert columns == {"time": [1.235, 3.0], "connections": [3, 4], "rooms": [2, 2],
                       "active_rooms": [1, 2], "messages_per_second": [0.5, 1.0],
                       "updates_per_second": [4.0, 8.0]}


def test_policy_allows_only_the_nonce_and_the_own_origin():
    """The CSP runs only nonce-marked inline code, connects only to the page's origin."""
    policy = content_security_policy("abc")
    assert "default-src 'none'" in policy
    assert "script-src 'nonce-abc'" in policy and "style-src 'nonce-abc'" in policy
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy


def test_template_without_a_placeholder_is_refused():
    """A page file missing a placeholder stops the build with the mark's name."""
    page = f"<style nonce={NONCE_MARK}></style>{STATUS_MARK}"
    with pytest.raises(ValueError, match=VERSION_MARK):
        render_template(page, "n", "1.0")
    rendered = render_template(page + VERSION_MARK, "n<", "<1>")
    assert rendered == f"<style nonce=n<></style>{STATUS_MARK}&lt;1&gt;"


def test_ring_buffer_holds_the_window_and_no_more():
    """The sampler keeps window / interval samples, at most MAX_SAMPLES."""
    counters = Counters()
    sized = Dashboard(HttpSection(dashboard_interval=2.0, dashboard_window=900.0), True, counters)
    assert sized.samples.maxlen == 450
    tiny = Dashboard(HttpSection(dashboard_interval=0.25, dashboard_window=86_400.0), True,
                     counters)
    assert tiny.samples.maxlen == MAX_SAMPLES
    assert isinstance(tiny.samples, deque)


def test_bad_dashboard_settings_are_refused_naming_the_key():
    """An interval under 0.25 s or a window under a minute stops start-up, naming the key."""
    with pytest.raises(ConfigError, match="dashboard_interval"):
        load_config(overrides={"http": {"dashboard_interval": 0.01}})
    with pytest.raises(ConfigError, match="dashboard_window"):
        load_config(overrides={"http": {"dashboard_window": 5}})


# Over HTTP


def test_page_carries_a_strict_policy_matching_its_nonce(dash_server):
    """GET / is the dashboard; its inline script and style carry the CSP header's nonce."""
    status, headers, body = http_get(dash_server.http_url, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    policy = headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", policy).group(1)
    page = body.decode()
    assert f'<script nonce="{nonce}">' in page and f'<style nonce="{nonce}">' in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    assert re.search(r"\d+ connections, \d+ active rooms, \d+ rooms in memory\.", page)


def test_nonce_is_new_at_every_start(make_server):
    """Two server starts use two different nonces."""
    nonces = set()
    for _ in range(2):
        srv = make_server(store={"backend": "memory"})
        _, headers, _ = http_get(srv.http_url, "/")
        nonces.add(headers["content-security-policy"])
        srv.stop()
    assert len(nonces) == 2


async def test_stats_are_public_aggregates_that_follow_the_clients(dash_server, room):
    """stats.json needs no token, counts new clients, and names no client."""
    before = (await asyncio.to_thread(stats, dash_server.port))["connections"]["total"]
    clients = [await joined(dash_server.url, room, f"secretuser{index}") for index in range(3)]
    try:
        for ws in clients:
            await ws.send(set_text(SCORE, "7"))
        document = await until_stats(
            dash_server.port,
            lambda d: any(r["id"] == room and r["clients"] == 3 for r in d["busiest_rooms"]),
            "the room with 3 clients among the busiest")
        assert document["connections"]["total"] >= before + 3
        assert document["connections"]["scratch"] >= 3
        history = document["history"]
        assert len(history["time"]) >= 2 and history["time"] == sorted(history["time"])
        assert history["connections"][-1] == document["connections"]["total"]
        assert set(history) == {"time", "connections", "rooms", "active_rooms",
                                "messages_per_second", "updates_per_second"}
        assert document["interval_seconds"] == INTERVAL and document["version"]
        assert list(document) == [  # one process: the shape it always had, nothing of a cluster
            "version", "uptime_seconds", "connections", "rooms", "messages_received",
            "updates_delivered", "frames_sent", "busiest_rooms", "sampled_at",
            "interval_seconds", "window_seconds", "messages_per_second", "updates_per_second",
            "history"]
        text = json.dumps(document)
        assert "secretuser" not in text and "127.0.0.1" not in text
    finally:
        await close_all(*clients)


async def test_messages_are_counted_once_for_the_api_and_the_dashboard(make_server, room):
    """With both the admin API and the dashboard on, each message is counted one time."""
    srv = make_server(admin={"token": TOKEN}, http={"dashboard_interval": INTERVAL},
                      store={"backend": "memory"})
    ws = await joined(srv.url, room)
    try:
        for value in range(5):
            await ws.send(set_text(SCORE, str(value)))
        document = await until_stats(srv.port, lambda d: d["messages_received"] >= 6,
                                     "6 messages counted")
        await asyncio.sleep(INTERVAL * 2)
        assert (await asyncio.to_thread(stats, srv.port))["messages_received"] == 6
        assert call(srv.port, "GET", "/api/v1/stats").json["messages_received"] == 6
        rates = document["history"]["messages_per_second"]
        assert any(value > 0 for value in rates)
    finally:
        await ws.close()


def test_dashboard_off_serves_the_plain_status_page(make_server):
    """[http] dashboard = false: "/" is the plain status page and stats.json is 404."""
    srv = make_server(http={"dashboard": False}, store={"backend": "memory"})
    status, headers, body = http_get(srv.http_url, "/")
    assert status == 200 and b"Stratus cloud-variable server" in body
    assert "content-security-policy" not in headers
    assert http_get(srv.http_url, STATS_PATH)[0] == 404


def test_status_page_off_turns_the_dashboard_off_too(make_server):
    """[server] status_page = false: nothing at "/" and no stats.json."""
    srv = make_server(server={"status_page": False}, store={"backend": "memory"})
    assert http_get(srv.http_url, "/")[0] == 404
    assert http_get(srv.http_url, STATS_PATH)[0] == 404


# In a real browser


async def until_number(browser: Browser, selector: str, predicate, timeout: float = 10.0) -> int:
    """The number `selector` shows once `predicate(number)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        text = await browser.text(selector)
        if text and text.isdigit() and predicate(int(text)):
            return int(text)
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} reads {text!r}, not the expected number")
        await asyncio.sleep(0.1)


def saw_42(lines: list[str]) -> bool:
    return any('"42"' in line for line in lines)


async def test_page_loads_without_errors_and_follows_connections(dash_server, room, tmp_path):
    """The page loads cleanly, draws its figures, and its connection count rises as clients
    join; a hostile room id shows as text."""
    # Clients of earlier tests are gone first, so only plain HTTP requests may be counted.
    await until_stats(dash_server.port, lambda d: d["connections"].get("scratch", 0) == 0,
                      "earlier clients gone")
    async with Browser(tmp_path) as browser:
        answer = await browser.goto(dash_server.http_url + "/")
        assert answer["status"] == 200
        first = int(await browser.wait_text("#connections-now", r"^\d+$"))
        assert first <= 2  # this page's own requests, at most
        assert await browser.wait_text("#version", r"^\d+\.\d+") == stats(dash_server.port)[
            "version"]
        await browser.wait_text("#uptime", r"\d+ (s|min|h|d)")
        assert not await browser.text("#nodes")  # one process: no node count
        clients = [await joined(dash_server.url, room) for _ in range(4)]
        hostile = await joined(dash_server.url, HOSTILE_ROOM)
        try:
            await until_number(browser, "#connections-now", lambda now: now >= 5)
            await browser.wait_text("#busiest", re.escape(room))
            text = await browser.wait_text("#busiest", re.escape(HOSTILE_ROOM))
            assert HOSTILE_ROOM in text
            assert await browser.text("#busiest img") is None  # shown, never parsed
            assert await browser.problems() == []
        finally:
            await close_all(*clients, hostile)


async def test_admin_actions_in_the_page_reach_websocket_clients(dash_server, room, tmp_path):
    """With the token entered, editing a variable in the inspector reaches a Scratch client,
    and kicking one closes it with 4002."""
    watcher = await joined(dash_server.url, room, "watcher")
    target = await joined(dash_server.url, room, "kickme")
    try:
        await watcher.send(set_text(SCORE, "1"))
        await watcher.send(set_text(HOSTILE_NAME, "2"))
        async with Browser(tmp_path) as browser:
            await browser.goto(dash_server.http_url + "/")
            await browser.type("#token-input", TOKEN)
            await browser.click("#token-save")
            await browser.wait_text("#admin-message", "Token accepted")
            await browser.click(f'#room-list button.inspect[data-room="{room}"]')
            await browser.wait_text("#members", "kickme")
            variables = await browser.wait_text("#variables", re.escape(HOSTILE_NAME))
            assert HOSTILE_NAME in variables
            assert await browser.text("#variables b") is None

            row = f'#variables tr[data-variable="{SCORE}"]'
            await browser.type(f"{row} input", "42", replace=True)
            await browser.click(f"{row} button.save")
            lines = await recv_until(watcher, saw_42)
            assert {"method": "set", "name": SCORE, "value": "42"} in map(json.loads, lines)
            await recv_until(target, saw_42)
            await browser.wait_text("#admin-message", "done")

            members = call(dash_server.port, "GET", f"/api/v1/rooms/scratch/{room}").json
            [kicked] = [m for m in members["members"] if m["username"] == "kickme"]
            await browser.click(f'#members tr[data-client="{kicked["client_id"]}"] button.kick')
            await expect_close(target, 4002, timeout=5)
            await browser.wait_text("#admin-message", "Kicking kickme.*done")
            await browser.wait_text("#members", r"^(?!.*kickme).*watcher")
            await browser.screenshot(tmp_path / "inspector.png")  # to look at by hand
            assert await browser.problems() == []
    finally:
        await close_all(watcher, target)


async def test_page_does_not_render_blank(dash_server, room, tmp_path):
    """A screenshot of the page has varied pixels and its key parts have a size."""
    clients = [await joined(dash_server.url, room) for _ in range(3)]
    try:
        await until_stats(dash_server.port,
                          lambda d: len(d["history"]["time"]) >= 5, "five samples")
        async with Browser(tmp_path) as browser:
            await browser.goto(dash_server.http_url + "/")
            await browser.wait_text("#busiest", re.escape(room))
            for selector in ("header", "#connections-now", "#chart-connections", "#chart-updates",
                             "#busiest", "#token-input"):
                box = await browser.box(selector)
                assert box and box["width"] > 0 and box["height"] > 0, (selector, box)
            shot = await browser.screenshot(tmp_path / "dashboard.png")
            assert Path(shot).stat().st_size > 10_000
            picture = await browser.image_stats(shot)
            assert picture["width"] >= 1000 and picture["height"] >= 600
            assert picture["colors"] > 50, picture  # text, charts, cards: many colours
            assert picture["dominant"] < 0.9, picture  # not one flat colour
            assert await browser.problems() == []
    finally:
        await close_all(*clients)


async def test_delete_block_and_unblock_from_the_page(dash_server, room, tmp_path):
    """Deleting a variable, blocking the project (its client gets 4004) and unblocking it
    again, all from the page, take effect on the server."""
    player = await joined(dash_server.url, room, "player")
    try:
        await player.send(set_text(SCORE, "5"))
        await until_stats(dash_server.port, lambda d: any(
            r["id"] == room and r["variables"] == 1 for r in d["busiest_rooms"]), "the variable")
        async with Browser(tmp_path) as browser:
            await browser.goto(dash_server.http_url + "/")
            await browser.type("#token-input", TOKEN)
            await browser.click("#token-save")
            await browser.click(f'#room-list button.inspect[data-room="{room}"]')
            await browser.click(f'#variables tr[data-variable="{SCORE}"] button.delete')
            await browser.wait_text("#variables", "No variables")
            room_path = f"/api/v1/rooms/scratch/{room}"
            assert call(dash_server.port, "GET", room_path).json["variables"] == {}

            await browser.click("#inspector-block")
            await expect_close(player, 4004, timeout=5)
            await browser.wait_text("#inspector-blocked", "^blocked$")
            await browser.wait_text("#blocked-list", re.escape(room))
            assert call(dash_server.port, "GET", f"/api/v1/blocked-projects/{room}").status == 200

            await browser.click(f'#blocked-list tr[data-project="{room}"] button.unblock')
            await browser.wait_text("#blocked-list", "No project is blocked")
            assert call(dash_server.port, "GET", f"/api/v1/blocked-projects/{room}").status == 404
            assert await browser.problems() == []
    finally:
        await player.close()


async def test_inspector_shows_and_kicks_members_of_every_node(redis_server, make_redis_node,
                                                               room, tmp_path):
    """On a cluster, the page served by node A counts both nodes' clients and says "2 nodes",
    lists a room whose members are on both nodes, shows each member's node, and kicks a client
    of node B."""
    nodes = [make_redis_node(redis_server, admin={"token": TOKEN}, cluster={"node_id": name},
                             http={"dashboard_interval": INTERVAL})
             for name in ("node-a", "node-b")]
    near = await joined(nodes[0].url, room, "near")
    far = await joined(nodes[1].url, room, "far")
    try:
        async with Browser(tmp_path) as browser:
            await browser.goto(nodes[0].http_url + "/")
            await browser.wait_text("#nodes", "^2 nodes$")
            await until_number(browser, "#connections-now", lambda now: now >= 2)
            await browser.type("#token-input", TOKEN)
            await browser.click("#token-save")
            await browser.wait_text("#admin-message", "Token accepted")
            await browser.click(f'#room-list button.inspect[data-room="{room}"]')
            await browser.wait_text("#members", "near.*node-a")
            await browser.wait_text("#members", "far.*node-b")
            detail = call(nodes[0].port, "GET", f"/api/v1/rooms/scratch/{room}").json
            [remote] = [m for m in detail["members"] if m["username"] == "far"]
            await browser.click(f'#members tr[data-client="{remote["client_id"]}"] button.kick')
            await expect_close(far, 4002, timeout=5)
            await browser.wait_text("#admin-message", "Kicking far.*done")
            assert await browser.problems() == []
    finally:
        await close_all(near, far)
