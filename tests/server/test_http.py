"""HTTP hygiene: every request that is not a valid WebSocket upgrade gets an HTTP status.

Raw TCP clients on 127.0.0.1 send what browsers, scanners, health checkers and broken clients
send (bodies, garbage, bare LF line endings, old WebSocket versions, huge heads), to a server
of this module whose log must never show a traceback.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.config import HttpSection
from server.request import MAX_REQUEST_BYTES
from server.upgrade import MAX_HEADERS, MAX_LINE
from tests.conftest import ServerProcess

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
UPGRADE_HEADERS = (f"Host: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n")
UPGRADE = f"GET / HTTP/1.1\r\n{UPGRADE_HEADERS}\r\n".encode()
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [^\r\n]*\r\n")
PING = bytes([0x89, 0x82, 1, 2, 3, 4, ord("h") ^ 1, ord("i") ^ 2])  # masked ping "hi"
MAX_BODY_BYTES = HttpSection().max_body_bytes  # the [http] max_body_bytes default


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """A private server, so its log holds only what this module's requests caused."""
    server = ServerProcess(tmp_path_factory.mktemp("http-server"),
                           {"store": {"backend": "memory"}}).start()
    yield server
    server.stop()
    assert "Traceback" not in server.log()


class Reply:
    """What the server sent on one connection, until it closed it."""

    def __init__(self, data: bytes):
        self.data = data
        head, _, self.body = data.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        self.status_line = status
        match = STATUS_LINE.match(data)
        self.status = int(match.group(1)) if match else None
        self.headers = [tuple(line.split(": ", 1)) for line in lines]

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        return found[0] if found else None


def exchange(port: int, *pieces: bytes, half_close: bool = False, pause: float = 0.05,
             timeout: float = 5.0) -> Reply:
    """Send `pieces` (in separate writes, `pause` apart), then read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for index, piece in enumerate(pieces):
            if index:
                time.sleep(pause)
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered and closed before reading it all
        if half_close:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already reset: the server answered and closed
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return Reply(received)


def assert_page_headers(reply: Reply) -> None:
    assert reply.header("X-Frame-Options") == "DENY"
    assert reply.header("X-Content-Type-Options") == "nosniff"
    assert reply.header("Cache-Control") == "no-store"
    assert reply.header("Connection") == "close"


# Bodies

def test_post_with_a_body_gets_405_with_allow(http_server):
    """A POST to / with a body is read, then answered 405 with the methods that are allowed."""
    reply = exchange(http_server.port,
                     b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", b"hello=world")
    assert reply.status_line == "HTTP/1.1 405 Method Not Allowed"
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert reply.body == b"Method not allowed.\n"
    assert_page_headers(reply)


def test_chunked_post_gets_405(http_server):
    """A chunked POST body to a GET-only page is read to its end, then answered 405."""
    reply = exchange(http_server.port, b"POST /healthz HTTP/1.1\r\nHost: a\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert reply.status == 405


def test_post_to_an_unknown_path_gets_404(http_server):
    """A POST with a body to a path nobody serves is read, then answered 404."""
    reply = exchange(http_server.port, b"POST /x HTTP/1.1\r\nHost: a\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert reply.status == 404


def test_post_expecting_100_continue_is_answered_before_its_body(http_server):
    """A client waiting for 100 Continue gets the final answer without sending its body."""
    reply = exchange(http_server.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
    assert reply.status == 405


def test_get_with_a_small_body_is_served(http_server):
    """A GET that carries a small body still gets its page."""
    reply = exchange(http_server.port,
                     b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert (reply.status, reply.body) == (200, b"ok\n")


def test_body_announced_over_the_limit_gets_413_at_once(http_server):
    """A Content-Length over the limit is answered 413 before any of the body is sent."""
    reply = exchange(http_server.port, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                     + str(MAX_BODY_BYTES + 1).encode() + b"\r\n\r\n")
    assert reply.status == 413
    assert_page_headers(reply)


def test_chunked_body_over_the_limit_gets_413(http_server):
    """A chunked body that grows past the limit is answered 413."""
    chunk = b"%x\r\n" % 4096 + b"x" * 4096 + b"\r\n"
    count = MAX_BODY_BYTES // 4096 + 1
    reply = exchange(http_server.port,
                     b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                     chunk * count)
    assert reply.status == 413


def test_client_still_sending_after_an_early_answer_is_not_reset(http_server):
    """A client that goes on sending its body after a 413 is not reset: it reads the answer."""
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        time.sleep(0.1)  # the answer is sent meanwhile
        sock.sendall(b"x" * 1_000_000)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert Reply(data).status == 413


def test_upgrade_with_a_body_gets_400(http_server):
    """A WebSocket upgrade request that carries a body is refused with 400."""
    reply = exchange(http_server.port, b"GET / HTTP/1.1\r\n" + UPGRADE_HEADERS.encode()
                     + b"Content-Length: 3\r\n\r\nabc")
    assert reply.status == 400
    assert reply.body == b"A WebSocket upgrade request has no body.\n"


# Malformed requests

MALFORMED = {
    "garbage request line": b"hello there\r\n\r\n",
    "TLS client hello": bytes.fromhex("160301020001000001fc0303") + bytes(32),
    "lower-case method and no version": b"get /\r\n\r\n",
    "header line without a colon": b"GET /healthz HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n",
    "space before colon": b"GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n",
    "control character in a value": b"GET /healthz HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
    "no Host": b"GET /healthz HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "bad Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "NUL in the target": b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_requests_get_400(http_server, name):
    """A request that is not valid HTTP/1.1 gets 400 with the page headers, then a close."""
    reply = exchange(http_server.port, MALFORMED[name])
    assert reply.status_line == "HTTP/1.1 400 Bad Request"
    assert reply.body == b"Bad Request.\n"
    assert_page_headers(reply)


def test_unknown_transfer_coding_gets_501(http_server):
    """A body in a transfer coding other than chunked gets 501."""
    reply = exchange(http_server.port,
                     b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert reply.status == 501


def test_unsupported_http_version_gets_505(http_server):
    """HTTP/2.0 or HTTP/0.9 in a request line gets 505; HTTP/1.0 without Host is served."""
    assert exchange(http_server.port, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n").status == 505
    assert exchange(http_server.port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").status == 505
    reply = exchange(http_server.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert (reply.status, reply.body) == (200, b"ok\n")


def test_half_closed_partial_request_gets_400(http_server):
    """A client that stops sending in the middle of its request is told 400 before the close."""
    reply = exchange(http_server.port, b"GET /healthz HTTP/1.1\r\nHost: a", half_close=True)
    assert reply.status == 400


def test_partial_request_times_out(make_server):
    """A request that never completes is dropped after handshake_timeout (slowloris)."""
    srv = make_server(server={"handshake_timeout": 0.5, "ping_interval": 0.2},
                      store={"backend": "memory"})
    started = time.monotonic()
    reply = exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ", timeout=10)
    assert reply.data == b""
    assert time.monotonic() - started < 5


def test_body_sent_after_an_early_answer_times_out(make_server):
    """A client that goes on sending after its answer is dropped after handshake_timeout."""
    srv = make_server(server={"handshake_timeout": 0.5, "ping_interval": 0.2},
                      store={"backend": "memory"})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10000000\r\n\r\n")
        assert Reply(sock.recv(65536)).status == 413
        deadline = time.monotonic() + 5
        with pytest.raises(OSError):  # a reset, once the server has dropped the connection
            while time.monotonic() < deadline:
                sock.sendall(b"x" * 1000)
                time.sleep(0.05)


def test_bad_requests_are_logged_escaped_at_debug_level(make_server):
    """At debug level a bad request is logged once, its control characters escaped."""
    srv = make_server(server={"log_level": "debug"}, store={"backend": "memory"})
    assert exchange(srv.port, b"\x1b[2J\x1b[31mGET / HTTP/1.1\r\n\r\n").status == 400
    deadline = time.monotonic() + 5
    while "bad HTTP request" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in srv.log().splitlines() if "bad HTTP request" in line]
    assert len(lines) == 1 and "400" in lines[0] and "\\x1b" in lines[0]
    assert "\x1b" not in srv.log()


# Line endings

def test_bare_lf_request_is_served(http_server):
    """A request whose lines end in a bare LF is read like one with CRLF."""
    reply = exchange(http_server.port, b"GET /healthz HTTP/1.1\nHost: a\n\n")
    assert (reply.status, reply.body) == (200, b"ok\n")


def test_bare_lf_upgrade_is_accepted(http_server):
    """A WebSocket upgrade with bare LF line endings is accepted, and frames after it are read."""
    request = UPGRADE.replace(b"\r\n", b"\n")
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=5) as sock:
        sock.sendall(request + PING)
        data = b""
        while b"\x8a\x02hi" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {ACCEPT}".encode() in data


def test_upgrade_in_pieces_with_pipelined_frames(http_server):
    """An upgrade arriving in pieces is accepted, and frames sent with its end are read."""
    with socket.create_connection(("127.0.0.1", http_server.port), timeout=5) as sock:
        sock.sendall(UPGRADE[:20])
        time.sleep(0.05)
        sock.sendall(UPGRADE[20:] + PING)
        data = b""
        while b"\x8a\x02hi" not in data:
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


# WebSocket refusals

def test_websocket_version_8_gets_426_with_the_supported_version(http_server):
    """Sec-WebSocket-Version: 8 gets 426 Upgrade Required naming version 13 (RFC 6455 4.2.2)."""
    reply = exchange(http_server.port, UPGRADE.replace(b"Version: 13", b"Version: 8"))
    assert reply.status_line == "HTTP/1.1 426 Upgrade Required"
    assert reply.header("Sec-WebSocket-Version") == "13"
    assert reply.header("Upgrade") == "websocket"
    assert_page_headers(reply)


def test_missing_websocket_version_gets_426(http_server):
    """An upgrade without Sec-WebSocket-Version is told which version to use."""
    request = UPGRADE.replace(b"Sec-WebSocket-Version: 13\r\n", b"")
    reply = exchange(http_server.port, request)
    assert reply.status == 426 and reply.header("Sec-WebSocket-Version") == "13"


def test_duplicate_upgrade_header_is_refused_not_crashed(http_server):
    """Two Upgrade headers get websockets' 426, not a traceback and a dropped socket."""
    request = UPGRADE.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\n" * 2)
    reply = exchange(http_server.port, request)
    assert reply.status == 426


# Size limits

def test_oversized_head_gets_431(http_server):
    """A request head over the limit gets 431, whether it arrives at once or in pieces."""
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
    assert len(filler) > MAX_REQUEST_BYTES
    request = b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + filler + b"\r\n"
    reply = exchange(http_server.port, request)
    assert reply.status_line == "HTTP/1.1 431 Request Header Fields Too Large"
    assert_page_headers(reply)
    pieces = [request[i:i + 16384] for i in range(0, len(request), 16384)]
    assert exchange(http_server.port, *pieces, pause=0.01).status == 431


def test_endless_head_gets_431(http_server):
    """Header lines that never end are cut off with 431 once the limit is reached."""
    reply = exchange(http_server.port, b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 70000)
    assert reply.status == 431


def test_websockets_line_and_header_limits_give_431(http_server):
    """A header line longer than websockets allows, or too many lines, get 431."""
    long_line = f"GET / HTTP/1.1\r\n{UPGRADE_HEADERS}X: {'v' * MAX_LINE}\r\n\r\n".encode()
    assert exchange(http_server.port, long_line).status == 431
    many = "".join(f"X-{i}: 1\r\n" for i in range(MAX_HEADERS))
    assert exchange(http_server.port,
                    f"GET / HTTP/1.1\r\n{UPGRADE_HEADERS}{many}\r\n".encode()).status == 431


def test_long_request_line_gets_414(http_server):
    """A request line longer than websockets allows gets 414."""
    reply = exchange(http_server.port,
                     b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 414


def test_repeated_x_real_ip_from_a_trusted_proxy_is_served(make_server):
    """Two X-Real-IP headers from a trusted proxy are ignored, not a traceback and a drop."""
    srv = make_server(server={"trusted_proxies": ["127.0.0.1"]}, store={"backend": "memory"})
    twice = b"X-Real-IP: 203.0.113.7\r\nX-Real-IP: 203.0.113.8\r\n"
    reply = exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + twice + b"\r\n")
    assert (reply.status, reply.body) == (200, b"ok\n")
    reply = exchange(srv.port, UPGRADE[:-2] + twice + b"\r\n", half_close=True)
    assert reply.status == 101
    assert "Traceback" not in srv.log()


# Methods and pipelining

def test_head_has_headers_and_no_body(http_server):
    """HEAD gets the GET's status and Content-Length, and no body."""
    reply = exchange(http_server.port, b"HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 200
    assert reply.header("Content-Length") == "3"
    assert reply.body == b""


def test_head_of_an_oversized_request_has_no_body(http_server):
    """An error answer to a HEAD request carries no body either."""
    reply = exchange(http_server.port, b"HEAD / HTTP/1.1\r\nHost: a\r\nContent-Length: "
                     + str(MAX_BODY_BYTES + 1).encode() + b"\r\n\r\n")
    assert reply.status == 413 and reply.body == b""


def test_pipelined_garbage_after_a_valid_request(http_server):
    """Garbage pipelined after a valid request gets no answer: one response, then the close."""
    reply = exchange(http_server.port,
                     b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n\x00\xffgarbage\r\n\r\n")
    assert (reply.status, reply.body) == (200, b"ok\n")
    assert reply.data.count(b"HTTP/1.1") == 1


def test_pipelined_request_after_a_valid_one_is_not_served(http_server):
    """Each connection serves one request: a second one pipelined behind it is not answered."""
    reply = exchange(http_server.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"GET /robots.txt HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (reply.status, reply.body) == (200, b"ok\n")


# Fuzzing

TEMPLATES = [
    UPGRADE,
    b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HEAD /robots.txt HTTP/1.0\r\n\r\n",
    UPGRADE.replace(b"\r\n", b"\n"),
]


@st.composite
def mutated(draw) -> bytes:
    """A template request with a few bytes replaced, inserted or deleted, or cut short."""
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from(b"\x00\r\n :\t\x7f\xff0aZ,;\"") | st.integers(0, 255))
        if kind == "insert":
            data.insert(position, byte)
        elif position < len(data):
            if kind == "replace":
                data[position] = byte
            else:
                del data[position]
    if draw(st.booleans()):
        data = data[: draw(st.integers(1, max(1, len(data))))]
    return bytes(data) or b"\r"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(min_size=1, max_size=300), mutated()), st.integers(1, 3))
def test_any_bytes_get_a_status_line(http_server, data, pieces):
    """Whatever bytes a client sends before half-closing, it gets a 101 or an HTTP status line,
    and the server logs no traceback."""
    step = -(-len(data) // pieces)
    reply = exchange(http_server.port, *[data[i:i + step] for i in range(0, len(data), step)],
                     half_close=True, pause=0.002)
    assert reply.status is not None, (data, reply.data[:200])
    assert "Traceback" not in http_server.log()


# Routes, methods and timeouts

def test_unknown_path_gets_404_and_options_gets_allow(http_server):
    """An unknown path is 404 whatever the method; OPTIONS on a page is 204 with Allow."""
    assert exchange(http_server.port, b"DELETE /nope HTTP/1.1\r\nHost: a\r\n\r\n").status == 404
    reply = exchange(http_server.port, b"OPTIONS /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status_line == "HTTP/1.1 204 No Content"
    assert reply.header("Allow") == "GET, HEAD, OPTIONS"
    assert reply.header("Content-Length") is None and reply.body == b""


@pytest.mark.parametrize("path", [b"/%2e%2E", b"/healthz/..", b"/./healthz", b"/%ff"])
def test_dot_segments_and_bad_encodings_get_400(http_server, path):
    """A path with a dot segment (encoded or not) or invalid UTF-8 is 400, never resolved."""
    reply = exchange(http_server.port, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert reply.status == 400 and reply.body.endswith(b".\n")
    assert_page_headers(reply)


def test_slow_request_gets_408_after_request_timeout(make_server):
    """A request still arriving after [http] request_timeout is answered 408 and closed."""
    srv = make_server(http={"request_timeout": 0.3}, store={"backend": "memory"})
    started = time.monotonic()
    reply = exchange(srv.port, b"POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
                     b"12345", timeout=5)
    assert reply.status_line == "HTTP/1.1 408 Request Timeout"
    assert 0.25 < time.monotonic() - started < 3


def test_body_limit_is_configurable(make_server):
    """[http] max_body_bytes sets the largest body: one byte more is 413."""
    srv = make_server(http={"max_body_bytes": 10}, store={"backend": "memory"})
    head = b"GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
    assert exchange(srv.port, head % 10 + b"x" * 10).status == 200
    assert exchange(srv.port, head % 11 + b"x" * 11).status == 413


def test_unknown_http_key_stops_startup(tmp_path):
    """A key the [http] table does not know stops start-up, naming it."""
    server = ServerProcess(tmp_path, {"http": {"max_body": 1}})
    with pytest.raises(RuntimeError, match=r"\[http\] max_body"):
        server.start(timeout=10)
