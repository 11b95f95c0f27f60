"""The [scratch] options that change protocol behaviour (spec §1, §3, §5, §6.4, §7, §13)."""

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
    private_server,
    raw_connect,
    raw_handshake,
    recv,
    recv_until,
    set_line,
    set_text,
    ws_connect,
)

UA_MESSAGE = "Identify yourself, see https://example.invalid/policy"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """Blocked rooms (inline and file), a required User-Agent and strict variable names."""
    blocklist = tmp_path_factory.mktemp("blocklist") / "blocked.txt"
    blocklist.write_text("from-file\n\n  padded-entry  \n999\n", encoding="utf-8")
    yield from private_server(
        tmp_path_factory, "guarded",
        scratch={
            "blocked_rooms": ["blocked-inline", "12345"],
            "blocked_rooms_file": str(blocklist),
            "require_user_agent": True,
            "user_agent_message": UA_MESSAGE,
            "strict_variable_names": True,
        },
    )


@pytest.fixture(scope="module")
def permissive(tmp_path_factory):
    """delete, rename, non-numeric values and newline-separated messages all enabled."""
    yield from private_server(
        tmp_path_factory, "permissive",
        scratch={
            "allow_delete": True,
            "allow_rename": True,
            "allow_non_numeric_values": True,
            "split_newline_messages": True,
        },
    )


# Blocked rooms


async def test_blocked_rooms_close_4004(guarded):
    """Room IDs on the inline list or in the block file (numeric ones too) are refused with 4004."""

    async def attempt(project_id_json: str, code: int | None, user: str = '"player1"') -> None:
        ws = await ws_connect(guarded.url)
        await ws.send(raw_handshake(project_id_json, user))
        if code is None:
            await expect_nothing(ws)
            await ws.close()
        else:
            await expect_close(ws, code)

    await asyncio.gather(
        attempt('"blocked-inline"', 4004),
        attempt("12345", 4004),  # number 12345 is the room "12345"
        attempt('"12345"', 4004),
        attempt('"from-file"', 4004),
        attempt('"padded-entry"', 4004),  # surrounding whitespace in the file is ignored
        attempt('"blocked-inline"', 4004, '"bad name"'),  # checked before the username
        attempt("999.0", 4004),
        attempt('"Blocked-Inline"', None),  # exact, case-sensitive match
        attempt('"from-file "', None),
        attempt(json.dumps(fresh_room()), None),
    )


# Required User-Agent (the [prod] behaviour)


async def test_require_user_agent_refuses_missing_or_empty(guarded, room):
    """With require_user_agent, a missing or empty User-Agent gets the text, then close 4006."""
    missing = await ws_connect(guarded.url, user_agent=None)
    [text] = await expect_close(missing, 4006, messages=1)
    assert text == UA_MESSAGE
    empty = await raw_connect(guarded.url, user_agent=None, headers=[("User-Agent", "")])
    await empty.send_text(handshake_text(room))
    [raw_text] = await expect_close(empty, 4006, messages=1)
    assert raw_text.decode() == UA_MESSAGE
    await empty.abort()


async def test_require_user_agent_accepts_identified_clients(guarded, room):
    """With require_user_agent, a client sending a User-Agent works normally."""
    ws = await joined(guarded.url, room)
    await expect_nothing(ws)
    await ws.close()


# strict_variable_names


async def test_strict_variable_names_drop_unprefixed(guarded, room):
    """With strict_variable_names, only names starting with "☁ " are stored and relayed."""
    a = await joined(guarded.url, room, "player1")
    b = await joined(guarded.url, room, "player2")
    await asyncio.sleep(0.05)
    for text in [set_text("no prefix", "1"), '{"method":"set","value":"2"}',
                 '{"method":"set","name":12,"value":"3"}', set_text(None, "4"),
                 set_text("☁ ", "5"), set_text("☁x", "6")]:
        await a.send(text)
    await a.send(set_text("☁ ok", "7"))
    assert await recv(b) == set_line("☁ ok", "7")
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    await close_all(a, b)


# allow_delete / allow_rename


async def test_allow_delete_and_rename_before_handshake_close_4000(permissive):
    """When enabled, delete or rename before the handshake closes with 4000."""

    async def attempt(message: dict) -> None:
        ws = await ws_connect(permissive.url)
        await ws.send(json.dumps(message))
        await expect_close(ws, 4000)

    await asyncio.gather(
        attempt({"method": "delete", "name": "☁ x"}),
        attempt({"method": "rename", "name": "☁ x", "new_name": "☁ y"}),
    )


async def test_allow_delete_removes_silently(permissive, room):
    """When enabled, delete removes a variable without telling peers; a missing one closes 4000."""
    a = await joined(permissive.url, room, "player1")
    b = await joined(permissive.url, room, "player2")
    await asyncio.sleep(0.05)
    await a.send(set_text("☁ a", "1"))
    await a.send(set_text("☁ b", "2"))
    await recv_until(b, lambda got: len(got) == 2)
    await a.send(json.dumps({"method": "delete", "name": "☁ a"}))
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    c = await joined(permissive.url, room, "player3")
    assert await recv(c) == set_line("☁ b", "2")
    await a.send(json.dumps({"method": "delete", "name": "☁ a"}))  # already gone
    await expect_close(a, 4000)
    await close_all(b, c)


async def test_allow_rename_renames_in_place_silently(permissive, room):
    """When enabled, rename keeps value and position, tells no one; bad renames close 4000."""
    a = await joined(permissive.url, room, "player1")
    b = await joined(permissive.url, room, "player2")
    await asyncio.sleep(0.05)
    for name, value in [("☁ a", "1"), ("☁ b", "2"), ("☁ c", "3")]:
        await a.send(set_text(name, value))
    await recv_until(b, lambda got: len(got) == 3)
    await a.send(json.dumps({"method": "rename", "name": "☁ b", "new_name": "☁ " + "z" * 1022}))
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    c = await joined(permissive.url, room, "player3")
    assert await recv(c) == "\n".join(
        [set_line("☁ a", "1"), set_line("☁ " + "z" * 1022, "2"), set_line("☁ c", "3")]
    )
    await close_all(a, b, c)

    async def bad(message: dict) -> None:
        ws = await joined(permissive.url, room, "player4")
        await recv(ws)  # the dump
        await ws.send(json.dumps({"method": "rename", **message}))
        await expect_close(ws, 4000)

    await asyncio.gather(
        bad({"name": "☁ a", "new_name": "no prefix"}),
        bad({"name": "☁ a", "new_name": "☁ "}),
        bad({"name": "☁ a", "new_name": "☁ " + "z" * 1023}),  # 1025 UTF-16 units
        bad({"name": "☁ a"}),
        bad({"name": "☁ missing", "new_name": "☁ new"}),
        bad({"name": "☁ a", "new_name": "☁ c"}),  # already taken
    )


# allow_non_numeric_values


async def test_allow_non_numeric_values_relays_any_string(permissive, room):
    """With allow_non_numeric_values, any string up to the length limit is relayed."""
    a = await joined(permissive.url, room, "player1")
    b = await joined(permissive.url, room, "player2")
    await asyncio.sleep(0.05)
    for value in ["hello", "☁ \u2028 😀 \"\\ \t", "1e5", "x" * 100_000, 5]:
        await a.send(set_text("☁ s", value))
        assert await recv(b) == set_line("☁ s", value)
    # Escaped surrogates: a pair is sent as the character, a lone one as a lower-case escape.
    await a.send('{"method":"set","name":"☁ s","value":"\\uD83D\\uDE00 \\uDABC"}')
    assert await recv(b) == '{"method":"set","name":"☁ s","value":"😀 \\udabc"}'
    for value in ["x" * 100_001, "😀" * 50_001, True, None, [], {}]:
        await a.send(set_text("☁ s", value))
    await a.send(set_text("☁ t", "ok"))
    assert await recv(b) == set_line("☁ t", "ok")
    await close_all(a, b)


# split_newline_messages


async def test_split_newline_messages_accepts_set_vars(permissive, room):
    """With split_newline_messages, a handshake and sets joined by newlines all take effect."""
    b = await joined(permissive.url, room, "player2")
    a = await ws_connect(permissive.url)
    await a.send(
        handshake_text(room, "player1") + set_text("☁ a", "1") + "\n" + set_text("☁ b", "2")
    )
    assert await recv(b) == set_line("☁ a", "1") + "\n" + set_line("☁ b", "2")
    await a.send(set_text("☁ a", "3") + "\n" + "{bad json")
    await expect_close(a, 4000)
    assert await recv(b) == set_line("☁ a", "3")  # lines before the bad one were handled
    await b.close()


async def test_split_newline_messages_single_messages_unchanged(permissive, room):
    """With split_newline_messages, ordinary single messages (and pretty JSON) still work."""
    raw = await raw_connect(permissive.url)
    await raw.send_text(
        json.dumps({"method": "handshake", "project_id": room, "user": "p1"}, indent=1)
    )
    b = await joined(permissive.url, room, "player2")
    await b.send(set_text("☁ x", "1") + "\n")
    assert await raw.recv_text() == set_line("☁ x", "1")
    await close_all(raw, b)
