"""The admin API (ops/admin.py) through real HTTP on 127.0.0.1, with real websocket clients."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from urllib.parse import quote

import pytest
from websockets.datastructures import Headers

from ops.admin import (
    MAX_COUNTED_ROOMS,
    Counters,
    FailureTracker,
    bearer_token,
    iso_time,
    merge_rooms,
    page_bounds,
)
from server.events import EventBus
from server.routes import HttpRequest
from tests.conformance.cl4_client import close_all, drain, identified
from tests.conformance.helpers import (
    expect_close,
    joined,
    private_server,
    recv,
    recv_until,
    set_text,
)
from tests.ops.api import TOKEN, call

SCORE = "☁ score"
SCORE_PATH = quote(SCORE, safe="")


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory):
    """One server with the admin API on, shared by this module's tests."""
    yield from private_server(tmp_path_factory, "admin-server", admin={"token": TOKEN},
                              http={"max_body_bytes": 4096})


def variable_path(room: str, name: str = SCORE) -> str:
    return f"/api/v1/rooms/scratch/{quote(room, safe='')}/variables/{quote(name, safe='')}"


def members_of(port: int, room: str) -> list[dict]:
    reply = call(port, "GET", f"/api/v1/rooms/scratch/{room}")
    assert reply.status == 200, reply
    return reply.json["members"]


async def until_members(port: int, room: str, count: int) -> list[dict]:
    """The room's members once `count` have joined (a join waits for the room's load)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reply = call(port, "GET", f"/api/v1/rooms/scratch/{room}")
        if reply.status == 200 and len(reply.json["members"]) == count:
            return reply.json["members"]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{room} never had {count} members")


# Turned on by a token, guarded by it

def test_without_a_token_the_api_answers_404(server):
    """A server with no admin token serves none of the admin routes."""
    for method, path in (("GET", "/api/v1/rooms"), ("GET", "/api/v1/stats"),
                         ("POST", "/api/v1/clients/1/kick")):
        assert call(server.port, method, path).status == 404


def test_token_from_the_environment_turns_the_api_on(make_server, monkeypatch):
    """STRATUS_ADMIN_TOKEN alone enables the API, and wins over [admin] token."""
    monkeypatch.setenv("STRATUS_ADMIN_TOKEN", "from-environment")
    srv = make_server(admin={"token": "from-file"}, store={"backend": "memory"})
    assert call(srv.port, "GET", "/api/v1/stats", token="from-environment").status == 200
    assert call(srv.port, "GET", "/api/v1/stats", token="from-file").status == 401


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer"},
    {"Authorization": f"Bearer {TOKEN}x"},
])
def test_missing_or_wrong_token_is_401(admin_server, headers):
    """Without exactly the configured bearer token a call gets 401 with WWW-Authenticate."""
    reply = call(admin_server.port, "GET", "/api/v1/stats", token=None, headers=headers)
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert reply.json == {"error": "a valid admin token is required"}


def test_repeated_failures_are_slowed_without_blocking_the_server(make_server):
    """After free_failures wrong tokens one address waits for its 401s; others are served."""
    srv = make_server(admin={"token": TOKEN, "free_failures": 1, "max_failure_delay": 1.0},
                      store={"backend": "memory"})
    started = time.monotonic()
    assert call(srv.port, "GET", "/api/v1/stats", token="bad").status == 401
    assert time.monotonic() - started < 0.2
    timings = []
    for _ in range(3):
        started = time.monotonic()
        assert call(srv.port, "GET", "/api/v1/stats", token="bad").status == 401
        timings.append(time.monotonic() - started)
    assert timings[0] >= 0.2 and timings[2] >= 0.9, timings
    # While a failure waits, the loop serves everyone else at once.
    slow = threading.Thread(target=call, args=(srv.port, "GET", "/api/v1/stats"),
                            kwargs={"token": "bad"})
    slow.start()
    time.sleep(0.1)
    started = time.monotonic()
    assert call(srv.port, "GET", "/healthz", token=None).status == 200
    assert time.monotonic() - started < 0.3
    slow.join()
    # The right token is answered at once and clears the count.
    started = time.monotonic()
    assert call(srv.port, "GET", "/api/v1/stats").status == 200
    assert call(srv.port, "GET", "/api/v1/stats", token="bad").status == 401
    assert time.monotonic() - started < 0.3
    assert "wrong token from 127.0.0.1" in srv.log()


# Rooms

async def test_put_reaches_a_connected_scratch_client(admin_server, room):
    """A PUT of a variable is sent to the room's clients and shown by GET of the room."""
    ws = await joined(admin_server.url, room, "watcher1")
    try:
        reply = call(admin_server.port, "PUT", variable_path(room), {"value": "42"})
        assert reply.status == 200, reply
        assert reply.json == {"protocol": "scratch", "id": room, "name": SCORE, "value": "42"}
        assert await recv(ws) == set_text(SCORE, "42")
        detail = call(admin_server.port, "GET", f"/api/v1/rooms/scratch/{room}").json
        assert detail["variables"] == {SCORE: "42"}
        [member] = detail["members"]
        assert member["username"] == "watcher1" and member["protocol"] == "scratch"
        assert member["address"] == "127.0.0.1" and isinstance(member["client_id"], int)
        assert member["connected_since"].endswith("Z")
    finally:
        await ws.close()
    assert f"PUT {variable_path(room)} from 127.0.0.1: 200" in admin_server.log()


async def test_put_is_validated_like_a_clients_set(admin_server, room):
    """Values a client could not set are refused with 400 and a reason; nothing is sent."""
    ws = await joined(admin_server.url, room)
    try:
        for value in ("not a number", True, None, [1], {"a": 1}, "1" * 100_001):
            reply = call(admin_server.port, "PUT", variable_path(room), {"value": value})
            assert reply.status in (400, 413), (value, reply)
        reply = call(admin_server.port, "PUT", variable_path(room), {"value": "abc"})
        assert "numeric" in reply.json["error"]
        assert call(admin_server.port, "PUT", variable_path(room), {"value": -1.5}).status == 200
        assert await recv(ws) == set_text(SCORE, -1.5)
    finally:
        await ws.close()


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "JSON object"),
    (b'{"val": 1}', '"value"'),
    (b"", '"value"'),
])
def test_bad_bodies_get_400_with_a_message(admin_server, room, raw, message):
    """A PUT body that is not a JSON object with a value is 400, saying what is wrong."""
    reply = call(admin_server.port, "PUT", variable_path(room), raw=raw)
    assert reply.status == 400 and message in reply.json["error"], reply


def test_body_over_the_limit_is_413(admin_server, room):
    """A body over [http] max_body_bytes is answered 413 (announced or chunked)."""
    reply = call(admin_server.port, "PUT", variable_path(room), {"value": "1" * 5000})
    assert reply.status == 413
    chunks = iter([b'{"value": "', b"1" * 3000, b"1" * 3000, b'"}'])
    reply = call(admin_server.port, "PUT", variable_path(room), raw=chunks,
                 headers={"Transfer-Encoding": "chunked"})
    assert reply.status == 413


def test_delete_of_one_variable(admin_server, room):
    """DELETE of a variable removes it; a second DELETE or an unknown room is 404."""
    assert call(admin_server.port, "PUT", variable_path(room), {"value": 1}).status == 200
    other = variable_path(room, "☁ other")
    assert call(admin_server.port, "PUT", other, {"value": 2}).status == 200
    assert call(admin_server.port, "DELETE", variable_path(room)).status == 200
    detail = call(admin_server.port, "GET", f"/api/v1/rooms/scratch/{room}").json
    assert detail["variables"] == {"☁ other": 2}
    assert call(admin_server.port, "DELETE", variable_path(room)).status == 404
    assert call(admin_server.port, "DELETE", variable_path(room + "-none")).status == 404


async def test_delete_of_a_room_closes_its_clients_with_4000(admin_server, room):
    """DELETE of a room closes its clients with 4000 and deletes every variable."""
    assert call(admin_server.port, "PUT", variable_path(room), {"value": 7}).status == 200
    await asyncio.sleep(0.2)  # the write's own batch is out before anyone joins
    ws = await joined(admin_server.url, room)
    assert await recv(ws) == set_text(SCORE, 7)  # the dump
    reply = call(admin_server.port, "DELETE", f"/api/v1/rooms/scratch/{room}")
    assert reply.status == 200, reply
    assert reply.json["clients_closed"] == 1 and reply.json["variables_deleted"] == 1
    await expect_close(ws, 4000)
    rejoined = await joined(admin_server.url, room)
    try:
        detail = call(admin_server.port, "GET", f"/api/v1/rooms/scratch/{room}").json
        assert detail["variables"] == {}
    finally:
        await rejoined.close()
    assert call(admin_server.port, "DELETE", f"/api/v1/rooms/scratch/{room}-none").status == 404


def test_rooms_are_listed_in_pages(admin_server):
    """GET /rooms lists rooms sorted by id with counts, paged by limit and offset."""
    prefix = f"page-{time.monotonic_ns()}"
    for index in range(3):
        path = variable_path(f"{prefix}-{index}")
        assert call(admin_server.port, "PUT", path, {"value": index}).status == 200
    everything = call(admin_server.port, "GET", "/api/v1/rooms?limit=1000").json["rooms"]
    mine = [room for room in everything if room["id"].startswith(prefix)]
    assert mine == [{"protocol": "scratch", "id": f"{prefix}-{i}", "clients": 0, "variables": 1}
                    for i in range(3)]
    start = everything.index(mine[0])
    page = call(admin_server.port, "GET", f"/api/v1/rooms?limit=2&offset={start}").json
    assert [room["id"] for room in page["rooms"]] == [f"{prefix}-0", f"{prefix}-1"]
    assert page["next_offset"] == start + 2 and page["total"] == len(everything)
    last = call(admin_server.port, "GET",
                f"/api/v1/rooms?limit=2&offset={len(everything) - 1}").json
    assert last["next_offset"] is None
    for query in ("limit=0", "limit=abc", "offset=-1", "limit=100000", "limit=1e3"):
        reply = call(admin_server.port, "GET", f"/api/v1/rooms?{query}")
        assert reply.status == 400 and "must be a whole number" in reply.json["error"], query


# Clients

async def test_kicked_client_is_closed_with_4002(admin_server, room):
    """POST /clients/{id}/kick closes a Scratch client with 4002 (TurboWarp does not retry)."""
    ws = await joined(admin_server.url, room, "kickme")
    stay = await joined(admin_server.url, room, "stayer")
    try:
        members = await until_members(admin_server.port, room, 2)
        [target] = [m for m in members if m["username"] == "kickme"]
        reply = call(admin_server.port, "POST", f"/api/v1/clients/{target['client_id']}/kick")
        assert reply.status == 200 and reply.json["close_code"] == 4002
        await expect_close(ws, 4002)
        assert [m["username"] for m in members_of(admin_server.port, room)] == ["stayer"]
        assert call(admin_server.port, "POST",
                    f"/api/v1/clients/{target['client_id']}/kick").status == 404
    finally:
        await stay.close()


async def test_kick_takes_a_close_code(admin_server, room):
    """A kick may name its close code (1000 or 3000-4999); others are refused with 400."""
    ws = await joined(admin_server.url, room)
    [target] = await until_members(admin_server.port, room, 1)
    path = f"/api/v1/clients/{target['client_id']}/kick"
    assert call(admin_server.port, "POST", path, {"code": 1011}).status == 400
    assert call(admin_server.port, "POST", path, {"code": "4004"}).status == 400
    assert call(admin_server.port, "POST", path, {"code": 4004}).status == 200
    await expect_close(ws, 4004)


def test_kick_of_a_bad_client_id_is_400(admin_server):
    """A client id that is not a whole number is 400; one nobody has is 404."""
    for client_id in ("abc", "-1", "1.5", "9" * 30):
        assert call(admin_server.port, "POST", f"/api/v1/clients/{client_id}/kick").status == 400
    assert call(admin_server.port, "POST", "/api/v1/clients/999999999/kick").status == 404


# Blocked projects

async def test_block_closes_clients_refuses_joins_and_survives_a_restart(make_server, room):
    """PUT /blocked-projects/{id} closes the room's clients with 4004, refuses new joins,
    is still in force after a restart, and DELETE lifts it."""
    srv = make_server(admin={"token": TOKEN})
    ws = await joined(srv.url, room)
    await until_members(srv.port, room, 1)
    reply = call(srv.port, "PUT", f"/api/v1/blocked-projects/{room}")
    assert reply.status == 200 and reply.json["clients_closed"] == 1
    await expect_close(ws, 4004)
    refused = await joined(srv.url, room)
    await expect_close(refused, 4004)
    assert call(srv.port, "GET", f"/api/v1/blocked-projects/{room}").status == 200
    time.sleep(1.2)  # one [store] flush_interval: the block is written
    srv.restart()
    assert call(srv.port, "GET", f"/api/v1/blocked-projects/{room}").status == 200
    assert call(srv.port, "GET", "/api/v1/blocked-projects").json == {"blocked": [room]}
    refused = await joined(srv.url, room)
    await expect_close(refused, 4004)
    assert call(srv.port, "DELETE", f"/api/v1/blocked-projects/{room}").status == 200
    assert call(srv.port, "GET", f"/api/v1/blocked-projects/{room}").status == 404
    assert call(srv.port, "DELETE", f"/api/v1/blocked-projects/{room}").status == 404
    srv.restart()
    welcome = await joined(srv.url, room)
    try:
        await until_members(srv.port, room, 1)  # joined, not refused
    finally:
        await welcome.close()
    assert f"PUT /api/v1/blocked-projects/{room} from 127.0.0.1: 200" in srv.log()


# Figures

async def test_stats_show_connections_rooms_and_traffic(admin_server, room):
    """GET /stats counts clients by protocol, messages, updates and the busiest rooms."""
    before = call(admin_server.port, "GET", "/api/v1/stats").json
    writer = await joined(admin_server.url, room, "writer")
    reader = await joined(admin_server.url, room, "reader")
    try:
        await until_members(admin_server.port, room, 2)
        await writer.send(set_text(SCORE, 1))
        await recv_until(reader, lambda lines: any(SCORE in line for line in lines))
        stats = call(admin_server.port, "GET", "/api/v1/stats").json
        assert stats["connections"]["scratch"] >= 2
        assert stats["connections"]["total"] >= stats["connections"]["scratch"]
        assert stats["messages_received"] >= before["messages_received"] + 3
        assert stats["updates_delivered"] > before["updates_delivered"]
        assert stats["rooms"]["scratch"]["active"] >= 1
        assert stats["version"] and stats["uptime_seconds"] > 0
        busiest = {entry["id"]: entry for entry in stats["busiest_rooms"]}
        assert busiest[room]["clients"] == 2 and busiest[room]["updates"] >= 1
    finally:
        await writer.close()
        await reader.close()


# Bad requests

def test_wrong_methods_are_405_with_allow(admin_server):
    """A method a path does not serve is 405 naming those it does."""
    reply = call(admin_server.port, "POST", "/api/v1/stats")
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD, OPTIONS"
    reply = call(admin_server.port, "PATCH", "/api/v1/rooms/scratch/1")
    assert reply.status == 405 and reply.headers["allow"] == "GET, HEAD, DELETE, OPTIONS"


def test_path_tricks_are_answered(admin_server, room):
    """Dot segments and bad encodings are 400, overlong ids 400, encoded slashes are part of
    the id, unknown protocols and routes 404: each with its status, never a crash."""
    port = admin_server.port
    assert call(port, "GET", "/api/v1/rooms/scratch/%2E%2E").status == 400
    assert call(port, "GET", "/api/v1/rooms/scratch/..%2Fstats").status == 404
    assert call(port, "GET", "/api/v1/rooms/scratch/%ff").status == 400
    assert call(port, "GET", "/api/v1/rooms/scratch/" + "1" * 1000).status == 400
    assert call(port, "PUT", "/api/v1/blocked-projects/" + "1" * 1000).status == 400
    assert call(port, "GET", "/api/v1/rooms/nosuch/1").status == 404
    assert call(port, "GET", "/api/v1/rooms/scratch/a/b").status == 404
    assert call(port, "PUT", variable_path("a/b"), {"value": 3}).status == 200
    assert call(port, "GET", "/api/v1/rooms/scratch/a%2Fb").json["variables"] == {SCORE: 3}
    assert call(port, "GET", "/api/v1/rooms/scratch/" + "9" * 9000).status == 414
    assert "Traceback" not in admin_server.log()


async def test_cl4_rooms_are_listed_and_shown(admin_server):
    """CL4 rooms appear in GET /rooms and GET /rooms/cl4/{id} lists their members."""
    [client] = await identified(admin_server.url, "cl4user")
    try:
        await client.send({"cmd": "link", "val": ["lobby-admin-test"], "listener": "b"})
        await drain(client)
        rooms = call(admin_server.port, "GET", "/api/v1/rooms?protocol=cl4&limit=1000").json
        assert {"protocol": "cl4", "id": "lobby-admin-test", "clients": 1, "variables": 0} \
            in rooms["rooms"]
        detail = call(admin_server.port, "GET", "/api/v1/rooms/cl4/lobby-admin-test").json
        assert [m["username"] for m in detail["members"]] == ["cl4user"]
        assert call(admin_server.port, "GET", "/api/v1/rooms/cl4/nope").status == 404
        assert call(admin_server.port, "GET", "/api/v1/rooms/cl4/" + "x" * 1001).status == 400
    finally:
        await close_all(client)


# Pure parts

def test_failure_tracker_doubles_the_delay_and_forgets():
    """Free failures cost nothing, later ones double up to the cap; success or time forgets."""
    now = [0.0]
    tracker = FailureTracker(free=2, max_delay=1.0, clock=lambda: now[0])
    delays = [tracker.failed("a") for _ in range(6)]
    assert delays == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]
    assert tracker.failed("b") == 0.0  # another address has its own count
    tracker.succeeded("a")
    assert tracker.failed("a") == 0.0
    for _ in range(3):
        tracker.failed("a")
    now[0] += 61.0  # max_delay * 60 without a failure
    assert tracker.failed("a") == 0.0


def test_bearer_token_parsing():
    """Only one Authorization header with the Bearer scheme and a token counts."""

    def token_of(*values):
        headers = Headers()
        for value in values:
            headers["Authorization"] = value
        return bearer_token(HttpRequest("/", headers))

    assert token_of("Bearer abc") == "abc"
    assert token_of("bearer  abc ") == "abc"
    assert token_of("Basic abc") is None
    assert token_of("Bearer ") is None
    assert token_of("Bearer a", "Bearer a") is None
    assert token_of() is None


def test_page_bounds_and_times():
    """Paging defaults to 100 from 0; times are ISO 8601 UTC with milliseconds."""
    assert page_bounds({}, 1000) == (0, 100)
    assert page_bounds({"limit": ["5"], "offset": ["10"]}, 1000) == (10, 5)
    assert page_bounds({}, 20) == (0, 20)
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"


def test_put_waiting_for_100_continue_is_served(admin_server, room):
    """A client that waits for 100 Continue (curl with large bodies) gets it, then its answer."""
    body = b'{"value": 12}'
    head = (f"PUT {variable_path(room)} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", admin_server.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'"value":12}\n')


def test_busiest_room_counters_stay_bounded():
    """Per-room update totals keep at most MAX_COUNTED_ROOMS rooms, the busiest ones."""
    counters = Counters()
    counters.room_flushed("scratch", "busy", 1000, 1)
    for index in range(MAX_COUNTED_ROOMS + 1):
        counters.room_flushed("scratch", f"room-{index}", 1, 1)
    assert len(counters.room_updates) <= MAX_COUNTED_ROOMS
    assert counters.room_updates[("scratch", "busy")] == 1000


def test_shared_counters_count_each_event_once():
    """Counters attached by both the admin API and the dashboard count a flush once, and
    listen to nothing per message."""
    events = EventBus()
    counters = Counters()
    counters.attach(events)
    counters.attach(events)
    events.room_flushed("scratch", "1", 3, 2)
    assert counters.room_updates == {("scratch", "1"): 3}
    assert not events.message_received


def test_room_lists_of_several_nodes_merge_into_one():
    """A room on two nodes is listed once, with its clients summed and its variables once."""
    a = [{"protocol": "scratch", "id": "1", "clients": 2, "variables": 3},
         {"protocol": "cl4", "id": "lobby", "clients": 1, "variables": 0}]
    b = [{"protocol": "scratch", "id": "1", "clients": 5, "variables": 3},
         {"protocol": "scratch", "id": "2", "clients": 1, "variables": 0}]
    merged = {(room["protocol"], room["id"]): room for room in merge_rooms([a, b])}
    assert merged == {
        ("scratch", "1"): {"protocol": "scratch", "id": "1", "clients": 7, "variables": 3},
        ("cl4", "lobby"): {"protocol": "cl4", "id": "lobby", "clients": 1, "variables": 0},
        ("scratch", "2"): {"protocol": "scratch", "id": "2", "clients": 1, "variables": 0},
    }
    assert a[0]["clients"] == 2  # the inputs are left as they were
