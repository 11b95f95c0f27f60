"""Spec scratch-cloud.md §18 cases 1-12: handshake and rooms, over real sockets."""

from __future__ import annotations

import asyncio
import json

from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    fresh_room,
    handshake_text,
    joined,
    latest_values,
    raw_connect,
    raw_handshake,
    recv,
    recv_until,
    set_line,
    set_text,
    ws_connect,
)
from tests.server.rawclient import OP_CONTINUATION, OP_TEXT


async def assert_shared(url: str, first_id_json: str, second_id_json: str) -> None:
    """A client joining with `first_id_json` and one with `second_id_json` share a room."""
    var = fresh_room("☁ v")
    a = await ws_connect(url)
    b = await ws_connect(url)
    try:
        await a.send(raw_handshake(first_id_json, '"player1"'))
        await b.send(raw_handshake(second_id_json, '"player2"'))
        await asyncio.sleep(0.1)
        await a.send(set_text(var, "1"))
        lines = await recv_until(b, lambda got: set_line(var, "1") in got)
        assert set_line(var, "1") in lines
    finally:
        await close_all(a, b)


async def test_case_01_handshake_sends_nothing(server, room):
    """A plain handshake into a new room is never acknowledged and the socket stays open."""
    a = await ws_connect(server.url)
    await a.send(json.dumps({"method": "handshake", "project_id": room, "user": "player1234"}))
    await expect_nothing(a)
    await a.close()


async def test_case_02_trailing_newline_and_pretty_json_accepted(server, room):
    """Handshakes ending in \\n (as the GUI sends) or pretty-printed are accepted."""
    a = await ws_connect(server.url)
    b = await ws_connect(server.url)
    c = await ws_connect(server.url)
    await a.send(handshake_text(room, "player1"))  # ends with "\n"
    pretty = json.dumps({"method": "handshake", "project_id": room, "user": "player2"}, indent=2)
    assert "\n" in pretty
    await b.send(" \t\r\n" + pretty + "\r\n\t ")
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    # Both are really in the room: a third client's set reaches them.
    await c.send(handshake_text(room, "player3"))
    await c.send(set_text("☁ x", "7"))
    assert await recv(a) == set_line("☁ x", "7")
    assert await recv(b) == set_line("☁ x", "7")
    await close_all(a, b, c)


async def test_case_02b_fragmented_handshake_is_reassembled(server, room):
    """A handshake split over two WebSocket frames works like an unfragmented one."""
    raw = await raw_connect(server.url)
    text = handshake_text(room).encode()
    await raw.send_frame(OP_TEXT, text[:10], fin=False)
    await raw.drain()
    await asyncio.sleep(0.05)
    await raw.send_frame(OP_CONTINUATION, text[10:])
    b = await joined(server.url, room, "player2")
    await b.send(set_text("☁ x", "1"))
    assert await raw.recv_text() == set_line("☁ x", "1")
    await close_all(raw, b)


async def test_case_03_set_relayed_exactly_and_not_echoed(server, room):
    """A set reaches the other client as compact JSON in key order, ☁ unescaped; no echo."""
    a = await joined(server.url, room, "player1")
    b = await joined(server.url, room, "player2")
    await asyncio.sleep(0.05)
    await a.send(
        '{"method":"set","name":"☁ x","value":"42","user":"player1","project_id":'
        + json.dumps(room)
        + "}\n"
    )
    assert await recv(b) == '{"method":"set","name":"☁ x","value":"42"}'
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    await close_all(a, b)


async def test_case_04_dump_on_join_in_insertion_order(server, room):
    """A client joining a room with variables gets them all at once, in insertion order."""
    a = await joined(server.url, room, "player1")
    await a.send(set_text("☁ a", "1"))
    await a.send(set_text("☁ b", "2"))
    await a.send(set_text("☁ a", "1"))  # overwriting keeps the insertion position
    await asyncio.sleep(0.1)
    await a.close()
    c = await joined(server.url, room, "player3")
    assert await recv(c) == (
        '{"method":"set","name":"☁ a","value":"1"}\n{"method":"set","name":"☁ b","value":"2"}'
    )
    await expect_nothing(c)
    await c.close()


async def test_case_04b_dump_comes_before_batched_traffic(server, room):
    """A joiner's first message is the dump even while another member is writing."""
    b = await joined(server.url, room, "player2")
    await b.send(set_text("☁ a", "1"))
    await b.send(set_text("☁ b", "2"))
    await asyncio.sleep(0.1)
    c = await ws_connect(server.url)

    async def write() -> None:
        for i in range(3, 50):
            await b.send(set_text("☁ a", str(i)))

    writer = asyncio.create_task(write())
    await c.send(handshake_text(room, "player3"))
    first = str(await recv(c)).split("\n")
    await writer
    # The first message is the dump: both variables, insertion order, nothing else.
    assert [json.loads(line)["name"] for line in first] == ["☁ a", "☁ b"], first
    # Everything after it is newer; the last value C sees is the last one written.
    lines = await recv_until(c, lambda got: latest_values(first + got)["☁ a"] == "49")
    assert latest_values(first + lines)["☁ a"] == "49"
    await expect_nothing(c)
    await close_all(b, c)


async def test_case_05_no_dump_for_new_or_empty_room(server, room):
    """Joining a new room, or an existing room without variables, sends nothing."""
    a = await joined(server.url, room, "player1")  # creates the room
    await asyncio.sleep(0.1)
    b = await joined(server.url, room, "player2")  # the room exists, without variables
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    await close_all(a, b)


async def test_case_06_project_ids_coerced_like_javascript(server):
    """project_id is coerced with JS String(): 123≡"123", 7.0≡"7", null≡"null", etc."""
    pairs = [
        ("123", '"123"'),
        ("7.0", '"7"'),
        ("1e21", '"1e+21"'),
        ("null", '"null"'),
        ("[1,[2,3]]", '"1,2,3"'),
        ("[null,1]", '",1"'),
        ("{}", '"[object Object]"'),
        ("true", '"true"'),
    ]
    await asyncio.gather(*(assert_shared(server.url, a, b) for a, b in pairs))
    # A handshake without project_id is in the room "undefined".
    var = fresh_room("☁ v")
    a = await ws_connect(server.url)
    b = await joined(server.url, "undefined", "player2")
    await a.send(raw_handshake(None))
    await asyncio.sleep(0.1)
    await a.send(set_text(var, "5"))
    assert set_line(var, "5") in await recv_until(b, lambda got: set_line(var, "5") in got)
    await close_all(a, b)


async def test_case_07_free_form_project_ids_accepted(server):
    """IDs like "@p4-project.sb3", URLs, 999 characters or 499 emoji are accepted."""
    ids = ["@p4-project.sb3", "example.com/my-project", "p4-abc-1368"]
    unique = fresh_room()
    ids.append(unique + "x" * (999 - len(unique)))
    ids.append("😀" * 499)  # 998 UTF-16 code units
    await asyncio.gather(*(assert_shared(server.url, json.dumps(i), json.dumps(i)) for i in ids))


async def test_case_08_invalid_project_ids_close_4004(server):
    """project_id "", [] or 1000 UTF-16 units closes with 4004 (the project default)."""

    async def attempt(project_id_json: str) -> None:
        ws = await ws_connect(server.url)
        await ws.send(raw_handshake(project_id_json))
        await expect_close(ws, 4004)

    ids = ['""', "[]", "[null]", json.dumps("😀" * 500), json.dumps("x" * 1000)]
    await asyncio.gather(*(attempt(p) for p in ids))


async def test_case_09_valid_usernames_accepted(server, room):
    """Usernames "player", "Player123", "-RISEN-", 20 × "e" join without being closed."""
    clients = await asyncio.gather(
        *(joined(server.url, room, user) for user in ["player", "Player123", "-RISEN-", "e" * 20,
                                                      "player1234", "iloveceebee"])
    )
    await asyncio.gather(*(expect_nothing(ws) for ws in clients))
    await close_all(*clients)


async def test_case_10_invalid_usernames_close_4002(server, room):
    """Empty, too long, spaced, non-ASCII, trailing-newline, non-string or missing users: 4002."""
    users = ['""', json.dumps("e" * 21), '"bad name"', '"abcdé"', '"player1\\n"', '"ſcratch"',
             '"\u212aelvin"', '"player\u0663\u0664"', "5", "null", '["player"]']

    async def attempt(user_json: str | None) -> None:
        ws = await ws_connect(server.url)
        await ws.send(raw_handshake(json.dumps(room), user_json))
        await expect_close(ws, 4002)

    await asyncio.gather(*(attempt(u) for u in [*users, None]))


async def test_case_11_impersonation_filter(server, room):
    """"ScratchCat", "Scratch-Cat", "ceebee" are refused with 4002; "iloveceebee" joins."""

    async def refused(user: str) -> None:
        ws = await joined(server.url, room, user)
        await expect_close(ws, 4002)

    ok = await joined(server.url, room, "iloveceebee")
    await asyncio.gather(
        expect_nothing(ok),
        *(refused(u) for u in ["ScratchCat", "Scratch-Cat", "ceebee", "CEEBEE", "Scratch_Cat"]),
    )
    await ok.close()


async def test_case_12_second_handshake_closes_4000(server, room):
    """A second handshake on a connection that already joined a room closes it with 4000."""
    a = await joined(server.url, room, "player1")
    b = await joined(server.url, room, "player2")
    await a.send(handshake_text(room, "player1"))
    await expect_close(a, 4000)
    await b.send(handshake_text(fresh_room(), "player2"))
    await expect_close(b, 4000)


async def test_handshake_checks_run_in_spec_order(server, room):
    """The first failing check wins: room ID (4004) before username (4002), both after 4000."""
    bad_room_bad_user = await ws_connect(server.url)
    await bad_room_bad_user.send(raw_handshake('""', '"bad name"'))
    twice = await joined(server.url, room, "player1")
    await twice.send(raw_handshake('""', '"bad name"'))  # second handshake: 4000 first
    await asyncio.gather(expect_close(bad_room_bad_user, 4004), expect_close(twice, 4000))
