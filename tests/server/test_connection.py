"""The Connection on its own (server.connection): upgrade, framing, closing and read budget.

A fake asyncio transport records what the connection writes and how it drives reading; a fake
host records the callbacks. Client bytes are built with `tests.server.rawclient`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from server.budget import ReadLimits
from server.codes import State
from server.config import HttpSection
from server.connection import Connection, client_id, worker_of
from server.events import EventBus
from server.http import plain_response
from tests.server.fakes import FakeTransport, decode_frames
from tests.server.rawclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_key,
    build_frame,
    close_payload,
    upgrade_request,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


@dataclass
class Settings:
    write_buffer_high: int = 65536
    max_message_bytes: int = 1024
    close_timeout: float = 0.1


class FakeSession:
    """A protocol session that records what it is told."""

    protocol_name = "fake"
    identified = False
    username = None
    room_id = None

    def __init__(self) -> None:
        self.received: list[str] = []
        self.closed_calls = 0

    def receive(self, text: str) -> None:
        self.received.append(text)

    def closed(self) -> None:
        self.closed_calls += 1


class FakeHost:
    """What a connection needs from its server, recording every callback."""

    def __init__(self, read_limits: ReadLimits | None = None, **settings) -> None:
        self.loop = asyncio.get_running_loop()
        self.events = EventBus()
        self.read_limits = read_limits or ReadLimits()
        self.worker = 0
        self.settings = Settings(**settings)
        self.http_settings = HttpSection(request_timeout=0.2)
        self.page = lambda request: plain_response(200, "OK", b"page\n",
                                                   "text/plain; charset=utf-8")
        self.body_wanted = False
        self.calls: list[tuple[str, Connection]] = []
        self.first_texts: list[str] = []
        self.session = FakeSession()

    def _record(self, name: str, connection: Connection) -> None:
        self.calls.append((name, connection))

    def connection_opened(self, connection):
        self._record("opened", connection)

    def connection_dropped(self, connection):
        self._record("dropped", connection)

    def connection_upgraded(self, connection):
        self._record("upgraded", connection)

    def connection_closed(self, connection):
        self._record("closed", connection)

    def first_text(self, connection, text):
        self.first_texts.append(text)
        connection.session = self.session
        self.session.receive(text)

    def client_address(self, peer, headers):
        return peer

    def refuse_upgrade(self, connection):
        return None

    def http_response(self, request):
        return self.page(request)

    def http_wants_body(self, method, path):
        return self.body_wanted

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def connect(host: FakeHost) -> tuple[Connection, FakeTransport]:
    connection = Connection(host)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport


def upgraded(host: FakeHost, extra: bytes = b"",
             headers: list[tuple[str, str]] | None = None) -> tuple[Connection, FakeTransport]:
    """A connection that received an upgrade request (plus `extra` bytes) and answered 101."""
    connection, transport = connect(host)
    connection.data_received(upgrade_request("127.0.0.1", 80, KEY, headers=headers) + extra)
    response = transport.writes()
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    return connection, transport


def text(payload: str) -> bytes:
    return build_frame(OP_TEXT, payload)


def sent(transport: FakeTransport) -> list[tuple[int, bytes]]:
    return decode_frames(transport.writes())


def close_code_of(frames: list[tuple[int, bytes]]) -> int | None:
    closes = [payload for opcode, payload in frames if opcode == OP_CLOSE]
    assert len(closes) == 1, frames
    return int.from_bytes(closes[0][:2], "big") if closes[0] else None


async def test_upgrade_answers_101_and_reports_it():
    """A whole upgrade request is answered 101 with the accept key; the host is told."""
    host = FakeHost()
    connection, transport = connect(host)
    assert transport.limits == (65536, 16384)
    connection.data_received(upgrade_request("127.0.0.1", 80, KEY, headers=[("User-Agent", "t")]))
    response = transport.writes()
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}".encode() in response
    assert connection.state == State.OPEN and connection.is_open
    assert host.names() == ["opened", "upgraded"]
    assert connection.header("user-agent") == "t"
    assert connection.header("Cookie") == ""
    assert connection.peer == "127.0.0.1"


async def test_upgrade_in_pieces_is_answered_too():
    """An upgrade request that arrives in several reads is still upgraded."""
    host = FakeHost()
    connection, transport = connect(host)
    request = upgrade_request("127.0.0.1", 80, KEY)
    connection.data_received(request[:20])
    connection.data_received(request[20:])
    assert transport.writes().startswith(b"HTTP/1.1 101")
    assert connection.state == State.OPEN


async def test_plain_http_request_gets_the_hosts_page_and_closes():
    """A plain GET is answered by the host's http_response, then the transport closes."""
    host = FakeHost()
    connection, transport = connect(host)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.writes().startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.closed
    connection.connection_lost(None)
    assert host.names() == ["opened", "dropped"]


async def test_plain_request_carries_its_body_and_address():
    """The host's handler gets the body, the method and the client's address."""
    host = FakeHost()
    seen = []
    host.page = lambda request: seen.append(request) or plain_response(201, "Created", b"", "x")
    connection, transport = connect(host)
    connection.data_received(b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody")
    assert transport.writes().startswith(b"HTTP/1.1 201 Created\r\n")
    assert (seen[0].method, seen[0].body, seen[0].address) == ("PUT", b"body", "127.0.0.1")


async def test_awaitable_answer_is_sent_when_ready():
    """A handler that returns an awaitable is answered once it completes, not before."""
    host = FakeHost()
    ready = asyncio.get_running_loop().create_future()

    async def later():
        await ready
        return plain_response(200, "OK", b"later\n", "text/plain")

    host.page = lambda request: later()
    connection, transport = connect(host)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.01)
    assert transport.writes() == b"" and not transport.closed
    ready.set_result(None)
    await asyncio.sleep(0.01)
    assert transport.writes().endswith(b"later\n") and transport.closed


async def test_request_still_arriving_after_the_timeout_gets_408():
    """A request that has not arrived within [http] request_timeout is answered 408."""
    host = FakeHost()
    connection, transport = connect(host)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.3)
    assert transport.writes().startswith(b"HTTP/1.1 408 Request Timeout\r\n")


async def test_answer_not_ready_within_the_timeout_gets_503():
    """A handler still working at request_timeout is cancelled and the client told 503."""
    host = FakeHost()
    cancelled = []

    async def never():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    host.page = lambda request: never()
    connection, transport = connect(host)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.sleep(0.3)
    assert transport.writes().startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert cancelled == [True] and transport.closed


async def test_100_continue_is_sent_only_when_the_body_is_wanted():
    """A client expecting 100 Continue gets it when a handler reads bodies, else the answer."""
    head = b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    host = FakeHost()
    connection, transport = connect(host)
    connection.data_received(head)
    assert transport.writes().startswith(b"HTTP/1.1 200 OK\r\n")
    host.body_wanted = True
    seen = []
    host.page = lambda request: seen.append(request.body) or plain_response(200, "OK", b"", "x")
    connection, transport = connect(host)
    connection.data_received(head)
    assert transport.writes() == b"HTTP/1.1 100 Continue\r\n\r\n"
    connection.data_received(b"ok")
    assert seen == [b"ok"] and b"HTTP/1.1 200 OK\r\n" in transport.writes()


async def test_first_text_goes_to_the_host_then_to_the_session():
    """The first text message picks the session through the host; later ones go to it."""
    host = FakeHost()
    received = []
    host.events.subscribe("message_received", lambda conn, message: received.append(message))
    connection, _ = upgraded(host, text("first"))
    connection.data_received(text("second") + text("third"))
    assert host.first_texts == ["first"]
    assert host.session.received == ["first", "second", "third"]
    assert received == ["first", "second", "third"]


async def test_frame_split_across_reads_is_delivered_once():
    """A frame arriving a byte at a time is delivered once, whole."""
    host = FakeHost()
    connection, _ = upgraded(host)
    for byte in text("héllo"):
        connection.data_received(bytes([byte]))
    assert host.session.received == ["héllo"]


async def test_fragmented_message_is_reassembled():
    """A text message in fragments, with a ping between them, arrives as one message."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.data_received(build_frame(OP_TEXT, "hel", fin=False)
                             + build_frame(OP_PING, b"p")
                             + build_frame(OP_CONTINUATION, "lo"))
    assert host.session.received == ["hello"]
    assert sent(transport) == [(OP_PONG, b"p")]


async def test_binary_messages_are_ignored():
    """A binary message is neither delivered nor an error."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.data_received(build_frame(OP_BINARY, b"\x00\x01") + text("after"))
    assert host.session.received == ["after"]
    assert connection.is_open and transport.writes() == b""


async def test_ping_is_answered_with_pong():
    """A ping is answered with a pong carrying the same payload."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.data_received(build_frame(OP_PING, b"probe"))
    assert sent(transport) == [(OP_PONG, b"probe")]


async def test_keepalive_ping_waits_for_pong():
    """ping() sends a ping and reports the previous one unanswered until a pong comes."""
    host = FakeHost()
    connection, transport = upgraded(host)
    assert connection.ping()
    assert sent(transport) == [(OP_PING, b"")]
    assert not connection.ping()
    connection.data_received(build_frame(OP_PONG))
    assert connection.ping()


async def test_unmasked_frame_fails_with_1002():
    """An unmasked client frame fails the connection with 1002 and ends our side of TCP; what
    the client still sends is discarded until it closes its side."""
    host = FakeHost()
    connection, transport = upgraded(host, text("first"))
    connection.data_received(build_frame(OP_TEXT, "x", mask=False))
    assert close_code_of(sent(transport)) == 1002
    assert transport.eof_written and connection.close_code == 1002
    assert host.session.closed_calls == 1
    # A close here would make the kernel reset the connection over the unread data, and the
    # reset can destroy the close frame before the client reads it.
    assert not transport.closed
    connection.data_received(build_frame(OP_PING, "p") + build_frame(OP_TEXT, "more"))
    assert transport.writes() == b"" and host.session.received == ["first"]
    assert connection.eof_received() is False  # the client closed: the transport closes


@pytest.mark.parametrize("frame", [
    build_frame(OP_TEXT, "x", rsv=0x40),
    build_frame(0x3, b"x"),
    build_frame(OP_PING, b"x", fin=False),
    build_frame(OP_CONTINUATION, "x"),
])
async def test_framing_violations_fail_with_1002(frame):
    """RSV bits, reserved opcodes, fragmented control frames and stray continuations are 1002."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.data_received(frame)
    assert close_code_of(sent(transport)) == 1002


async def test_invalid_utf8_fails_with_1007():
    """A text frame that is not UTF-8 fails the connection with 1007."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.data_received(build_frame(OP_TEXT, b"\xff\xfe"))
    assert close_code_of(sent(transport)) == 1007
    assert host.session.received == []


async def test_message_over_max_size_fails_with_1009():
    """A message over max_message_bytes fails with 1009, in one frame or in fragments."""
    host = FakeHost(max_message_bytes=100)
    connection, transport = upgraded(host)
    connection.data_received(text("x" * 101))
    assert close_code_of(sent(transport)) == 1009
    host = FakeHost(max_message_bytes=100)
    connection, transport = upgraded(host)
    connection.data_received(build_frame(OP_TEXT, "x" * 60, fin=False)
                             + build_frame(OP_CONTINUATION, "x" * 60))
    assert close_code_of(sent(transport)) == 1009
    host = FakeHost(max_message_bytes=100)
    connection, transport = upgraded(host)
    connection.data_received(text("x" * 100))
    assert host.first_texts == ["x" * 100] and connection.is_open


async def test_client_close_is_echoed_and_ends_the_session():
    """A client's close code is echoed, TCP ends and the session is told once."""
    host = FakeHost()
    connection, transport = upgraded(host, text("hi"))
    connection.data_received(build_frame(OP_CLOSE, close_payload(4321)))
    assert close_code_of(sent(transport)) == 4321
    assert transport.closed and connection.state == State.CLOSING
    assert host.session.closed_calls == 1
    connection.connection_lost(None)
    assert host.session.closed_calls == 1
    assert host.names()[-1] == "closed" and connection.close_code == 4321


async def test_empty_close_gets_an_empty_close():
    """A close frame without a code is answered by one without a code."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.data_received(build_frame(OP_CLOSE))
    assert close_code_of(sent(transport)) is None


async def test_server_close_waits_for_the_answer_then_ends_tcp():
    """close() sends the code and ends the session; the client's answer ends TCP."""
    host = FakeHost()
    connection, transport = upgraded(host, text("hi"))
    connection.close(4000)
    assert close_code_of(sent(transport)) == 4000
    assert host.session.closed_calls == 1 and not transport.closed
    connection.send_text("ignored")  # nothing is sent once closing
    connection.data_received(text("discarded") + build_frame(OP_CLOSE, close_payload(4000)))
    assert transport.writes() == b""
    assert host.session.received == ["hi"]
    assert transport.closed


async def test_unanswered_close_aborts_after_close_timeout():
    """A client that never answers our close is dropped after close_timeout."""
    host = FakeHost(close_timeout=0.05)
    connection, transport = upgraded(host)
    connection.close(1001)
    await asyncio.sleep(0.1)
    assert transport.aborted


async def test_connection_lost_tells_session_and_host():
    """TCP ending while open tells the session and the host once each."""
    host = FakeHost()
    connection, _ = upgraded(host, text("hi"))
    connection.connection_lost(None)
    assert connection.state == State.CLOSED
    assert host.session.closed_calls == 1
    assert host.names() == ["opened", "upgraded", "closed"]


async def test_send_text_and_frame_write_to_the_transport():
    """send_text encodes one text frame; send_frame writes pre-encoded bytes as they are."""
    host = FakeHost()
    connection, transport = upgraded(host)
    connection.send_text("héllo")
    connection.send_frame(b"\x81\x02hi")
    assert sent(transport) == [(OP_TEXT, "héllo".encode()), (OP_TEXT, b"hi")]


async def test_resume_writing_runs_the_fanout_catch_up():
    """When a paused socket drains, the fan-out's catch_up runs once for it."""
    host = FakeHost()
    connection, _ = upgraded(host)
    caught_up = []
    connection.pause_writing()
    assert connection.paused
    connection.catch_up = caught_up.append
    connection.resume_writing()
    assert not connection.paused and caught_up == [connection]
    assert connection.catch_up is None


async def test_read_budget_pauses_reading_past_the_burst():
    """Frames past the burst are not read until the budget refills; reading pauses meanwhile."""
    host = FakeHost(ReadLimits(frames_per_second=20, frame_burst=2))
    connection, transport = upgraded(host)
    connection.data_received(b"".join(text(str(i)) for i in range(5)))
    assert host.session.received == ["0", "1"]
    assert not transport.reading and transport.pauses == 1
    for _ in range(50):
        if len(host.session.received) == 5 and transport.reading:
            break
        await asyncio.sleep(0.02)
    assert host.session.received == ["0", "1", "2", "3", "4"]
    assert transport.reading and transport.resumes == 1


async def test_limit_reading_applies_a_protocols_budget():
    """limit_reading replaces the budget: a tighter burst takes effect at once."""
    host = FakeHost()
    connection, transport = upgraded(host, text("first"))
    connection.limit_reading(ReadLimits(frames_per_second=10, frame_burst=1))
    connection.data_received(text("a") + text("b") + text("c"))
    assert host.session.received == ["first", "a", "b"]  # the new burst, plus its refill
    assert not transport.reading
    connection.connection_lost(None)


def test_client_ids_carry_the_node_worker_number():
    """Ids of two nodes never meet: each has its worker number above the counter, and every
    id stays exact as a JavaScript number; one process counts 1, 2, 3."""
    assert client_id(0, 1) == 1 and client_id(0, 2) == 2
    first, second = client_id(3, 1), client_id(4, 1)
    assert first != second and worker_of(first) == 3 and worker_of(second) == 4
    assert client_id(1023, 2 ** 43 - 1) < 2 ** 53
    with pytest.raises(ValueError):
        client_id(1024, 1)
