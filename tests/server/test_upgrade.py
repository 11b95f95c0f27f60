"""The upgrade fast path (server/upgrade.py): the pure parser, its equivalence with websockets'
`ServerProtocol`, and real joins through it on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import os
import urllib.request

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.utils import accept_key

from server.request import RequestError, RequestReader
from server.upgrade import MAX_HEADERS, MAX_LINE, parse_upgrade, switching_protocols

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3's example
REQUIRED = [
    ("Host", "127.0.0.1:9080"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]
_quiet = logging.getLogger("tests.upgrade.websockets")
_quiet.setLevel(logging.CRITICAL)


def build(headers=REQUIRED, line: bytes = b"GET / HTTP/1.1", extra=()) -> bytes:
    """A request from (name, value) pairs (str or bytes), ending with the blank line."""
    out = [line]
    for name, value in [*headers, *extra]:
        name = name.encode("latin-1") if isinstance(name, str) else name
        value = value.encode("latin-1") if isinstance(value, str) else value
        out.append(name + b": " + value)
    return b"\r\n".join(out) + b"\r\n\r\n"


def without(name: str) -> list[tuple[str, str]]:
    return [(n, v) for n, v in REQUIRED if n != name]


def replaced(name: str, value: str) -> list[tuple[str, str]]:
    return [(n, value if n == name else v) for n, v in REQUIRED]


def websockets_answer(request: bytes) -> tuple[Request | None, Response | None]:
    """What websockets' ServerProtocol makes of `request`: the parsed request and the response
    `accept` gives (None, None if it is not even a complete, valid HTTP request)."""
    protocol = ServerProtocol(logger=_quiet)
    protocol.receive_data(request)
    for received in protocol.events_received():
        if isinstance(received, Request):
            return received, protocol.accept(received)
    return None, None


def deferred_answer(request: bytes, pieces: int) -> tuple[Request | None, Response | None]:
    """What the server's path for deferred requests (h11, then websockets' `accept`) makes of
    `request` arriving in `pieces` reads (None, None if it answers with an error status)."""
    reader = RequestReader()
    step = -(-len(request) // pieces)
    parsed = None
    try:
        for start in range(0, len(request), step):
            parsed = reader.receive_data(request[start:start + step])
            if parsed is not None:
                break
    except RequestError:
        return None, None
    assert parsed is not None, request  # a whole request is never left waiting
    return parsed, ServerProtocol(logger=_quiet).accept(parsed)


def check_equivalent(request: bytes) -> bool:
    """If the fast path accepts, websockets accepts the same way, and so does the server's
    deferred path when the request arrives in pieces. True if the fast path accepted."""
    fast = parse_upgrade(request)
    if fast is None:
        return False
    parsed, response = websockets_answer(request)
    assert response is not None, request
    assert response.status_code == 101, (request, response)
    assert response.headers["Sec-WebSocket-Accept"] == fast.accept == accept_key(
        parsed.headers["Sec-WebSocket-Key"])
    # No extension and no subprotocol negotiated: exactly the response we pre-build.
    date = email.utils.parsedate_to_datetime(response.headers["Date"]).timestamp()
    assert switching_protocols(fast.accept, date) == response.serialize()
    # The same path and the same headers (names, values, order, case-insensitive lookups).
    assert fast.path == parsed.path
    assert list(fast.headers.raw_items()) == list(parsed.headers.raw_items())
    assert fast.headers == parsed.headers
    # And the server's own test for "is this an upgrade" agrees.
    assert "websocket" in parsed.headers.get("Upgrade", "").lower()
    for pieces in (1, 3):
        deferred, answer = deferred_answer(request, pieces)
        assert answer is not None and answer.status_code == 101, (request, pieces, answer)
        assert answer.headers["Sec-WebSocket-Accept"] == fast.accept
        assert deferred.path == fast.path and deferred.method == "GET"
        assert list(deferred.headers.raw_items()) == list(fast.headers.raw_items())
    return True


# (a) The parser on a corpus

def test_minimal_request():
    upgrade = parse_upgrade(build())
    assert upgrade is not None
    assert upgrade.path == "/"
    assert upgrade.accept == ACCEPT
    assert upgrade.headers["host"] == "127.0.0.1:9080"
    assert upgrade.headers.get("Sec-WebSocket-Version") == "13"
    assert "UPGRADE" in upgrade.headers and "Cookie" not in upgrade.headers
    assert upgrade.headers.get_all("cookie") == []
    assert check_equivalent(build())


TURBOWARP = (
    b"GET /?project=123 HTTP/1.1\r\n"
    b"Host: clouddata.turbowarp.org\r\n"
    b"Connection: Upgrade\r\n"
    b"Pragma: no-cache\r\n"
    b"Cache-Control: no-cache\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/120.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\n"
    b"Origin: https://turbowarp.org\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Cookie: a=1\r\n"
    b"Cookie: b=2\r\n"
    b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"\r\n"
)

FIREFOX = (
    b"GET /cloud HTTP/1.1\r\n"
    b"Host: example.org:9080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: */*\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Origin: https://turbowarp.org\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    b"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"
    b"Connection: keep-alive, Upgrade\r\n"
    b"Sec-Fetch-Dest: websocket\r\n"
    b"Pragma: no-cache\r\n"
    b"Upgrade: websocket\r\n"
    b"\r\n"
)

VALID = {
    "turbowarp": TURBOWARP,
    "firefox": FIREFOX,
    "odd case": build([(n.upper(), v.upper() if n != "Sec-WebSocket-Key" else v)
                       for n, v in REQUIRED]),
    "WebSocket": build(replaced("Upgrade", "WebSocket")),
    "connection list": build(replaced("Connection", ", keep-alive ,\tupgrade,")),
    "no space after colon": build(REQUIRED).replace(b": ", b":"),
    "tabs around values": b"".join([b"GET / HTTP/1.1\r\n"] + [
        f"{name}:\t {value} \t\r\n".encode() for name, value in REQUIRED] + [b"\r\n"]),
    "subprotocol offer": build(extra=[("Sec-WebSocket-Protocol", "chat, superchat")]),
    "two subprotocol headers": build(extra=[("Sec-WebSocket-Protocol", "a"),
                                            ("Sec-WebSocket-Protocol", "b,c")]),
    "bad extensions are ignored": build(extra=[("Sec-WebSocket-Extensions", "(((")]),
    "query and odd path": build(line=b"GET /a/b%20c?x=1&y=~!$'()*+,;=:@ HTTP/1.1"),
    "obs-text value": build(extra=[("User-Agent", b"caf\xe9 \xff")]),
    "empty value": build(extra=[("X-Empty", "")]),
    "empty host": build(replaced("Host", "")),
    "non-canonical key bits": build(replaced("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAAAB==")),
    "longest line": build(extra=[("X", "v" * (MAX_LINE - 3))]),
    "most headers": build(extra=[(f"X-{i}", "1") for i in range(MAX_HEADERS - len(REQUIRED))]),
}


@pytest.mark.parametrize("name", VALID)
def test_valid_requests_take_the_fast_path(name):
    assert check_equivalent(VALID[name]), name


def test_headers_keep_values_and_repeats():
    upgrade = parse_upgrade(TURBOWARP)
    assert upgrade.path == "/?project=123"
    assert upgrade.headers.get_all("COOKIE") == ["a=1", "b=2"]
    assert upgrade.headers["user-agent"].startswith("Mozilla/5.0")
    assert parse_upgrade(VALID["obs-text value"]).headers["User-Agent"] == "caf\xe9 \xff"
    assert parse_upgrade(VALID["tabs around values"]).headers["Upgrade"] == "websocket"


INVALID = {
    "plain GET": b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n",
    "POST": build(line=b"POST / HTTP/1.1"),
    "HEAD": build(line=b"HEAD / HTTP/1.1"),
    "lower-case method": build(line=b"get / HTTP/1.1"),
    "HTTP/1.0": build(line=b"GET / HTTP/1.0"),
    "HTTP/2": build(line=b"GET / HTTP/2"),
    "two spaces": build(line=b"GET  / HTTP/1.1"),
    "space in target": build(line=b"GET /a b HTTP/1.1"),
    "asterisk target": build(line=b"GET * HTTP/1.1"),
    "absolute target": build(line=b"GET http://a/ HTTP/1.1"),
    "non-ASCII target": build(line=b"GET /caf\xc3\xa9 HTTP/1.1"),
    "no Host": build(without("Host")),
    "no Upgrade": build(without("Upgrade")),
    "no Connection": build(without("Connection")),
    "no key": build(without("Sec-WebSocket-Key")),
    "no version": build(without("Sec-WebSocket-Version")),
    "Upgrade h2c": build(replaced("Upgrade", "h2c")),
    "Upgrade list": build(replaced("Upgrade", "websocket, h2c")),
    "Upgrade with version": build(replaced("Upgrade", "websocket/13")),
    "Connection keep-alive": build(replaced("Connection", "keep-alive")),
    "Connection empty": build(replaced("Connection", "")),
    "Connection malformed": build(replaced("Connection", "Upgrade keep-alive")),
    "version 8": build(replaced("Sec-WebSocket-Version", "8")),
    "version list": build(replaced("Sec-WebSocket-Version", "13, 8")),
    "key 15 bytes": build(replaced("Sec-WebSocket-Key", base64.b64encode(bytes(15)).decode())),
    "key 17 bytes": build(replaced("Sec-WebSocket-Key", base64.b64encode(bytes(17)).decode())),
    "key unpadded": build(replaced("Sec-WebSocket-Key", KEY.rstrip("="))),
    "key bad alphabet": build(replaced("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ-_")),
    "key with space": build(replaced("Sec-WebSocket-Key", "dGhlIHNhbXBs ZSBub25jZQ==")),
    "malformed subprotocol": build(extra=[("Sec-WebSocket-Protocol", "a b")]),
    "empty subprotocol": build(extra=[("Sec-WebSocket-Protocol", "")]),
    "Content-Length": build(extra=[("Content-Length", "0")]),
    "Transfer-Encoding": build(extra=[("Transfer-Encoding", "chunked")]),
    "obs-fold": build(extra=[("User-Agent", "a\r\n b")]),
    "space before colon": build(REQUIRED[1:], extra=[("Host ", "a")]),
    "empty name": build(extra=[("", "x")]),
    "no colon": build(extra=[("X-No-Colon", "")]).replace(b"X-No-Colon: ", b"X-No-Colon"),
    "bad name": build(extra=[("X(y)", "z")]),
    "non-ASCII name": build(extra=[(b"X-\xe9", "z")]),
    "NUL in value": build(extra=[("X", "a\x00b")]),
    "bare CR in value": build(extra=[("X", "a\rb")]),
    "bare LF in value": build(extra=[("X", "a\nb")]),
    "DEL in value": build(extra=[("X", "a\x7fb")]),
    "bare LF line end": build().replace(b"Upgrade\r\n", b"Upgrade\n", 1),
    "line too long": build(extra=[("X", "v" * (MAX_LINE - 2))]),
    "request line too long": build(line=b"GET /" + b"a" * (MAX_LINE - 13) + b" HTTP/1.1"),
    "too many headers": build(extra=[(f"X-{i}", "1")
                                     for i in range(MAX_HEADERS - len(REQUIRED) + 1)]),
}
for _name in ("Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version"):
    INVALID[f"two {_name}"] = build(extra=[(_name, dict(REQUIRED)[_name])])
INVALID["two Origin"] = build(extra=[("Origin", "https://a"), ("origin", "https://a")])


@pytest.mark.parametrize("name", INVALID)
def test_unusual_requests_defer_to_websockets(name):
    assert parse_upgrade(INVALID[name]) is None


def test_limits_match_websockets():
    """At the limits websockets still accepts; one past them it refuses (and so do we)."""
    for name in ("longest line", "most headers"):
        assert websockets_answer(VALID[name])[1].status_code == 101
    for name in ("line too long", "too many headers"):
        assert websockets_answer(INVALID[name])[1] is None
    assert websockets_answer(INVALID["request line too long"])[1] is None


def test_switching_protocols_caches_the_date():
    first = switching_protocols(ACCEPT, 1_700_000_000.2)
    assert first == (b"HTTP/1.1 101 Switching Protocols\r\nDate: Tue, 14 Nov 2023 22:13:20 GMT"
                     b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n")
    assert switching_protocols(ACCEPT, 1_700_000_000.9) == first
    assert b"22:13:21 GMT" in switching_protocols(ACCEPT, 1_700_000_001.0)


# (b) Equivalence with websockets on generated requests

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
VALUE_CHARS = "\t" + "".join(map(chr, range(0x20, 0x7F))) + "".join(map(chr, range(0x80, 0x100)))
names = st.text(TOKEN_CHARS, min_size=1, max_size=12)
values = st.text(VALUE_CHARS, max_size=30).map(lambda v: v.strip(" \t"))
EXTRA_NAMES = ["User-Agent", "Origin", "Cookie", "Pragma", "Cache-Control", "Accept-Encoding",
               "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "X-Forwarded-For"]


@st.composite
def random_case(draw, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c.lower() for c, flip in zip(name, flips, strict=True))


@st.composite
def valid_requests(draw) -> tuple[bytes, list[tuple[str, str]]]:
    """Requests the fast path should take: any order, case, extra headers, spacing."""
    key = base64.b64encode(draw(st.binary(min_size=16, max_size=16))).decode()
    fields = [
        ("Host", draw(st.sampled_from(["a", "127.0.0.1:9080", "[::1]", "x.org"]))),
        ("Upgrade", draw(st.sampled_from(["websocket", "WebSocket", "WEBSOCKET"]))),
        ("Connection", draw(st.sampled_from(
            ["Upgrade", "upgrade", "keep-alive, Upgrade", "Upgrade,keep-alive", ",upgrade,,"]))),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
    ]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(EXTRA_NAMES) | names.map(lambda n: "X-" + n))
        if name == "Sec-WebSocket-Protocol":
            value = draw(st.lists(names, min_size=1, max_size=3).map(", ".join))
        elif name == "Origin":
            continue  # at most one Origin; the required list has none
        else:
            value = draw(values)
        fields.append((name, value))
    if draw(st.booleans()):
        fields.append(("Origin", "https://turbowarp.org"))
    fields = draw(st.permutations(fields))
    fields = [(draw(random_case(name)), value) for name, value in fields]
    path = "/" + draw(st.text("".join(map(chr, range(0x21, 0x7F))), max_size=20))
    lines = [f"GET {path} HTTP/1.1"]
    for name, value in fields:
        before = draw(st.sampled_from(["", " ", "\t", "  "]))
        after = draw(st.sampled_from(["", "", " ", "\t"]))
        lines.append(f"{name}:{before}{value}{after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), fields


@st.composite
def mutated_requests(draw) -> bytes:
    """Valid requests with one or more things broken (or left alone)."""
    _, fields = draw(valid_requests())
    line = "GET / HTTP/1.1"
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from([
            "drop", "duplicate", "key", "version", "upgrade", "connection", "request line",
            "obs-fold", "spacing", "non-ascii", "body", "bytes", "insert", "protocol", "none"]))
        index = draw(st.integers(0, len(fields) - 1)) if fields else 0
        if kind == "drop" and fields:
            del fields[index]
        elif kind == "duplicate" and fields:
            fields.insert(draw(st.integers(0, len(fields))), fields[index])
        elif kind == "key":
            size = draw(st.integers(0, 24))
            key = base64.b64encode(draw(st.binary(min_size=size, max_size=size))).decode()
            key = draw(st.sampled_from([key, key.rstrip("="), key + " x", key.lower(),
                                        key.replace("+", "-")]))
            fields.append(("Sec-WebSocket-Key", key))
            fields = [f for f in fields if f[0].lower() != "sec-websocket-key" or f[1] == key]
        elif kind == "version":
            value = draw(st.sampled_from(["8", "13, 8", "", "013", "13 ", "thirteen", "1.3"]))
            fields = [f for f in fields if f[0].lower() != "sec-websocket-version"]
            fields.append(("Sec-WebSocket-Version", value))
        elif kind == "upgrade":
            value = draw(st.sampled_from(["h2c", "websocket, h2c", ",websocket", "websocket,",
                                          "web socket", "websocket/13", "", "WebSocket/"]))
            fields = [f for f in fields if f[0].lower() != "upgrade"] + [("Upgrade", value)]
        elif kind == "connection":
            value = draw(st.sampled_from(["keep-alive", "close", "", ",", "up grade",
                                          "Upgrade;x", "Upgrade keep-alive", "upgrade, ,"]))
            fields = [f for f in fields if f[0].lower() != "connection"] + [("Connection", value)]
        elif kind == "request line":
            line = draw(st.sampled_from([
                "POST / HTTP/1.1", "get / HTTP/1.1", "HEAD / HTTP/1.1", "GET / HTTP/1.0",
                "GET / HTTP/2", "GET  / HTTP/1.1", "GET /a b HTTP/1.1", "GET * HTTP/1.1",
                "GET http://a/ HTTP/1.1", "GET / HTTP/1.1 ", "GET /\xe9 HTTP/1.1", "GET /",
                "GET\t/ HTTP/1.1", "CONNECT a:1 HTTP/1.1", " GET / HTTP/1.1"]))
        elif kind == "obs-fold" and fields:
            name, value = fields[index]
            fields[index] = (name, value + "\r\n" + draw(st.sampled_from([" ", "\t"])) + "more")
        elif kind == "spacing" and fields:
            name, value = fields[index]
            fields[index] = (name + draw(st.sampled_from([" ", "\t", "\x0b"])), value)
        elif kind == "non-ascii" and fields:
            name, value = fields[index]
            char = draw(st.characters(min_codepoint=0, max_codepoint=0xFF))
            if draw(st.booleans()):
                fields[index] = (name + char, value)
            else:
                fields[index] = (name, value[:1] + char + value[1:])
        elif kind == "body":
            fields.append(draw(st.sampled_from([("Content-Length", "0"), ("Content-Length", "5"),
                                                ("Transfer-Encoding", "chunked")])))
        elif kind == "protocol":
            fields.append(("Sec-WebSocket-Protocol", draw(st.sampled_from(
                ["", "a b", "a,,b", ",", "chat", "a;b", "\xe9"]))))
        elif kind == "insert":
            fields.insert(index, (draw(names), draw(values)))
    text = line + "".join(f"\r\n{name}: {value}" for name, value in fields) + "\r\n\r\n"
    data = bytearray(text.encode("latin-1"))
    if draw(st.integers(0, 3)) == 0:  # raw byte damage somewhere
        for _ in range(draw(st.integers(1, 3))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
    data = bytes(data)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        data += b"\r\n\r\n"
        end = data.find(b"\r\n\r\n")
    return data[: end + 4]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_requests())
def test_valid_generated_requests_take_the_fast_path(case):
    request, _ = case
    assert check_equivalent(request), request


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_requests())
def test_fast_path_never_accepts_what_websockets_would_not(request):
    if check_equivalent(request):
        event("fast path")
    else:
        response = websockets_answer(request)[1]
        event(f"deferred; websockets: {response.status_code if response else 'no request'}")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_before_a_valid_request(prefix):
    request = prefix + build()
    end = request.find(b"\r\n\r\n")
    assume(end >= 0)
    check_equivalent(request[: end + 4])


# (c) Real joins through the fast path

SCRATCH_REQUEST = build(extra=[("User-Agent", "stratus-tests/1.0 (fast path)"),
                               ("Origin", "https://turbowarp.org"),
                               ("Sec-WebSocket-Extensions",
                                "permessage-deflate; client_max_window_bits")])


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes([0x80 | opcode, 0x80 | length])
    else:
        header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def text_frame(text: str) -> bytes:
    return masked(0x1, text.encode())


class Raw:
    """A plain TCP client: one HTTP request, then WebSocket frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.status = b""
        self.headers: list[tuple[str, str]] = []

    @classmethod
    async def request(cls, port: int, data: bytes) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        raw = cls(reader, writer)
        writer.write(data)
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
        status, *lines = head[:-4].decode("latin-1").split("\r\n")
        raw.status = status.encode("latin-1")
        raw.headers = [tuple(line.split(": ", 1)) for line in lines]
        return raw

    def header(self, name: str) -> str | None:
        found = [value for key, value in self.headers if key.lower() == name.lower()]
        return found[0] if found else None

    async def rest(self) -> bytes:
        """Everything until the server closes the connection."""
        async with asyncio.timeout(5):
            return await self.reader.read()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                length = int.from_bytes(await self.reader.readexactly(2), "big")
            elif length == 127:
                length = int.from_bytes(await self.reader.readexactly(8), "big")
            assert not second & 0x80, "server frames are unmasked"
            return first & 0x0F, await self.reader.readexactly(length)

    async def text_until(self, predicate, timeout: float = 5.0) -> str:
        async with asyncio.timeout(timeout):
            while True:
                opcode, payload = await self.frame()
                assert opcode == 0x1, (opcode, payload)
                for line in payload.decode().split("\n"):
                    if predicate(line):
                        return line

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def handshake_text(room: str, user: str) -> str:
    return json.dumps({"method": "handshake", "user": user, "project_id": room}) + "\n"


def set_text(name: str, value: str) -> str:
    return json.dumps({"method": "set", "name": name, "value": value}, ensure_ascii=False)


async def ws_client(url: str):
    return await connect(url, compression=None, ping_interval=None, open_timeout=5)


async def test_scratch_join_through_the_fast_path(server, room):
    assert parse_upgrade(SCRATCH_REQUEST) is not None
    raw = await Raw.request(server.port, SCRATCH_REQUEST)
    assert raw.status == b"HTTP/1.1 101 Switching Protocols"
    assert [name for name, _ in raw.headers] == [
        "Date", "Upgrade", "Connection", "Sec-WebSocket-Accept"]
    assert raw.header("Sec-WebSocket-Accept") == ACCEPT
    raw.send(text_frame(handshake_text(room, "player1")))
    other = await ws_client(server.url)
    await other.send(handshake_text(room, "player2"))
    await asyncio.sleep(0.1)
    raw.send(text_frame(set_text("☁ a", "1")))
    assert json.loads(await asyncio.wait_for(other.recv(), 5))["value"] == "1"
    await other.send(set_text("☁ b", "2"))
    line = await raw.text_until(lambda line: '"☁ b"' in line)
    assert json.loads(line) == {"method": "set", "name": "☁ b", "value": "2"}
    await other.close()
    await raw.close()


async def test_pipelined_frames_after_the_request(server, room):
    """Frames sent in the same write as the request are read once the upgrade is done."""
    other = await ws_client(server.url)
    await other.send(handshake_text(room, "player2"))
    await asyncio.sleep(0.1)
    data = (SCRATCH_REQUEST + masked(0x9, b"hi") + text_frame(handshake_text(room, "player1"))
            + text_frame(set_text("☁ piped", "7")))
    raw = await Raw.request(server.port, data)
    assert raw.status == b"HTTP/1.1 101 Switching Protocols"
    assert await raw.frame() == (0xA, b"hi")  # the pipelined ping's pong
    got = json.loads(await asyncio.wait_for(other.recv(), 5))
    assert got == {"method": "set", "name": "☁ piped", "value": "7"}
    await other.close()
    await raw.close()


CL4_HANDSHAKE = {"cmd": "handshake", "listener": "handshake_cfg",
                 "val": {"language": "Scratch", "version": {"editorType": "TurboWarp"}}}


async def test_cl4_join_through_the_fast_path(server):
    raw = await Raw.request(server.port, build(extra=[("Origin", "https://turbowarp.org")]))
    assert raw.status == b"HTTP/1.1 101 Switching Protocols"
    raw.send(text_frame(json.dumps(CL4_HANDSHAKE)))
    line = await raw.text_until(lambda line: json.loads(line).get("cmd") == "client_ip")
    assert json.loads(line)["val"] == "127.0.0.1"
    await raw.text_until(lambda line: json.loads(line).get("cmd") == "statuscode")
    raw.send(text_frame(json.dumps({"cmd": "gmsg", "val": "fast"})))
    line = await raw.text_until(lambda line: json.loads(line).get("cmd") == "gmsg")
    assert json.loads(line)["val"] == "fast"
    await raw.close()


WEBSOCKETS_REFUSALS = {
    "HTTP/1.0": INVALID["HTTP/1.0"],
    "no key": INVALID["no key"],
    "short key": INVALID["key 15 bytes"],
    "Connection keep-alive": INVALID["Connection keep-alive"],
    "POST": INVALID["POST"],
    "malformed subprotocol": INVALID["malformed subprotocol"],
    "two keys": INVALID["two Sec-WebSocket-Key"],
}


@pytest.mark.parametrize("name", WEBSOCKETS_REFUSALS)
async def test_websockets_still_refuses_what_the_fast_path_defers(server, name):
    """An upgrade websockets refuses gets its status, text and headers, plus the page headers."""
    request = WEBSOCKETS_REFUSALS[name]
    _, expected = websockets_answer(request)
    assert expected is not None and expected.status_code >= 400
    raw = await Raw.request(server.port, request)
    assert raw.status == f"HTTP/1.1 {expected.status_code} {expected.reason_phrase}".encode()
    assert await raw.rest() == expected.body
    for header in ("Allow", "Upgrade", "Content-Type", "Content-Length", "Connection"):
        assert raw.header(header) == expected.headers.get(header), header
    assert raw.header("X-Frame-Options") == "DENY"
    assert raw.header("X-Content-Type-Options") == "nosniff"
    await raw.close()


def http_get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, reply.headers["Content-Type"], reply.read()


async def test_plain_http_pages_still_work(server):
    status, kind, body = await asyncio.to_thread(http_get, server.http_url + "/healthz")
    assert (status, body) == (200, b"ok\n")
    status, kind, body = await asyncio.to_thread(http_get, server.http_url + "/robots.txt")
    assert status == 200 and body.startswith(b"User-agent: *")
    status, kind, body = await asyncio.to_thread(http_get, server.http_url + "/")
    assert status == 200 and kind.startswith("text/html") and b"Stratus" in body


async def test_server_full_refusal_on_the_fast_path(make_server, room):
    srv = make_server(server={"max_connections": 1}, store={"backend": "memory"})
    first = await Raw.request(srv.port, SCRATCH_REQUEST)
    assert first.status == b"HTTP/1.1 101 Switching Protocols"
    second = await Raw.request(srv.port, SCRATCH_REQUEST)
    assert second.status == b"HTTP/1.1 503 Service Unavailable"
    assert second.header("Connection") == "close"
    assert second.header("X-Frame-Options") == "DENY"
    assert await second.rest() == b"Server is full.\n"  # and then the server closes
    await second.close()
    first.send(text_frame(handshake_text(room, "player1")))
    first.send(masked(0x9, b"still here"))
    assert await first.frame() == (0xA, b"still here")
    await first.close()


async def test_trusted_proxy_forwarded_for_on_the_fast_path(make_server):
    srv = make_server(server={"trusted_proxies": ["127.0.0.1"]}, store={"backend": "memory"})
    request = build(extra=[("X-Forwarded-For", "203.0.113.7, 10.0.0.1")])
    assert parse_upgrade(request) is not None
    raw = await Raw.request(srv.port, request)
    assert raw.status == b"HTTP/1.1 101 Switching Protocols"
    raw.send(text_frame(json.dumps(CL4_HANDSHAKE)))
    line = await raw.text_until(lambda line: json.loads(line).get("cmd") == "client_ip")
    assert json.loads(line)["val"] == "203.0.113.7"
    await raw.close()


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP"])
async def test_forwarded_scoped_ipv6_is_plain_in_replies_and_log(make_server, header):
    """A forwarded "fe80::1%<text>" (a zone any text can fill) is the plain address everywhere."""
    srv = make_server(server={"trusted_proxies": ["127.0.0.1"], "log_level": "debug"},
                      store={"backend": "memory"})
    zone = "\x9b31mFAKE\x85 LINE"  # C1 controls: CSI and NEL, which terminals obey
    raw = await Raw.request(srv.port, build(extra=[(header, f"fe80::1%{zone}")]))
    assert raw.status == b"HTTP/1.1 101 Switching Protocols"
    raw.send(text_frame(json.dumps(CL4_HANDSHAKE)))
    line = await raw.text_until(lambda line: json.loads(line).get("cmd") == "client_ip")
    assert json.loads(line)["val"] == "fe80::1"
    await raw.close()
    scratch = await Raw.request(srv.port, build(extra=[(header, f"fe80::1%{zone}")]))
    scratch.send(text_frame("not json"))  # closed with 4000, which is logged with the peer
    assert (await scratch.frame())[0] == 0x8
    await scratch.close()
    await asyncio.sleep(0.2)
    log = srv.log()
    assert "closing fe80::1 with 4000" in log
    assert not any(char in log for char in "\x9b\x85") and "FAKE" not in log
    assert "Traceback" not in log
