"""GET /logs (ops/history.py): Scratch's cloud log, over real HTTP, fed by real Scratch clients.

The query parsing is pure and tested first without sockets.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

from ops.history import LogsQuery, QueryError, parse_logs_query
from tests.conformance.cl4_client import OK, identified
from tests.conformance.cl4_client import close_all as cl4_close_all
from tests.conformance.helpers import (
    close_all,
    fresh_room,
    http_get,
    joined,
    private_server,
    recv,
    set_text,
)

KEEP = 6
MAX_LIMIT = 4


# Query parsing (pure)


def test_query_defaults_and_clamps_limit():
    """limit defaults to 100 (or max_limit), is reduced to max_limit, offset defaults to 0."""
    assert parse_logs_query("/logs?projectid=42", 999, 1000) == LogsQuery("42", 100, 0)
    assert parse_logs_query("/logs?projectid=42", 999, 30) == LogsQuery("42", 30, 0)
    assert parse_logs_query("/logs?projectid=42&limit=5000&offset=7&_=1", 999, 1000) == \
        LogsQuery("42", 1000, 7)
    assert parse_logs_query("/logs?projectid=%E2%98%81%20x", 999, 10).project_id == "☁ x"


@pytest.mark.parametrize(("target", "message"), [
    ("/logs", "projectid is missing"),
    ("/logs?limit=3", "projectid is missing"),
    ("/logs?projectid=", "projectid must be 1 to 999 characters"),
    ("/logs?projectid=" + "1" * 1000, "projectid must be 1 to 999 characters"),
    ("/logs?projectid=1&projectid=2", "projectid is given more than once"),
    ("/logs?projectid=1&limit=abc", "limit must be a whole number from 0 to 999999999"),
    ("/logs?projectid=1&limit=-1", "limit must be a whole number from 0 to 999999999"),
    ("/logs?projectid=1&limit=1e3", "limit must be a whole number from 0 to 999999999"),
    ("/logs?projectid=1&limit=0", "limit must be at least 1"),
    ("/logs?projectid=1&offset=" + "9" * 5000, "offset must be a whole number"),
    ("/logs?projectid=1&offset=%EF%BC%91", "offset must be a whole number"),
    ("/logs?projectid=%ff", "the query string is not valid percent-encoded UTF-8"),
    ("/logs?" + "&".join(f"p{n}=1" for n in range(40)) + "&projectid=1", "more than 32"),
])
def test_malformed_queries_are_refused_with_a_message(target, message):
    """Each malformed query names what is wrong."""
    with pytest.raises(QueryError) as refused:
        parse_logs_query(target, 999, 1000)
    assert message in str(refused.value)


# Over HTTP


@pytest.fixture(scope="module")
def history_server(tmp_path_factory):
    """A server with history on (small keep and max_limit), deletes and renames allowed."""
    yield from private_server(
        tmp_path_factory, "history",
        history={"enabled": True, "keep": KEEP, "max_limit": MAX_LIMIT},
        scratch={"allow_delete": True, "allow_rename": True, "blocked_rooms": ["blocked-1"]},
    )


def get_logs(http_url: str, query: str) -> tuple[int, dict[str, str], object]:
    status, headers, body = http_get(http_url, "/logs?" + query)
    return status, headers, json.loads(body)


async def logs_when(http_url: str, room: str, count: int, query: str = "") -> list[dict]:
    """The room's log once it has at least `count` entries (writes reach it asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        status, _, entries = await asyncio.to_thread(
            get_logs, http_url, f"projectid={room}{query}")
        assert status == 200, entries
        if len(entries) >= count or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.05)


def brief(entries: list[dict]) -> list[tuple]:
    return [(e["user"], e["verb"], e["name"], e["value"]) for e in entries]


async def test_writes_of_two_clients_show_up_newest_first(history_server):
    """Sets by two named clients are listed newest first with user, verb, name, value and time."""
    room = fresh_room()
    before = int(time.time() * 1000)
    alice = await joined(history_server.url, room, "alice")
    bob = await joined(history_server.url, room, "bob")
    try:
        await alice.send(set_text("☁ score", "10"))
        await recv(bob)
        await bob.send(set_text("☁ score", 11))
        await recv(alice)
        await alice.send(set_text("☁ level", "-1.5"))
        entries = await logs_when(history_server.http_url, room, 3)
    finally:
        await close_all(alice, bob)
    after = int(time.time() * 1000)
    assert brief(entries) == [
        ("alice", "set_var", "☁ level", "-1.5"),
        ("bob", "set_var", "☁ score", "11"),
        ("alice", "set_var", "☁ score", "10"),
    ]
    assert [list(entry) for entry in entries] == [
        ["user", "verb", "name", "value", "timestamp"]] * 3
    stamps = [entry["timestamp"] for entry in entries]
    assert all(isinstance(stamp, int) for stamp in stamps)
    assert before <= stamps[2] <= stamps[1] <= stamps[0] <= after


async def test_limit_offset_and_the_keep_bound(history_server):
    """limit and offset page the log; only the newest `keep` entries are kept; limit is capped."""
    room = fresh_room()
    writer = await joined(history_server.url, room, "counter")
    watcher = await joined(history_server.url, room, "watcher")
    try:
        for number in range(KEEP + 3):
            await writer.send(set_text("☁ n", str(number)))
            await recv(watcher)
        newest = await logs_when(history_server.http_url, room, MAX_LIMIT)
    finally:
        await close_all(writer, watcher)
    values = [str(n) for n in range(KEEP + 2, 2, -1)]  # the newest KEEP, newest first
    assert [e["value"] for e in newest] == values[:MAX_LIMIT]  # default limit capped
    url = history_server.http_url
    page = await logs_when(url, room, 2, "&limit=2&offset=1")
    assert [e["value"] for e in page] == values[1:3]
    tail = await logs_when(url, room, 0, f"&limit={MAX_LIMIT}&offset={KEEP - 2}")
    assert [e["value"] for e in tail] == values[KEEP - 2:]
    assert await logs_when(url, room, 0, f"&offset={KEEP}") == []


async def test_deletes_and_renames_are_logged(history_server):
    """A rename logs the new name with the value; a delete logs the last value."""
    room = fresh_room()
    ws = await joined(history_server.url, room, "editor")
    try:
        await ws.send(set_text("☁ old", "5"))
        await ws.send(json.dumps({"method": "rename", "name": "☁ old", "new_name": "☁ new"}))
        await ws.send(json.dumps({"method": "delete", "name": "☁ new"}))
        entries = await logs_when(history_server.http_url, room, 3)
    finally:
        await close_all(ws)
    assert brief(entries) == [
        ("editor", "del_var", "☁ new", "5"),
        ("editor", "rename_var", "☁ new", "5"),
        ("editor", "set_var", "☁ old", "5"),
    ]


def test_unknown_project_answers_an_empty_list_with_cors(history_server):
    """A project nobody wrote to answers [] as JSON that any web page may read."""
    status, headers, entries = get_logs(history_server.http_url, f"projectid={fresh_room()}")
    assert (status, entries) == (200, [])
    assert headers["access-control-allow-origin"] == "*"
    assert headers["content-type"].startswith("application/json")


def test_head_answers_headers_only(history_server):
    """HEAD /logs gets the GET answer's status and headers and no body."""
    status, headers, body = http_get(history_server.http_url, "/logs?projectid=1", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["content-type"].startswith("application/json")


def test_blocked_project_answers_404(history_server):
    """A project blocked by [scratch] blocked_rooms has no log to show."""
    status, headers, answer = get_logs(history_server.http_url, "projectid=blocked-1")
    assert status == 404 and "disabled" in answer["error"]


@pytest.mark.parametrize("query", ["", "projectid=1&limit=x", "projectid=1&limit=0",
                                   "projectid=1&offset=-2", "projectid=%ff"])
def test_bad_parameters_answer_400_with_a_message(history_server, query):
    """Malformed parameters answer 400 with {"error": message}, and the server keeps serving."""
    status, headers, answer = get_logs(history_server.http_url, query)
    assert status == 400 and answer["error"]
    assert headers["access-control-allow-origin"] == "*"
    assert http_get(history_server.http_url, "/healthz")[0] == 200


def test_history_off_by_default_answers_404(server):
    """With [history] off (the default), /logs is not served."""
    status, _, _ = http_get(server.http_url, "/logs?projectid=1")
    assert status == 404


async def test_history_survives_a_restart_with_sqlite(make_server):
    """Entries written before a restart are served after it, and new ones come first."""
    proc = make_server(history={"enabled": True})
    room = fresh_room()
    first = await joined(proc.url, room, "before")
    try:
        await first.send(set_text("☁ v", "1"))
        assert len(await logs_when(proc.http_url, room, 1)) == 1
    finally:
        await close_all(first)
    proc.restart()
    second = await joined(proc.url, room, "after")
    try:
        await recv(second)  # the stored value: the room is back
        await second.send(set_text("☁ v", "2"))
        entries = await logs_when(proc.http_url, room, 2)
    finally:
        await close_all(second)
    assert brief(entries) == [("after", "set_var", "☁ v", "2"),
                              ("before", "set_var", "☁ v", "1")]


async def test_bridged_cl4_writes_are_logged_as_the_bridge(make_server):
    """A CL4 gvar written into a Scratch room through [bridge] is logged as "(bridge)"."""
    proc = make_server(history={"enabled": True}, bridge={"enabled": True})
    room = fresh_room()
    scratch = await joined(proc.url, room, "player1")
    (cl4,) = await identified(proc.url, "mallory")
    try:
        await cl4.send({"cmd": "link", "val": [room], "listener": "link"})
        await cl4.recv_until(lambda m: m == OK("link"))
        await cl4.send({"cmd": "gvar", "name": "☁ score", "val": 42})
        await recv(scratch)
        entries = await logs_when(proc.http_url, room, 1)
    finally:
        await cl4_close_all(cl4)
        await close_all(scratch)
    assert brief(entries) == [("(bridge)", "set_var", "☁ score", "42")]


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(history_server):
    """The answer read off the event loop still reaches a client that shut down its sending side."""
    with socket.create_connection(("127.0.0.1", history_server.port), timeout=5) as sock:
        sock.sendall(b"GET /logs?projectid=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\n[]\n")
