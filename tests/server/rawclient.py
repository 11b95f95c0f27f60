"""A raw-socket WebSocket client for tests that must break the rules on purpose.

Real client libraries refuse to send unmasked frames, reserved opcodes, bad UTF-8, duplicate
headers or a close code of 1005; they answer every ping and hide how bytes are split across TCP
writes. This one speaks RFC 6455 by hand over asyncio: a manual HTTP upgrade with a random
Sec-WebSocket-Key, a frame builder (masking on by default, every header bit settable), and a
reader for server frames. The server tests and the conformance tests both use it.

Typical use::

    client = await RawClient.open(server.url)
    await client.send_json({"method": "handshake", "project_id": room, "user": "player1"})
    await client.send_frame(OP_TEXT, b'{"method"', fin=False)
    await client.send_frame(OP_CONTINUATION, b':"set"}')
    closed = await client.expect_close()
    assert closed.code == 4000
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import socket
import struct
from dataclasses import dataclass, field
from urllib.parse import urlsplit

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
DEFAULT_TIMEOUT = 5.0


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value a server must answer `key` with."""
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


def build_frame(
    opcode: int,
    payload: bytes | str = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    masking_key: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame's bytes. `rsv` is OR-ed into the first byte (RSV1|RSV2|RSV3 bits).

    `length` overrides the announced payload length (to announce more than is sent).
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogatepass")
    announced = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    if announced < 126:
        header = struct.pack("!BB", first, mask_bit | announced)
    elif announced < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, announced)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, announced)
    if not mask:
        return header + payload
    key = masking_key if masking_key is not None else os.urandom(4)
    return header + key + mask_bytes(payload, key)


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """XOR `payload` with the 4-byte masking `key` (masking and unmasking are the same)."""
    if not payload:
        return b""
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big"
    )


def close_payload(code: int | None, reason: bytes | str = b"") -> bytes:
    """A close frame payload: 2-byte code and reason; None gives an empty payload."""
    if code is None:
        return b""
    if isinstance(reason, str):
        reason = reason.encode()
    return struct.pack("!H", code) + reason


@dataclass
class Frame:
    """A frame received from the server."""

    fin: bool
    rsv: int
    opcode: int
    payload: bytes
    masked: bool = False  # always False: the reader fails on a masked server frame

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


@dataclass
class Closed:
    """How a connection ended: the server's close frame (if any) and what preceded it."""

    frame: bool  # a close frame was received (False: TCP ended without one)
    code: int | None = None  # None: empty close payload, or no close frame
    reason: bytes = b""
    frames: list[Frame] = field(default_factory=list)  # data frames received before it

    @property
    def messages(self) -> list[str]:
        """The text messages received before it."""
        return [
            frame.payload.decode("utf-8", "replace")
            for frame in self.frames
            if frame.opcode == OP_TEXT
        ]


@dataclass
class HttpResponse:
    """The server's answer to the upgrade (or plain HTTP) request."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called `name` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class ConnectionEnded(Exception):
    """The server ended the TCP connection while a frame was expected."""


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    _version, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        if line:
            key, _, value = line.partition(":")
            headers.append((key.strip(), value.strip()))
    return int(status), (reason[0] if reason else ""), headers


def upgrade_request(
    host: str,
    port: int,
    key: str,
    path: str = "/",
    headers: list[tuple[str, str]] | None = None,
) -> bytes:
    """The bytes of an HTTP/1.1 WebSocket upgrade request."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


async def http_request(url: str, raw: bytes, timeout: float = DEFAULT_TIMEOUT) -> HttpResponse:
    """Send `raw` bytes as a request on a new connection; read the response until EOF."""
    host, port = _host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(-1), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status, reason, headers = _parse_head(head)
    return HttpResponse(status, reason, headers, body)


class _Stream(asyncio.Protocol):
    """Receive buffer that keeps data received before a reset (unlike asyncio.StreamReader,
    which raises the reset before handing out buffered bytes).

    With a `read_limit`, it stops reading from the socket past twice that many buffered bytes
    and starts again at the limit, as an asyncio.StreamReader does: a client that stops reading
    then stops taking data from the kernel, and the server sees it as a slow reader.
    """

    def __init__(self, read_limit: int | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.ended = False
        self.read_limit = read_limit
        self.reading_paused = False
        self.writing_paused = False
        self.waiters: set[asyncio.Future] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.read_limit is not None and len(self.buffer) > 2 * self.read_limit:
            self.transport.pause_reading()
            self.reading_paused = True
        self._wake()

    def take(self, size: int) -> bytes:
        """Remove and return the first `size` buffered bytes (resuming reading if paused)."""
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        if self.reading_paused and len(self.buffer) <= self.read_limit:
            self.reading_paused = False
            self.transport.resume_reading()
        return data

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False

    def connection_lost(self, exc) -> None:
        if exc is not None:
            self._salvage()
        self.ended = True
        self._wake()

    def _salvage(self) -> None:
        """Read what the kernel still holds for us.

        When a write fails (the server already closed and answered with a reset), asyncio stops
        reading at once, but the server's close frame may be sitting unread in the receive
        queue. The socket is still open during connection_lost, so read it directly.
        """
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is None:
            return
        try:
            fd = sock.fileno()
            while fd >= 0:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.buffer += chunk
        except OSError:  # EAGAIN, ECONNRESET, EBADF: nothing (more) to read
            pass

    def _wake(self) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_data(self) -> None:
        """Wait until more data arrives, writing resumes or the connection ends."""
        if self.ended:
            return
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.add(waiter)
        try:
            await waiter
        finally:
            self.waiters.discard(waiter)


class RawClient:
    """One raw WebSocket connection to the server (client side, RFC 6455 by hand).

    Writes never raise (a reset shows up as the end of the connection when reading), and
    everything the server sent before ending TCP can still be read. A frame from the server
    that is masked fails the read (RFC 6455 5.1).
    """

    def __init__(self, transport: asyncio.Transport, stream: _Stream):
        self.transport = transport
        self.stream = stream
        self.response: HttpResponse | None = None
        self.key = ""
        self.auto_pong = True  # answer server pings while reading
        self.pings: list[bytes] = []  # payloads of the pings skipped by recv_message
        self.timeout = DEFAULT_TIMEOUT  # for reads called without a timeout

    # Opening

    @classmethod
    async def connect_tcp(
        cls, url: str, *, rcvbuf: int | None = None, read_limit: int | None = None
    ) -> RawClient:
        """A TCP connection with nothing sent yet (TCP_NODELAY on, so writes stay separate).

        `rcvbuf` sets SO_RCVBUF before connecting (a small receive window); `read_limit`
        bounds what is read ahead of the test (see `_Stream`).
        """
        host, port = _host_port(url)
        loop = asyncio.get_running_loop()
        if rcvbuf is None:
            transport, stream = await loop.create_connection(
                lambda: _Stream(read_limit), host, port
            )
        else:
            raw_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                raw_sock.setblocking(False)
                await loop.sock_connect(raw_sock, (host, port))
                transport, stream = await loop.create_connection(
                    lambda: _Stream(read_limit), sock=raw_sock
                )
            except BaseException:
                raw_sock.close()
                raise
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(transport, stream)

    @classmethod
    async def open(
        cls,
        url: str,
        path: str = "/",
        headers: list[tuple[str, str]] | None = None,
        *,
        then: bytes = b"",
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        rcvbuf: int | None = None,
        read_limit: int | None = None,
    ) -> RawClient:
        """Connect and upgrade. `then` is written in the same TCP write as the request.

        With `check`, a status other than 101 or a wrong Sec-WebSocket-Accept raises.
        `rcvbuf` and `read_limit` are as for `connect_tcp`.
        """
        client = await cls.connect_tcp(url, rcvbuf=rcvbuf, read_limit=read_limit)
        try:
            await client.upgrade(path, headers, then=then, check=check, timeout=timeout)
        except BaseException:
            await client.abort()
            raise
        return client

    @property
    def peername(self) -> tuple[str, int]:
        return self.transport.get_extra_info("peername")[:2]

    async def upgrade(
        self,
        path: str = "/",
        headers: list[tuple[str, str]] | None = None,
        *,
        then: bytes = b"",
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> HttpResponse:
        """Send the upgrade request (plus `then`) and read the response head."""
        host, port = self.peername
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.write(upgrade_request(host, port, self.key, path, headers) + then)
        head = await self.read_until(b"\r\n\r\n", timeout)
        status, reason, response_headers = _parse_head(head[:-4])
        self.response = HttpResponse(status, reason, response_headers)
        if check:
            if status != 101:
                raise AssertionError(f"upgrade refused: {status} {reason}")
            accept = self.response.header("Sec-WebSocket-Accept")
            if accept != accept_key(self.key):
                raise AssertionError(f"bad Sec-WebSocket-Accept {accept!r}")
        return self.response

    # Low-level reading

    def _timeout(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    async def read_until(self, separator: bytes, timeout: float | None = None) -> bytes:
        """Bytes up to and including `separator`; ConnectionEnded if TCP ends first."""
        async with asyncio.timeout(self._timeout(timeout)):
            while True:
                index = self.stream.buffer.find(separator)
                if index >= 0:
                    return self.stream.take(index + len(separator))
                if self.stream.ended:
                    raise ConnectionEnded("the server ended the connection")
                await self.stream.wait_data()

    async def read_exactly(self, size: int) -> bytes:
        """Exactly `size` bytes; ConnectionEnded if TCP ends first."""
        while len(self.stream.buffer) < size:
            if self.stream.ended:
                raise ConnectionEnded("the server ended the connection")
            await self.stream.wait_data()
        return self.stream.take(size)

    # Sending

    def write(self, data: bytes) -> None:
        """Write bytes as they are, in one write (ignored once the connection is gone)."""
        if not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        """Half-close: tell the server no more data follows."""
        if not self.transport.is_closing() and self.transport.can_write_eof():
            self.transport.write_eof()

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are, in one write, and let the event loop run."""
        self.write(data)
        await asyncio.sleep(0)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        while self.stream.writing_paused and not self.stream.ended:
            await self.stream.wait_data()
        await asyncio.sleep(0)

    async def send_bytewise(self, data: bytes, pause: float = 0.001) -> None:
        """Write `data` one byte per TCP write, pausing between writes."""
        for index in range(len(data)):
            self.write(data[index : index + 1])
            await asyncio.sleep(pause)

    async def send_frame(self, opcode: int, payload: bytes | str = b"", **options) -> None:
        """Build one frame (see `build_frame` for options) and write it."""
        await self.send_raw(build_frame(opcode, payload, **options))

    async def send_text(self, text: str) -> None:
        """One unfragmented, masked text frame."""
        await self.send_frame(OP_TEXT, text.encode("utf-8"))

    async def send_texts(self, *texts: str) -> None:
        """Several masked text messages in one TCP write (so the server reads them in one go)."""
        await self.send_raw(b"".join(build_frame(OP_TEXT, text.encode("utf-8")) for text in texts))

    async def send_json(self, message) -> None:
        """`message` as compact JSON in one text frame."""
        await self.send_text(json.dumps(message, ensure_ascii=False, separators=(",", ":")))

    async def handshake(self, room: str, user: str = "player1234") -> None:
        """Send the Scratch cloud handshake for `room` (the server never answers it)."""
        await self.send_json({"method": "handshake", "project_id": room, "user": user})

    async def set_var(self, name: str, value) -> None:
        """Send a Scratch cloud `set`."""
        await self.send_json({"method": "set", "name": name, "value": value})

    async def send_close(self, code: int | None = 1000, reason: bytes | str = b"") -> None:
        """Send a close frame (None: empty payload)."""
        await self.send_frame(OP_CLOSE, close_payload(code, reason))

    # Receiving

    async def recv_frame(self, timeout: float | None = None) -> Frame:
        """The next frame from the server, as sent (pings are returned too)."""
        return await asyncio.wait_for(self._read_frame(), self._timeout(timeout))

    async def _read_frame(self) -> Frame:
        first, second = await self.read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.read_exactly(8))
        assert not second & 0x80, "server frames must not be masked"
        payload = await self.read_exactly(length)
        return Frame(bool(first & 0x80), first & 0x70, first & 0x0F, payload)

    async def recv_message(self, timeout: float | None = None) -> Frame:
        """The next data or close frame; pings are recorded in `pings`, answered (if
        `auto_pong`) and skipped, like pongs."""
        deadline = asyncio.get_running_loop().time() + self._timeout(timeout)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("no message from the server")
            frame = await self.recv_frame(remaining)
            if frame.opcode == OP_PING:
                self.pings.append(frame.payload)
                if self.auto_pong:
                    await self.send_frame(OP_PONG, frame.payload)
                continue
            if frame.opcode == OP_PONG:
                continue
            return frame

    async def recv_text(self, timeout: float | None = None) -> str:
        """The next text message; anything else (a close frame included) fails the test."""
        frame = await self.recv_message(timeout)
        if frame.opcode != OP_TEXT:
            raise AssertionError(f"expected a text message, got {frame}")
        return frame.text

    async def recv_sets(self, timeout: float | None = None) -> list[dict]:
        """The `set` lines of the next text message, decoded."""
        text = await self.recv_text(timeout)
        return [json.loads(line) for line in text.split("\n")]

    async def expect_silence(self, duration: float = 0.3) -> None:
        """Assert that nothing but pings arrives for `duration` seconds."""
        try:
            frame = await self.recv_message(duration)
        except TimeoutError:
            return
        raise AssertionError(f"expected nothing, got {frame}")

    async def ping(self, payload: bytes = b"probe", timeout: float | None = None) -> Frame:
        """Send a ping and return the first pong, close frame or (raises) end of connection.

        Text messages received meanwhile are skipped.
        """
        await self.send_frame(OP_PING, payload)
        deadline = asyncio.get_running_loop().time() + self._timeout(timeout)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError("no pong")
            frame = await self.recv_frame(remaining)
            if frame.opcode == OP_PONG and frame.payload == payload:
                return frame
            if frame.opcode == OP_PING and self.auto_pong:
                await self.send_frame(OP_PONG, frame.payload)
            elif frame.opcode == OP_CLOSE:
                return frame

    async def is_open(self, timeout: float | None = None) -> bool:
        """True if the server answers a ping (its connection is usable)."""
        try:
            frame = await self.ping(timeout=timeout)
        except (ConnectionEnded, ConnectionError):
            return False
        return frame.opcode == OP_PONG

    async def expect_close(self, timeout: float | None = None) -> Closed:
        """Read until the server's close frame (or the end of TCP) and describe it.

        Data frames before it are collected; pings are handled as by `recv_message`.
        """
        frames: list[Frame] = []
        deadline = asyncio.get_running_loop().time() + self._timeout(timeout)
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"the server did not close (received {frames!r})")
            try:
                frame = await self.recv_message(remaining)
            except ConnectionEnded:
                return Closed(False, None, b"", frames)
            if frame.opcode == OP_CLOSE:
                code = struct.unpack("!H", frame.payload[:2])[0] if frame.payload else None
                return Closed(True, code, frame.payload[2:], frames)
            frames.append(frame)

    async def wait_eof(self, timeout: float | None = None) -> bool:
        """True if the server ends TCP within `timeout` (remaining data is discarded)."""
        try:
            async with asyncio.timeout(self._timeout(timeout)):
                while not self.stream.ended:
                    self.stream.take(len(self.stream.buffer))
                    await self.stream.wait_data()
            return True
        except TimeoutError:
            return False

    # Closing

    async def close(self, code: int | None = 1000) -> None:
        """Close politely (close frame, wait briefly for the echo), then end TCP."""
        try:
            await self.send_close(code)
            await self.expect_close(timeout=1.0)
        except (ConnectionError, TimeoutError, ConnectionEnded):
            pass
        await self.abort()

    async def abort(self) -> None:
        """End TCP at once."""
        self.transport.close()
        await asyncio.sleep(0)

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.abort()
