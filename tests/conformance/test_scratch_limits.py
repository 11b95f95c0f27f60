"""Spec scratch-cloud.md §18 cases 26-30: limits, framing violations and binary messages.

Limits are checked on a private server with small limits and, where cheap, at the defaults on
the shared server (128 variables, 128 clients). The room limit is only checked with a small
configured value: filling 16 384 rooms at the default would take far too long.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    fresh_room,
    handshake_text,
    joined,
    latest_values,
    private_server,
    raw_connect,
    recv,
    recv_until,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import BACKENDS, start_backend
from tests.server.rawclient import OP_BINARY, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT


@pytest.fixture(scope="module", params=BACKENDS)
def small(request, tmp_path_factory):
    """A server with at most 4 variables and 3 clients per room: one process, or two Redis
    nodes behind a round-robin proxy (the limits count both nodes)."""
    backend = start_backend(
        request.param, tmp_path_factory.mktemp(f"small-limits-{request.param}"),
        scratch={"max_variables_per_room": 4, "max_clients_per_room": 3},
    )
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def few_rooms(tmp_path_factory):
    """A server with at most 5 rooms (16 384 at the default is too slow to fill)."""
    yield from private_server(tmp_path_factory, "few-rooms", scratch={"max_rooms": 5})


async def check_variable_limit(url: str, limit: int) -> None:
    room = fresh_room()
    a = await joined(url, room, "player1")
    b = await joined(url, room, "player2")
    await asyncio.sleep(0.05)
    names = [f"☁ v{i}" for i in range(limit)]
    for i, name in enumerate(names):
        await a.send(set_text(name, str(i)))
    await recv_until(b, lambda got: len(latest_values(got)) == limit)
    await a.send(set_text("☁ one too many", "1"))
    await expect_close(a, 4000)
    c = await joined(url, room, "player3")
    dump = str(await recv(c)).split("\n")
    assert dump == [set_line(name, str(i)) for i, name in enumerate(names)]
    # The existing variables keep working for everyone else.
    await b.send(set_text(names[0], "99"))
    assert await recv(c) == set_line(names[0], "99")
    await close_all(b, c)


async def test_case_26_variable_limit_small(small):
    """With a limit of 4 variables, a 5th new name closes the sender with 4000 and isn't kept."""
    await check_variable_limit(small.url, 4)


async def test_case_26_variable_limit_default_128(server):
    """At the default, 128 variables work; a 129th name closes the sender with 4000."""
    await check_variable_limit(server.url, 128)


async def check_client_limit(url: str, limit: int) -> None:
    room = fresh_room()
    clients = await asyncio.gather(*(joined(url, room, f"player{i}") for i in range(limit)))
    await asyncio.sleep(0.1)
    extra = await joined(url, room, "extra")
    bad_user = await joined(url, room, "bad name")  # the username is checked first: 4002
    await asyncio.gather(expect_close(extra, 4000), expect_close(bad_user, 4002))
    await clients[0].close()
    await asyncio.sleep(0.1)  # on a cluster, the other node learns of the leave within ms
    newcomer = await joined(url, room, "newcomer")
    await newcomer.send(set_text("☁ x", "1"))
    await asyncio.gather(expect_nothing(newcomer),
                         *(recv(ws) for ws in clients[1:]))  # all still in the room
    await close_all(newcomer, *clients)


async def test_case_27_client_limit_small(small):
    """A 4th client in a room limited to 3 is closed with 4000; after one leaves, one can join."""
    await check_client_limit(small.url, 3)


async def test_case_27_client_limit_default_128(server):
    """The 129th concurrent client in a room is closed with 4000 at the default limit."""
    await check_client_limit(server.url, 128)


async def test_case_28_room_limit_counts_empty_rooms(few_rooms):
    """With 5 rooms existing (empty ones too), a new room closes 4003; existing ones still work."""
    rooms = [fresh_room() for _ in range(5)]
    clients = [await joined(few_rooms.url, r, "player1") for r in rooms]
    await clients[0].send(set_text("☁ kept", "1"))
    await asyncio.sleep(0.1)
    await close_all(*clients)  # the rooms are now empty, but still exist
    refused = await joined(few_rooms.url, fresh_room(), "player2")
    await expect_close(refused, 4003)
    back = await joined(few_rooms.url, rooms[0], "player3")
    assert await recv(back) == set_line("☁ kept", "1")
    other = await joined(few_rooms.url, rooms[4], "player4")
    await asyncio.gather(expect_nothing(back), expect_nothing(other))
    await close_all(back, other)


async def test_case_29_message_over_1_mib_closes_1009(server, room):
    """A text message of 1 MiB + 1 byte closes with 1009; exactly 1 MiB is accepted."""
    handshake = handshake_text(room)
    fits = await ws_connect(server.url)
    await fits.send(handshake + " " * (1_048_576 - len(handshake.encode())))  # valid JSON
    too_big = await raw_connect(server.url)
    # Only the header is needed: the server refuses from the declared length.
    frame = bytes((0x81, 0x80 | 127)) + (1_048_577).to_bytes(8, "big") + b"\0\0\0\0"
    await too_big.send_raw(frame)
    fragmented = await raw_connect(server.url)
    await fragmented.send_frame(OP_TEXT, b" " * 1_000_000, fin=False)
    await fragmented.send_raw(
        bytes((0x80, 0x80 | 126)) + (48_577).to_bytes(2, "big") + b"\0\0\0\0"
    )
    await asyncio.gather(expect_nothing(fits), expect_close(too_big, 1009),
                         expect_close(fragmented, 1009))
    await close_all(fits, too_big, fragmented)


async def test_case_29_client_still_sending_reads_its_1009(server, room):
    """A client still sending an oversized message after the server refused it reads the 1009
    close frame: the server discards the rest instead of resetting the connection under it."""
    client = await raw_connect(server.url)
    await client.send_raw(bytes((0x81, 0x80 | 127)) + (8 << 20).to_bytes(8, "big") + b"\0" * 4)
    await asyncio.sleep(0.2)  # refused by now: the rest arrives after the server's close
    for _ in range(64):
        await client.send_raw(b"x" * 65536)
    await asyncio.sleep(0.2)
    await expect_close(client, 1009)


async def test_case_29_message_over_1_mib_from_websockets_client(server, room):
    """A real client sending 1 MiB + 1 byte of text sees close code 1009."""
    ws = await ws_connect(server.url)
    try:
        await ws.send("x" * 1_048_577)
    except Exception:  # the server may close before the whole message is written
        pass
    await expect_close(ws, 1009)


async def test_case_29_invalid_utf8_closes_1007(server, room):
    """Invalid UTF-8 in a text message closes with 1007, fragmented or not."""
    plain = await raw_connect(server.url)
    await plain.send_frame(OP_TEXT, b'{"method":"handshake","user":"\xff"}')
    surrogate = await raw_connect(server.url)
    await surrogate.send_text(handshake_text(room))
    await surrogate.send_frame(OP_TEXT, b'{"method":"set","name":"\xed\xa0\x80","value":"1"}')
    fragmented = await raw_connect(server.url)
    await fragmented.send_frame(OP_TEXT, b"\xe2\x98", fin=False)
    await fragmented.send_frame(OP_CONTINUATION, b"\xff")
    await asyncio.gather(expect_close(plain, 1007), expect_close(surrogate, 1007),
                         expect_close(fragmented, 1007))
    await close_all(plain, surrogate, fragmented)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(bytes((0x81, 0x02)) + b"{}", id="unmasked"),
        pytest.param(bytes((0x83, 0x80)) + b"\0\0\0\0", id="reserved-data-opcode"),
        pytest.param(bytes((0x8B, 0x80)) + b"\0\0\0\0", id="reserved-control-opcode"),
        pytest.param(bytes((0xC1, 0x80)) + b"\0\0\0\0", id="rsv1-bit"),
        pytest.param(bytes((0x80, 0x80)) + b"\0\0\0\0", id="continuation-without-start"),
        pytest.param(bytes((0x09, 0x80)) + b"\0\0\0\0", id="fragmented-ping"),
        pytest.param(bytes((0x89, 0x80 | 126)) + (126).to_bytes(2, "big") + b"\0" * 130,
                     id="ping-over-125-bytes"),
    ],
)
async def test_case_29_framing_violations_close_1002(server, room, frame):
    """Unmasked frames, reserved opcodes or bits and other framing errors close with 1002."""
    before = await raw_connect(server.url)
    after = await raw_connect(server.url)
    await after.send_text(handshake_text(room))
    await after.drain()
    await asyncio.sleep(0.05)
    await before.send_raw(frame)
    await after.send_raw(frame)
    await asyncio.gather(expect_close(before, 1002), expect_close(after, 1002))
    await close_all(before, after)


async def test_case_29_data_frame_inside_fragmented_message_closes_1002(server):
    """A new text frame in the middle of a fragmented message closes with 1002."""
    raw = await raw_connect(server.url)
    await raw.send_frame(OP_TEXT, b'{"method":', fin=False)
    await raw.send_frame(OP_TEXT, b'"handshake"}')
    await expect_close(raw, 1002)
    await raw.abort()


async def test_case_29_control_frame_inside_fragmented_message_is_fine(server, room):
    """A ping between the fragments of a message is answered and the message still works."""
    raw = await raw_connect(server.url)
    text = handshake_text(room).encode()
    await raw.send_frame(OP_TEXT, text[:5], fin=False)
    await raw.send_frame(OP_PING, b"hello")
    await raw.send_frame(OP_CONTINUATION, text[5:])
    pong = await raw.recv_frame()
    assert (pong.opcode, pong.payload) == (OP_PONG, b"hello")
    b = await joined(server.url, room, "player2")
    await b.send(set_text("☁ x", "1"))
    assert await raw.recv_text() == set_line("☁ x", "1")
    await close_all(raw, b)


async def test_case_30_binary_messages_ignored(server, room):
    """Binary messages before or after the handshake are ignored without closing."""
    a = await ws_connect(server.url)
    await a.send(b'{"method":"handshake"}')  # binary, even though it looks like JSON
    await a.send(handshake_text(room, "player1"))
    await a.send(json.dumps({"method": "set", "name": "☁ x", "value": "1"}).encode())
    raw = await raw_connect(server.url)
    await raw.send_frame(OP_BINARY, b"\x00\xff", fin=False)  # a fragmented binary message, too
    await raw.send_frame(OP_CONTINUATION, b"\xfe")
    await raw.send_text(handshake_text(room, "player3"))
    b = await joined(server.url, room, "player2")
    await asyncio.gather(expect_nothing(a), expect_nothing(b), expect_nothing(raw))
    await a.send(set_text("☁ y", "2"))
    assert await recv(b) == set_line("☁ y", "2")
    assert await raw.recv_text() == set_line("☁ y", "2")
    await close_all(a, b, raw)
