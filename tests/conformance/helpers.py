"""Client helpers for the conformance tests: websockets clients and a raw-socket client.

The websockets client covers everything a well-behaved client does. `raw_connect` opens a
`tests.server.rawclient.RawClient`, which does the HTTP upgrade by hand and writes frames byte
by byte, for what websockets refuses to send (unmasked frames, reserved opcodes, invalid UTF-8,
duplicate headers) and for clients that never answer pings or stop reading.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from tests.server.rawclient import RawClient

USER_AGENT = "stratus-conformance-tests/1.0 (https://example.invalid/contact)"
NOTHING_WAIT = 0.5  # "nothing" = no message within 500 ms and the connection still open
RAW_TIMEOUT = 3.0  # a raw client's reads fail after this long, like `recv`
RAW_READ_LIMIT = 2**16  # what a raw client reads ahead, as an asyncio stream does


# websockets clients


async def ws_connect(url: str, *, user_agent: str | None = USER_AGENT, path: str = "/",
                     **kwargs: Any) -> ClientConnection:
    """Open a WebSocket like a TurboWarp client: no compression, no client pings, no proxy."""
    options: dict[str, Any] = {
        "compression": None,
        "user_agent_header": user_agent,
        "ping_interval": None,
        "proxy": None,
        "open_timeout": 5,
        "close_timeout": 2,
        "max_size": 4 * 1024 * 1024,
    }
    options.update(kwargs)
    return await connect(url.rstrip("/") + path, **options)


def handshake_text(room: Any, user: Any = "player1234", **extra: Any) -> str:
    """The handshake message a TurboWarp GUI sends (with its trailing newline)."""
    message = {"method": "handshake", "user": user, "project_id": room, **extra}
    return json.dumps(message, ensure_ascii=False) + "\n"


def set_text(name: Any, value: Any, method: str = "set") -> str:
    """A compact `set` message as the packager sends it (no trailing newline)."""
    return json.dumps({"method": method, "name": name, "value": value}, ensure_ascii=False,
                      separators=(",", ":"))


def set_line(name: str, value: Any) -> str:
    """The exact `set` line the server relays for a string name."""
    return set_text(name, value)


async def joined(url: str, room: Any, user: str = "player1234", **kwargs: Any) -> ClientConnection:
    """A client that has handshaken into `room`."""
    ws = await ws_connect(url, **kwargs)
    await ws.send(handshake_text(room, user))
    return ws


async def recv(ws: ClientConnection, timeout: float = 3.0) -> str | bytes:
    """The next message, failing the test if none arrives in time."""
    try:
        return await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise AssertionError(f"no message within {timeout} s") from None


async def expect_nothing(ws: ClientConnection | RawClient, wait: float = NOTHING_WAIT) -> None:
    """Assert no message arrives within `wait` seconds and the connection is still open.

    For a raw client: no data or close frame (pings and pongs are fine).
    """
    if isinstance(ws, RawClient):
        await ws.expect_silence(wait)
        return
    try:
        message = await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        assert ws.state is State.OPEN, f"connection is {ws.state.name}"
        return
    except ConnectionClosed as exc:
        raise AssertionError(f"connection closed: {exc}") from None
    raise AssertionError(f"unexpected message {message!r}")


async def expect_close(ws: ClientConnection | RawClient, code: int | None,
                       timeout: float = 3.0, messages: int = 0) -> list[str | bytes]:
    """Assert the server closes with `code` (empty reason) after exactly `messages` messages.

    `code=None` asserts only that the connection ends. Returns the messages received first
    (for a raw client, the payloads of its data frames).
    """
    if isinstance(ws, RawClient):
        return await _expect_raw_close(ws, code, timeout, messages)
    received: list[str | bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                received.append(await ws.recv())
    except TimeoutError:
        raise AssertionError(f"still open after {timeout} s; got {received!r}") from None
    except ConnectionClosed as exc:
        if code is not None:
            got = exc.rcvd.code if exc.rcvd is not None else 1006
            assert got == code, f"closed with {got}, expected {code}; got {received!r}"
            assert exc.rcvd.reason == "", f"close reason {exc.rcvd.reason!r} is not empty"
    assert len(received) == messages, f"expected {messages} messages before close: {received!r}"
    return received


async def _expect_raw_close(raw: RawClient, code: int | None, timeout: float,
                            messages: int) -> list[str | bytes]:
    """`expect_close` for a raw client: `code=None` also accepts TCP ending without a close."""
    try:
        closed = await raw.expect_close(timeout)
    except TimeoutError as exc:
        raise AssertionError(f"still open after {timeout} s: {exc}") from None
    received: list[str | bytes] = [frame.payload for frame in closed.frames]
    if not closed.frame:
        assert code is None, f"EOF without a close frame, expected {code}"
    else:
        assert closed.code == code, f"closed with {closed.code}, expected {code}; got {received!r}"
        assert closed.reason == b"", f"close reason {closed.reason!r} is not empty"
    assert len(received) == messages, f"expected {messages} messages before close: {received!r}"
    return received


async def recv_until(ws: ClientConnection, predicate, timeout: float = 5.0) -> list[str]:
    """Read `set` lines until `predicate(lines_so_far)` is true; returns every line read."""
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while not predicate(lines):
            lines.extend(str(await ws.recv()).split("\n"))
    return lines


def latest_values(lines: list[str]) -> dict[Any, Any]:
    """The last value seen per variable name in a list of `set` lines."""
    values: dict[Any, Any] = {}
    for line in lines:
        message = json.loads(line)
        values[message.get("name")] = message["value"]
    return values


async def close_all(*clients: Any) -> None:
    """Close clients (websockets ones politely, raw ones by ending TCP), ignoring errors."""
    await asyncio.gather(
        *(client.abort() if isinstance(client, RawClient) else client.close()
          for client in clients),
        return_exceptions=True,
    )


# Raw client


async def raw_connect(url: str, *, path: str = "/", headers: list[tuple[str, str]] | None = None,
                      user_agent: str | None = USER_AGENT, rcvbuf: int | None = None,
                      upgrade: bool = True) -> RawClient:
    """A raw client, upgraded with exactly the given extra headers (after the User-Agent).

    Unlike the websockets client it never answers pings (set `auto_pong` to change that); its
    reads time out after RAW_TIMEOUT. `upgrade=False` leaves it a bare TCP connection.
    """
    options: dict[str, Any] = {"rcvbuf": rcvbuf, "read_limit": RAW_READ_LIMIT}
    if upgrade:
        agent = [] if user_agent is None else [("User-Agent", user_agent)]
        client = await RawClient.open(url, path, agent + (headers or []), **options)
    else:
        client = await RawClient.connect_tcp(url, **options)
    client.auto_pong = False
    client.timeout = RAW_TIMEOUT
    return client


# HTTP


def http_get(base_url: str, path: str, method: str = "GET",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of a plain HTTP request."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        reply = conn.getresponse()
        body = reply.read()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, body
    finally:
        conn.close()


def rooms_in_memory(http_url: str) -> int:
    """The "N rooms in memory" figure of the status page."""
    status, _, body = http_get(http_url, "/")
    assert status == 200
    page = body.decode()
    match = re.search(r"(\d+) rooms in memory", page)
    assert match, page
    return int(match.group(1))


# Private servers shared by the tests of one module


def private_server(tmp_path_factory, name: str, **settings: Any):
    """Generator for a module-scoped fixture: a server with config overrides, stopped after."""
    from tests.conftest import ServerProcess

    proc = ServerProcess(tmp_path_factory.mktemp(name), settings).start()
    try:
        yield proc
    finally:
        proc.stop()


def fresh_room(prefix: str = "r") -> str:
    """A room id no other test uses."""
    return f"{prefix}-{os.urandom(6).hex()}"


def raw_message(**fields: str) -> str:
    """A JSON object from already-encoded member texts, e.g. raw_message(value="NaN")."""
    return "{" + ",".join(f'"{key}":{text}' for key, text in fields.items()) + "}"


def raw_handshake(project_id: str | None, user: str | None = '"player1234"') -> str:
    """A handshake whose project_id/user are raw JSON texts (None leaves the key out)."""
    fields = {"method": '"handshake"'}
    if project_id is not None:
        fields["project_id"] = project_id
    if user is not None:
        fields["user"] = user
    return raw_message(**fields)
