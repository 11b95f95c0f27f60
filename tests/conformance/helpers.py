"""Client helpers for the conformance tests: websockets clients and a raw-socket client.

The websockets client covers everything a well-behaved client does. `RawClient` does the HTTP
upgrade by hand and writes frames byte by byte, for what websockets refuses to send (unmasked
frames, reserved opcodes, invalid UTF-8, duplicate headers) and for clients that never answer
pings or stop reading.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import os
import re
import socket
import struct
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

USER_AGENT = "stratus-conformance-tests/1.0 (https://example.invalid/contact)"
NOTHING_WAIT = 0.5  # "nothing" = no message within 500 ms and the connection still open
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


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


async def expect_nothing(ws: ClientConnection, wait: float = NOTHING_WAIT) -> None:
    """Assert no message arrives within `wait` seconds and the connection is still open."""
    try:
        message = await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        assert ws.state is State.OPEN, f"connection is {ws.state.name}"
        return
    except ConnectionClosed as exc:
        raise AssertionError(f"connection closed: {exc}") from None
    raise AssertionError(f"unexpected message {message!r}")


async def expect_close(ws: ClientConnection, code: int | None, timeout: float = 3.0,
                       messages: int = 0) -> list[str | bytes]:
    """Assert the server closes with `code` (empty reason) after exactly `messages` messages.

    `code=None` asserts only that the connection ends. Returns the messages received first.
    """
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
    """Close clients (websockets or raw), ignoring errors."""
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


# Raw client


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR a payload with a 4-byte mask (RFC 6455 5.3)."""
    if not payload:
        return b""
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True,
                 rsv: int = 0) -> bytes:
    """One client frame with any flags, masked or not."""
    first = (0x80 if fin else 0) | (rsv & 0x7) << 4 | opcode
    length = len(payload)
    mask_bit = 0x80 if masked else 0
    if length < 126:
        header = struct.pack("!BB", first, mask_bit | length)
    elif length < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + mask_payload(payload, mask)


class RawClient:
    """A hand-written WebSocket client over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers
        self.body = body
        self.pings: list[bytes] = []
        self.answer_pings = False

    @classmethod
    async def connect(cls, url: str, *, path: str = "/",
                      headers: list[tuple[str, str]] | None = None,
                      user_agent: str | None = USER_AGENT, rcvbuf: int | None = None,
                      upgrade: bool = True) -> RawClient:
        """Connect and send an upgrade request with exactly the given extra headers."""
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
        sock = None
        if rcvbuf is not None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=2**16)
        else:
            reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer, 0, [], b"")
        if upgrade:
            await client.upgrade(path, headers or [], user_agent)
        return client

    async def upgrade(self, path: str, headers: list[tuple[str, str]],
                      user_agent: str | None) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        peer = self.writer.get_extra_info("peername")
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {peer[0]}:{peer[1]}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if user_agent is not None:
            lines.append(f"User-Agent: {user_agent}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = [
            (name.strip(), value.strip())
            for name, _, value in (line.partition(":") for line in header_lines if line)
        ]
        if self.status == 101:
            expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
            assert self.header("Sec-WebSocket-Accept") == expected

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    # Sending

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(self, opcode: int, payload: bytes = b"", **flags: Any) -> None:
        self.writer.write(client_frame(opcode, payload, **flags))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def send_texts(self, *texts: str) -> None:
        """Several text messages in one TCP write (so the server reads them in one go)."""
        self.writer.write(b"".join(client_frame(OP_TEXT, t.encode()) for t in texts))

    def send_close(self, code: int | None = 1000) -> None:
        payload = b"" if code is None else struct.pack("!H", code)
        self.send_frame(OP_CLOSE, payload)

    async def drain(self) -> None:
        await self.writer.drain()

    # Receiving

    async def read_frame(self, timeout: float = 3.0) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, payload) of the next server frame, or None at EOF. Pings are kept."""
        async with asyncio.timeout(timeout):
            try:
                head = await self.reader.readexactly(2)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
            assert not head[1] & 0x80, "server frames must not be masked"
            length = head[1] & 0x7F
            try:
                if length == 126:
                    length = struct.unpack("!H", await self.reader.readexactly(2))[0]
                elif length == 127:
                    length = struct.unpack("!Q", await self.reader.readexactly(8))[0]
                payload = await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionError):
                return None
        return bool(head[0] & 0x80), head[0] & 0x0F, payload

    async def read_message(self, timeout: float = 3.0) -> tuple[int, bytes] | None:
        """The next data or close frame as (opcode, payload); pings are recorded, None at EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.read_frame(max(0.01, deadline - loop.time()))
            if frame is None:
                return None
            _, opcode, payload = frame
            if opcode == OP_PING:
                self.pings.append(payload)
                if self.answer_pings:
                    self.send_frame(OP_PONG, payload)
                continue
            return opcode, payload

    async def expect_close(self, code: int | None, timeout: float = 3.0,
                           messages: int = 0) -> list[bytes]:
        """Assert the server's close frame carries `code` (None: no close frame, just EOF)."""
        received: list[bytes] = []
        while True:
            try:
                item = await self.read_message(timeout)
            except TimeoutError:
                raise AssertionError(f"still open after {timeout} s; got {received!r}") from None
            if item is None:
                assert code is None, f"EOF without a close frame, expected {code}"
                break
            opcode, payload = item
            if opcode == OP_CLOSE:
                got = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                assert got == code, f"closed with {got}, expected {code}; got {received!r}"
                assert payload[2:] == b"", f"close reason {payload[2:]!r} is not empty"
                break
            received.append(payload)
        assert len(received) == messages, f"expected {messages} messages before close: {received!r}"
        return received

    async def expect_nothing(self, wait: float = NOTHING_WAIT) -> None:
        """No data or close frame within `wait` seconds (pings are fine)."""
        try:
            item = await self.read_message(wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {item!r}")

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


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
