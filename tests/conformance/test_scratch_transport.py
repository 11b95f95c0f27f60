"""Spec scratch-cloud.md §18 cases 31-33 and 37 (headers, transport, closing) and plain HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import InvalidStatus

from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    handshake_text,
    http_get,
    joined,
    private_server,
    raw_connect,
    recv,
    set_line,
    set_text,
    ws_connect,
)
from tests.server.rawclient import OP_CLOSE

COOKIE_WARNING_START = "The cloud data library you are using is putting your Scratch account"
SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


async def test_case_31_session_cookie_refused_with_text_then_4005(server, room):
    """A Cookie starting with scratchsessionsid= gets one plain-text warning, then 4005."""
    ws = await ws_connect(server.url, additional_headers={"Cookie": "scratchsessionsid=abc"})
    [text] = await expect_close(ws, 4005, messages=1)
    assert isinstance(text, str) and not is_json(text)
    assert text.startswith(COOKIE_WARNING_START)


async def test_case_31_cookie_refused_even_after_handshake_attempt(server, room):
    """The tripwire fires at connect: a handshake sent at once does not join the room."""
    raw = await raw_connect(server.url, headers=[("Cookie", "scratchsessionsid=x; a=1")])
    await raw.send_text(handshake_text(room))
    [text] = await expect_close(raw, 4005, messages=1)
    assert text.decode().startswith(COOKIE_WARNING_START)
    await raw.abort()


async def test_case_31_other_cookies_allowed(server, room):
    """Cookies that merely contain scratchsessionsid= later on are accepted."""
    a = await ws_connect(server.url, additional_headers={"Cookie": "a=1; scratchsessionsid=x"})
    await a.send(handshake_text(room, "player1"))
    # Two Cookie headers are joined with "; " first, so only the first one's start matters.
    raw = await raw_connect(
        server.url, headers=[("Cookie", "a=1"), ("Cookie", "scratchsessionsid=x")]
    )
    await raw.send_text(handshake_text(room, "player2"))
    await asyncio.gather(expect_nothing(a), expect_nothing(raw))
    await a.send(set_text("☁ x", "1"))
    assert await raw.recv_text() == set_line("☁ x", "1")
    await close_all(a, raw)


async def test_case_31_duplicate_cookie_headers_joined(server):
    """With two Cookie headers, the first starting with scratchsessionsid= is refused 4005."""
    raw = await raw_connect(
        server.url, headers=[("Cookie", "scratchsessionsid=x"), ("Cookie", "a=1")]
    )
    await expect_close(raw, 4005, messages=1)
    await raw.abort()


async def test_case_32_missing_or_empty_user_agent_accepted(server, room):
    """Clients without a User-Agent, or with an empty one, are accepted by default."""
    a = await joined(server.url, room, "player1", user_agent=None)
    raw = await raw_connect(server.url, user_agent=None, headers=[("User-Agent", "")])
    await raw.send_text(handshake_text(room, "player2"))
    await asyncio.gather(expect_nothing(a), expect_nothing(raw))
    await a.send(set_text("☁ x", "1"))
    assert await raw.recv_text() == set_line("☁ x", "1")
    await close_all(a, raw)


async def test_case_33_any_path_origin_and_no_compression(server, room):
    """Any path, query and Origin work, no subprotocol is needed, deflate is not negotiated."""
    variants = [
        {"path": "/"},
        {"path": "/foo/bar?x=1"},
        {"path": "/?project=1&x=%20"},
        {"origin": "https://evil.example"},
        {"origin": "null"},
        {"subprotocols": ["some-protocol"]},
        {"compression": "deflate"},
    ]
    clients = await asyncio.gather(*(ws_connect(server.url, **v) for v in variants))
    for ws in clients:
        assert ws.response.status_code == 101
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
    await asyncio.gather(*(ws.send(handshake_text(room, f"player{i}"))
                           for i, ws in enumerate(clients)))
    writer = await joined(server.url, room, "writer")
    await asyncio.sleep(0.05)
    await writer.send(set_text("☁ x", "1"))
    for ws in clients:
        assert await recv(ws) == set_line("☁ x", "1")
    await close_all(writer, *clients)


async def test_case_37_client_close_code_echoed_peers_told_nothing(server, room):
    """The server echoes the client's close code; other room members see nothing."""
    codes = [1000, 1001, 3000, 4321, 4999]
    raws = [await raw_connect(server.url) for _ in codes]
    for i, raw in enumerate(raws):
        await raw.send_text(handshake_text(room, f"player{i}"))
    b = await joined(server.url, room, "watcher")
    await asyncio.sleep(0.05)
    for raw, code in zip(raws, codes, strict=True):
        await raw.send_close(code)
    await asyncio.gather(expect_nothing(b),
                         *(expect_close(raw, code) for raw, code in zip(raws, codes, strict=True)))
    await close_all(b, *raws)


async def test_case_37_websockets_client_close_echoed(server, room):
    """A library client closing with 4321 gets 4321 back."""
    a = await joined(server.url, room)
    await a.close(4321)
    assert a.close_code == 4321


async def test_case_37_empty_close_echoed_empty(server, room):
    """A close frame without a code is answered by a close frame without a code."""
    raw = await raw_connect(server.url)
    await raw.send_close(None)
    frame = await raw.recv_message()
    assert (frame.opcode, frame.payload) == (OP_CLOSE, b"")
    await raw.abort()


# Plain HTTP (§2, §13)


@pytest.mark.parametrize(
    "path, status, body_check",
    [
        ("/", 200, b"<html"),
        ("/?x=1", 200, b"<html"),
        ("/robots.txt", 200, b"Disallow: /"),
        ("/healthz", 200, b"ok"),
        ("/nope", 404, b""),
        ("/robots.txt/extra", 404, b""),
    ],
)
def test_http_get_pages_with_security_headers(server, path, status, body_check):
    """Plain GETs get the status page, robots.txt, health check or 404, with security headers."""
    got, headers, body = http_get(server.http_url, path)
    assert got == status
    assert body_check in body
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, name
    if path.startswith("/robots.txt") and status == 200:
        assert b"User-agent: *" in body


def test_http_head_has_headers_but_no_body(server):
    """HEAD returns the headers of the GET with an empty body."""
    status, headers, body = http_get(server.http_url, "/robots.txt", method="HEAD")
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 0
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value


def test_http_other_methods_refused(server):
    """POST and other methods are answered 405 and never crash the server."""
    status, headers, _ = http_get(server.http_url, "/", method="POST")
    assert status == 405
    assert "GET" in headers.get("allow", "")


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """No status page and at most 2 connections."""
    yield from private_server(tmp_path_factory, "restricted",
                              server={"status_page": False, "max_connections": 2})


def test_http_status_page_can_be_turned_off(restricted):
    """With status_page = false, "/" is a 404 but robots.txt and /healthz still work."""
    srv = restricted
    assert http_get(srv.http_url, "/")[0] == 404
    assert http_get(srv.http_url, "/robots.txt")[0] == 200
    assert http_get(srv.http_url, "/healthz")[0] == 200


async def test_max_connections_refuses_upgrades_with_503(restricted):
    """Over max_connections, new WebSocket upgrades are refused with HTTP 503."""
    srv = restricted
    first = await ws_connect(srv.url)
    second = await ws_connect(srv.url)
    with pytest.raises(InvalidStatus) as refused:
        await ws_connect(srv.url)
    assert refused.value.response.status_code == 503
    await first.close()
    await asyncio.sleep(0.2)
    third = await ws_connect(srv.url)  # a slot is free again
    await third.send(handshake_text("room"))
    await expect_nothing(third)
    await close_all(second, third)

