"""RFC 6455 edge cases over raw sockets (scratch-cloud.md §2, §10, conformance cases 29-33, 37).

Every test drives the server with `rawclient.RawClient`, which can build any frame, split any
byte stream and read the server's frames exactly as sent.
"""

from __future__ import annotations

import json
import os

import pytest

from .rawclient import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RSV1,
    RSV2,
    RSV3,
    RawClient,
    accept_key,
    build_frame,
    close_payload,
    http_request,
    upgrade_request,
)

MAX_MESSAGE = 1_048_576
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009


def handshake_json(room: str, user: str = "player1234") -> str:
    return json.dumps({"method": "handshake", "project_id": room, "user": user})


def set_json(name: str, value) -> str:
    return json.dumps({"method": "set", "name": name, "value": value}, ensure_ascii=False)


async def peer(server, room: str) -> RawClient:
    """A well-behaved client in `room`."""
    client = await RawClient.open(server.url)
    await client.handshake(room, "player9999")
    return client


async def assert_in_room(
    client: RawClient, server, room: str, value: str = "123", timeout: float = 5.0
) -> None:
    """A peer's `set` reaches `client`, proving its handshake put it in `room`."""
    other = await peer(server, room)
    try:
        # The peer joins after `client`; a ping round trip orders the two handshakes.
        assert await other.is_open()
        await other.set_var("☁ probe", value)
        sets = await client.recv_sets(timeout)
        assert sets[-1] == {"method": "set", "name": "☁ probe", "value": value}
    finally:
        await other.close()


async def assert_failed(client: RawClient, code: int, timeout: float = 3.0) -> None:
    """The server closes with `code` and ends TCP."""
    closed = await client.expect_close(timeout)
    assert closed.frame, "the server dropped TCP without a close frame"
    assert closed.code == code
    assert closed.reason == b""
    assert await client.wait_eof(), "the server kept TCP open after failing the connection"


# Fragmentation and control frames


async def test_handshake_split_over_three_frames_joins_the_room(server, room):
    """A handshake sent in three fragments is reassembled and puts the client in the room."""
    async with await RawClient.open(server.url) as client:
        data = handshake_json(room).encode()
        await client.send_frame(OP_TEXT, data[:10], fin=False)
        await client.send_frame(OP_CONTINUATION, data[10:20], fin=False)
        await client.send_frame(OP_CONTINUATION, data[20:])
        await assert_in_room(client, server, room)


async def test_fragmented_set_is_relayed(server, room):
    """A `set` split over two fragments reaches the other members of the room."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.handshake(room)
        assert await client.is_open() and await other.is_open()
        data = set_json("☁ frag", "42").encode()
        await client.send_frame(OP_TEXT, data[:7], fin=False)
        await client.send_frame(OP_CONTINUATION, data[7:])
        assert await other.recv_sets() == [{"method": "set", "name": "☁ frag", "value": "42"}]
        await other.close()


async def test_multibyte_character_split_across_fragments_is_valid(server, room):
    """A UTF-8 character split between two fragments is valid once reassembled."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.handshake(room)
        assert await client.is_open() and await other.is_open()
        data = set_json("☁ x", "7").encode()
        cut = data.index("☁".encode()) + 1  # inside the 3-byte sequence
        await client.send_frame(OP_TEXT, data[:cut], fin=False)
        await client.send_frame(OP_CONTINUATION, data[cut:])
        assert await other.recv_sets() == [{"method": "set", "name": "☁ x", "value": "7"}]
        await other.close()


async def test_ping_inside_a_fragmented_message(server, room):
    """A ping between two fragments is answered at once and the message still arrives."""
    async with await RawClient.open(server.url) as client:
        data = handshake_json(room).encode()
        await client.send_frame(OP_TEXT, data[:15], fin=False)
        await client.send_frame(OP_PING, b"mid")
        pong = await client.recv_frame()
        assert (pong.opcode, pong.payload, pong.fin) == (OP_PONG, b"mid", True)
        await client.send_frame(OP_CONTINUATION, data[15:])
        await assert_in_room(client, server, room)


@pytest.mark.parametrize("payload", [b"", b"hello", bytes(range(125))])
async def test_ping_gets_pong_with_same_payload(server, payload):
    """A ping is answered by an unmasked pong carrying the same payload."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_PING, payload)
        pong = await client.recv_frame()
        assert (pong.opcode, pong.payload, pong.masked, pong.fin) == (OP_PONG, payload, False, True)


async def test_unsolicited_pong_is_ignored(server, room):
    """A pong nobody asked for changes nothing."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_PONG, b"whatever")
        await client.handshake(room)
        await assert_in_room(client, server, room)


async def test_binary_messages_are_ignored_before_and_after_handshake(server, room):
    """Binary messages (whole or fragmented) are ignored silently, before or after the handshake."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.send_frame(OP_BINARY, b'{"method":"set","name":"x","value":"1"}')
        await client.send_frame(OP_BINARY, b"\xff\xfe\x00", fin=False)
        await client.send_frame(OP_CONTINUATION, b"\x80")
        await client.handshake(room)
        await client.send_frame(OP_BINARY, set_json("☁ bin", "5").encode())
        await client.send_frame(OP_BINARY, os.urandom(300))
        assert await client.is_open()
        await other.expect_silence(0.3)
        await client.set_var("☁ text", "6")
        assert await other.recv_sets() == [{"method": "set", "name": "☁ text", "value": "6"}]
        await other.close()


# Framing violations → 1002


async def test_unmasked_frame_closes_1002(server, room):
    """An unmasked client frame fails the connection with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, handshake_json(room), mask=False)
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize("rsv", [RSV1, RSV2, RSV3, RSV1 | RSV2 | RSV3])
async def test_rsv_bits_close_1002(server, room, rsv):
    """A frame with an RSV bit set (no extension was negotiated) fails with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, handshake_json(room), rsv=rsv)
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize("opcode", [0x3, 0x7, 0xB, 0xF])
async def test_reserved_opcodes_close_1002(server, opcode):
    """Reserved data (3-7) and control (0xB-0xF) opcodes fail with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(opcode, b"x")
        await assert_failed(client, PROTOCOL_ERROR)


async def test_continuation_without_start_closes_1002(server):
    """A continuation frame with no message to continue fails with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_CONTINUATION, b'{"method":"x"}')
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
async def test_new_data_frame_inside_fragmented_message_closes_1002(server, opcode):
    """Starting a new text or binary message before the fragmented one ends fails with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, b'{"method":', fin=False)
        await client.send_frame(opcode, b'"handshake"}')
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "opcode",
    [
        pytest.param(OP_PING, id="ping"),
        pytest.param(OP_PONG, id="pong"),
        pytest.param(OP_CLOSE, id="close"),
    ],
)
async def test_control_frame_over_125_bytes_closes_1002(server, opcode):
    """A control frame with a payload over 125 bytes fails with 1002."""
    async with await RawClient.open(server.url) as client:
        payload = close_payload(1000, b"r" * 124) if opcode == OP_CLOSE else b"p" * 126
        await client.send_frame(opcode, payload)
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE], ids=["ping", "pong", "close"])
async def test_fragmented_control_frame_closes_1002(server, opcode):
    """A control frame without FIN fails with 1002."""
    async with await RawClient.open(server.url) as client:
        payload = close_payload(1000) if opcode == OP_CLOSE else b"p"
        await client.send_frame(opcode, payload, fin=False)
        await assert_failed(client, PROTOCOL_ERROR)


# Invalid UTF-8 → 1007


@pytest.mark.parametrize(
    "payload",
    [b'{"method":"\xff"}', b"\xc0\x80", b"\xed\xa0\x80", b"ok\xe2\x98", b"\xf4\x90\x80\x80"],
    ids=["ff", "overlong", "surrogate", "truncated", "above-max"],
)
async def test_invalid_utf8_in_one_frame_closes_1007(server, payload):
    """A text frame that is not valid UTF-8 fails with 1007."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, payload)
        await assert_failed(client, INVALID_DATA)


async def test_invalid_utf8_after_handshake_closes_1007(server, room):
    """Invalid UTF-8 after the handshake also fails with 1007."""
    async with await RawClient.open(server.url) as client:
        await client.handshake(room)
        await client.send_frame(OP_TEXT, b'{"method":"set","name":"\x80","value":"1"}')
        await assert_failed(client, INVALID_DATA)


async def test_invalid_utf8_across_fragments_closes_1007(server):
    """A fragmented text message whose reassembly is not valid UTF-8 fails with 1007."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, b'{"method":"\xe2\x98', fin=False)
        await client.send_frame(OP_CONTINUATION, b'A"}')
        await assert_failed(client, INVALID_DATA)


async def test_truncated_utf8_at_end_of_fragmented_message_closes_1007(server):
    """A fragmented text message ending in the middle of a character fails with 1007."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, b'{"method":"x"}', fin=False)
        await client.send_frame(OP_CONTINUATION, b"\xe2\x98")
        await assert_failed(client, INVALID_DATA)


# Message size → 1009


def padded_set(name: str, value: str, size: int) -> bytes:
    """A `set` message padded with JSON whitespace to exactly `size` bytes."""
    body = set_json(name, value).encode()
    return body + b" " * (size - len(body))


async def test_message_of_exactly_1_mib_is_accepted(server, room):
    """A text message of exactly 1 048 576 bytes is accepted and relayed."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.handshake(room)
        assert await client.is_open() and await other.is_open()
        await client.send_raw(build_frame(OP_TEXT, padded_set("☁ big", "1", MAX_MESSAGE)))
        assert await other.recv_sets() == [{"method": "set", "name": "☁ big", "value": "1"}]
        assert await client.is_open()
        await other.close()


async def test_fragmented_message_of_exactly_1_mib_is_accepted(server, room):
    """A fragmented text message totalling 1 048 576 bytes is accepted and relayed."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.handshake(room)
        assert await client.is_open() and await other.is_open()
        data = padded_set("☁ big", "2", MAX_MESSAGE)
        half = len(data) // 2
        await client.send_frame(OP_TEXT, data[:half], fin=False)
        await client.send_frame(OP_CONTINUATION, data[half:])
        assert await other.recv_sets() == [{"method": "set", "name": "☁ big", "value": "2"}]
        await other.close()


async def test_message_over_1_mib_in_one_frame_closes_1009(server, room):
    """A single text frame of 1 048 577 bytes fails with 1009."""
    async with await RawClient.open(server.url) as client:
        await client.handshake(room)
        client.write(build_frame(OP_TEXT, padded_set("☁ big", "1", MAX_MESSAGE + 1)))
        await assert_failed(client, TOO_BIG)


async def test_fragmented_message_over_1_mib_closes_1009(server, room):
    """Fragments adding up to 1 048 577 bytes fail with 1009."""
    async with await RawClient.open(server.url) as client:
        await client.handshake(room)
        data = padded_set("☁ big", "1", MAX_MESSAGE + 1)
        await client.send_frame(OP_TEXT, data[:MAX_MESSAGE], fin=False)
        client.write(build_frame(OP_CONTINUATION, data[MAX_MESSAGE:]))
        await assert_failed(client, TOO_BIG)


async def test_ping_between_fragments_at_the_size_limit_gets_pong(server, room):
    """A ping between fragments of a message already at 1 MiB is answered, not refused."""
    async with await RawClient.open(server.url) as client:
        await client.handshake(room)
        await client.send_frame(OP_TEXT, padded_set("☁ big", "3", MAX_MESSAGE), fin=False)
        pong = await client.ping(b"limit")
        assert (pong.opcode, pong.payload) == (OP_PONG, b"limit")


@pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
async def test_huge_announced_length_closes_1009_without_payload(server, opcode):
    """A frame header announcing 2^62 bytes fails with 1009 at once, before any payload."""
    async with await RawClient.open(server.url) as client:
        header = build_frame(opcode, b"", length=1 << 62)  # header + masking key only
        await client.send_raw(header)
        await assert_failed(client, TOO_BIG)


# Closing handshake


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4321, 4999])
async def test_client_close_code_is_echoed(server, room, code):
    """The server answers a client's close frame with the same code and ends TCP."""
    async with await RawClient.open(server.url) as client:
        await client.handshake(room)
        await client.send_close(code, "bye")
        closed = await client.expect_close()
        assert (closed.frame, closed.code, closed.reason) == (True, code, b"")
        assert await client.wait_eof()


async def test_client_close_tells_room_members_nothing(server, room):
    """When a client closes, the other members of its room receive nothing."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.handshake(room)
        assert await client.is_open()
        await client.send_close(1000)
        assert (await client.expect_close()).code == 1000
        await other.expect_silence(0.3)
        await other.close()


async def test_empty_close_is_echoed_empty(server):
    """A close frame without a payload is answered by a close frame without a payload."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_CLOSE, b"")
        frame = await client.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_CLOSE, b"")
        assert await client.wait_eof()


async def test_close_with_one_byte_payload_closes_1002(server):
    """A close frame whose payload is a single byte fails with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_CLOSE, b"\x03")
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
async def test_invalid_close_code_closes_1002(server, code):
    """A close code a peer may not send (1005, 1006, 1015, unassigned ranges) fails with 1002."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_CLOSE, close_payload(code))
        await assert_failed(client, PROTOCOL_ERROR)


async def test_close_reason_with_invalid_utf8_closes_1007(server):
    """A close reason that is not valid UTF-8 fails with 1007."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_CLOSE, close_payload(1000, b"bad \xff reason"))
        await assert_failed(client, INVALID_DATA)


async def test_close_inside_fragmented_message_is_echoed(server):
    """A close frame between fragments (control frames may interleave) is echoed normally."""
    async with await RawClient.open(server.url) as client:
        await client.send_frame(OP_TEXT, b'{"method"', fin=False)
        await client.send_close(4000)
        closed = await client.expect_close()
        assert (closed.frame, closed.code) == (True, 4000)


# How bytes are split into TCP writes


async def test_several_frames_in_one_tcp_write(server, room):
    """Handshake, ping and set frames sent in one TCP write are all handled in order."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        assert await other.is_open()
        await client.send_raw(
            build_frame(OP_TEXT, handshake_json(room))
            + build_frame(OP_PING, b"in-batch")
            + build_frame(OP_TEXT, set_json("☁ a", "1"))
            + build_frame(OP_TEXT, set_json("☁ b", "2"))
        )
        pong = await client.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"in-batch")
        received = []
        while len(received) < 2:
            received += await other.recv_sets()
        assert received == [
            {"method": "set", "name": "☁ a", "value": "1"},
            {"method": "set", "name": "☁ b", "value": "2"},
        ]
        await other.close()


async def test_frames_split_byte_by_byte(server, room):
    """Frames sent one byte per TCP write (16-bit length header included) work."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        assert await other.is_open()
        await client.send_bytewise(build_frame(OP_TEXT, handshake_json(room)))
        long_value = "9" * 200  # a 16-bit extended length
        await client.send_bytewise(build_frame(OP_TEXT, set_json("☁ slow", long_value)))
        assert await other.recv_sets() == [
            {"method": "set", "name": "☁ slow", "value": long_value}
        ]
        await other.close()


async def test_upgrade_request_and_first_frame_in_one_tcp_write(server, room):
    """A handshake frame sent in the same TCP write as the HTTP upgrade is not lost."""
    client = await RawClient.open(server.url, then=build_frame(OP_TEXT, handshake_json(room)))
    async with client:
        await assert_in_room(client, server, room, timeout=2.0)


async def test_upgrade_request_split_byte_by_byte(server, room):
    """An upgrade request trickling in one byte at a time is still accepted."""
    client = await RawClient.connect_tcp(server.url)
    async with client:
        host, port = client.peername
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        await client.send_bytewise(upgrade_request(host, port, key), pause=0.0005)
        head = await client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        assert f"Sec-WebSocket-Accept: {accept_key(key)}".encode() in head
        await client.handshake(room)
        await assert_in_room(client, server, room)


# HTTP upgrade


async def test_permessage_deflate_is_not_negotiated(server, room):
    """permessage-deflate offered by the client is declined; compressed frames then fail 1002."""
    offer = [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]
    async with await RawClient.open(server.url, headers=offer) as client:
        assert client.response.header("Sec-WebSocket-Extensions") is None
        await client.handshake(room)
        assert await client.is_open()
        await client.send_frame(OP_TEXT, b"\xf2\x4d\x2d\xc9\xc8\x4f\x01\x00", rsv=RSV1)
        await assert_failed(client, PROTOCOL_ERROR)


@pytest.mark.parametrize("path", ["/", "/foo/bar?x=1", "/?project_id=1", "/cloud/%E2%98%81"])
@pytest.mark.parametrize("origin", [None, "https://evil.example", "null"])
async def test_any_path_and_origin_accepted(server, room, path, origin):
    """Upgrades on any path and query, with any Origin (or none), are accepted."""
    headers = [("Origin", origin)] if origin else []
    async with await RawClient.open(server.url, path, headers) as client:
        await client.handshake(room)
        await assert_in_room(client, server, room)


async def test_subprotocol_offer_is_accepted_without_requiring_one(server, room):
    """Offering subprotocols does not prevent the upgrade; none (or the first) is selected."""
    offer = [("Sec-WebSocket-Protocol", "chat, superchat")]
    async with await RawClient.open(server.url, headers=offer) as client:
        assert client.response.header("Sec-WebSocket-Protocol") in (None, "chat")
        await client.handshake(room)
        await assert_in_room(client, server, room)


async def test_server_frames_are_unmasked_and_final(server, room):
    """Frames from the server are unmasked, final and carry no RSV bits."""
    async with await RawClient.open(server.url) as client:
        other = await peer(server, room)
        await client.handshake(room)
        assert await client.is_open() and await other.is_open()
        await other.set_var("☁ m", "1")
        frame = await client.recv_message()
        assert (frame.opcode, frame.fin, frame.rsv, frame.masked) == (OP_TEXT, True, 0, False)
        await other.close()


# Plain HTTP


async def test_plain_get_serves_status_page(server):
    """A plain GET of / (no upgrade) gets an HTML status page with the security headers."""
    raw = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    response = await http_request(server.http_url, raw)
    assert response.status == 200
    assert response.header("Content-Type").startswith("text/html")
    assert response.header("X-Frame-Options") == "DENY"
    assert response.header("X-Content-Type-Options") == "nosniff"
    assert response.header("Referrer-Policy") == "no-referrer"
    assert b"<html" in response.body.lower()


async def test_robots_txt_disallows_everything(server):
    """/robots.txt tells crawlers to stay away."""
    raw = b"GET /robots.txt HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    response = await http_request(server.http_url, raw)
    assert response.status == 200
    assert b"Disallow: /" in response.body


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\x16\x03\x01garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(9000),  # TLS, no line end
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET\r\n\r\n",
        b"NOT-A-METHOD / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 70000 + b"\r\n\r\n",
    ],
    ids=["binary", "tls", "version", "no-target", "method", "header", "no-key", "huge-header"],
)
async def test_garbage_http_request_is_closed_and_server_survives(server, room, garbage):
    """A malformed HTTP request ends that connection; the server keeps serving others."""
    client = await RawClient.connect_tcp(server.url)
    async with client:
        try:
            await client.send_raw(garbage)
        except ConnectionError:
            pass
        assert await client.wait_eof(), "the server kept a garbage connection open"
    async with await RawClient.open(server.url) as other:
        await other.handshake(room)
        await assert_in_room(other, server, room)


async def test_eof_in_the_middle_of_a_frame_does_not_disturb_others(server, room):
    """A client vanishing halfway through a frame leaves the room working for everyone else."""
    async with await RawClient.open(server.url) as client:
        await client.handshake(room)
        frame = build_frame(OP_TEXT, set_json("☁ half", "1"))
        await client.send_raw(frame[: len(frame) // 2])
    async with await RawClient.open(server.url) as other:
        await other.handshake(room)
        await assert_in_room(other, server, room)
