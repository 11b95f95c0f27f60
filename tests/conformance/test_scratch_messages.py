"""Spec scratch-cloud.md §18 cases 13-25: values and message-level errors."""

from __future__ import annotations

import asyncio
import json

import pytest

from protocols.js import MAX_JSON_DEPTH
from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    fresh_room,
    handshake_text,
    joined,
    raw_handshake,
    raw_message,
    recv,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import BACKENDS, start_backend


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory):
    """These cases on one process, and on two Redis nodes behind a round-robin proxy (the two
    clients of a pair on different nodes)."""
    backend = start_backend(request.param, tmp_path_factory.mktemp(f"messages-{request.param}"))
    yield backend
    backend.stop()


async def pair(url: str, room: str):
    """Two clients, A and B, in `room`."""
    a = await joined(url, room, "player1")
    b = await joined(url, room, "player2")
    await asyncio.sleep(0.05)
    return a, b


# Values


async def test_case_13_numbers_keep_type_and_js_formatting(server, room):
    """Number values stay numbers and are formatted as JavaScript prints them."""
    a, b = await pair(server.url, room)
    cases = [
        ("5", "5"),
        ("5.0", "5"),
        ("-0", "0"),
        ("1E5", "100000"),
        ("1e-7", "1e-7"),
        ("1e21", "1e+21"),
        ("1e20", "100000000000000000000"),
        ("0.000001", "0.000001"),
        ("12345678901234567890", "12345678901234567000"),
        ("1.5e300", "1.5e+300"),
        ("-2.50", "-2.5"),
        ("0.1", "0.1"),
    ]
    for raw, expected in cases:
        await a.send(raw_message(method='"set"', name='"☁ n"', value=raw))
        assert await recv(b) == '{"method":"set","name":"☁ n","value":' + expected + "}", raw
    await close_all(a, b)


async def test_case_14_valid_strings_relayed_verbatim(server, room):
    """Numeric strings, including odd ones and 100 000 digits, are relayed unchanged."""
    a, b = await pair(server.url, room)
    values = ["", "-.", ".5", "-.5", "4.", "-0", "00003.3330000", "42", "9" * 100_000]
    for value in values:
        await a.send(set_text("☁ s", value))
        assert await recv(b) == set_line("☁ s", value), value[:20]
    await close_all(a, b)


async def test_case_15_invalid_values_silently_ignored(server, room):
    """Invalid values are dropped: nothing relayed, sender stays open, stored value unchanged."""
    a, b = await pair(server.url, room)
    await a.send(set_text("☁ v", "1"))
    assert await recv(b) == set_line("☁ v", "1")
    invalid = ["abc", "1e5", " 4", "4 ", "+5", "1,000", "0x03", "NaN", "Infinity", ".", "-",
               "--4", "4..0", "12\n", "٣٤", "²", "１２", "1" * 100_001, True, False, None, [], {}]
    for value in invalid:
        await a.send(set_text("☁ v", value))
    await a.send('{"method":"set","name":"☁ v"}')  # missing value
    await a.send('{"method":"set","name":"☁ v","value":1e400}')  # parses to Infinity
    await a.send(set_text("☁ sentinel", "2"))
    # Messages from one connection are handled in order: only the sentinel got through.
    assert await recv(b) == set_line("☁ sentinel", "2")
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    c = await joined(server.url, room, "player3")
    assert await recv(c) == set_line("☁ v", "1") + "\n" + set_line("☁ sentinel", "2")
    await close_all(a, b, c)


async def test_case_16_nan_and_infinity_literals_close_4000(server, room):
    """NaN, Infinity and -Infinity literals are invalid JSON: the sender is closed with 4000."""

    async def attempt(literal: str) -> None:
        ws = await joined(server.url, room, "player1")
        await ws.send(raw_message(method='"set"', name='"☁ n"', value=literal))
        await expect_close(ws, 4000)

    await asyncio.gather(*(attempt(lit) for lit in ["NaN", "Infinity", "-Infinity"]))


async def test_case_17_rooms_are_isolated_and_case_sensitive(server, room):
    """A set in one room never reaches another, even one whose ID differs only in case."""
    a = await joined(server.url, room, "player1")
    same = await joined(server.url, room, "player2")
    upper = await joined(server.url, room.upper(), "player3")
    other = await joined(server.url, fresh_room(), "player4")
    await asyncio.sleep(0.05)
    await a.send(set_text("☁ x", "1"))
    assert await recv(same) == set_line("☁ x", "1")
    late = await joined(server.url, room.upper(), "player5")  # no dump: the room has nothing
    await asyncio.gather(expect_nothing(upper), expect_nothing(other), expect_nothing(late))
    await close_all(a, same, upper, other, late)


# Message-level errors


async def test_case_18_set_or_create_before_handshake_closes_4000(server):
    """A set or create sent before the handshake closes the connection with 4000."""

    async def attempt(method: str) -> None:
        ws = await ws_connect(server.url)
        await ws.send(set_text("☁ x", "1", method))
        await expect_close(ws, 4000)

    await asyncio.gather(attempt("set"), attempt("create"))


async def test_case_19_non_object_or_bad_method_closes_4000(server, room):
    """Invalid JSON, non-objects, a missing or non-string method all close with 4000."""
    bad = ["{", "", "123", "null", "[]", '"handshake"', '{"name":"x"}', '{"method":1}',
           '{"method":null}', '{"method":"set"}{"method":"set"}', "\ufeff{}", "[" * 100_000]

    async def attempt(text: str, handshake_first: bool) -> None:
        ws = await (joined(server.url, room) if handshake_first else ws_connect(server.url))
        await ws.send(text)
        await expect_close(ws, 4000)

    await asyncio.gather(*(attempt(text, False) for text in bad),
                         *(attempt(text, True) for text in bad))


async def test_case_19b_duplicate_keys_last_wins(server, room):
    """With duplicate keys the last one wins, also for method (JSON.parse semantics)."""
    a, b = await pair(server.url, room)
    await a.send('{"method":"foo","method":"set","name":"☁ x","value":"1","value":"2"}')
    assert await recv(b) == set_line("☁ x", "2")
    await close_all(a, b)


async def test_case_20_unknown_method_closes_4000(server, room):
    """Unknown methods such as get, ack or foo close the connection with 4000."""

    async def attempt(method: str) -> None:
        ws = await joined(server.url, room)
        await ws.send(json.dumps({"method": method, "name": "☁ x"}))
        await expect_close(ws, 4000)

    await asyncio.gather(*(attempt(m) for m in ["get", "ack", "foo", "Set", "HANDSHAKE", ""]))


async def test_case_21_two_messages_in_one_frame_close_4000(server, room):
    """A handshake and a set joined by a newline in one message close with 4000."""
    ws = await ws_connect(server.url)
    await ws.send(handshake_text(room).rstrip("\n") + "\n" + set_text("☁ x", "1"))
    await expect_close(ws, 4000)
    b = await joined(server.url, room, "player2")  # nothing was stored
    await expect_nothing(b)
    await b.close()


async def test_case_22_delete_and_rename_ignored(server, room):
    """delete and rename, before or after the handshake, are ignored: no close, no relay."""
    a = await ws_connect(server.url)
    b = await joined(server.url, room, "player2")
    await a.send(json.dumps({"method": "delete", "name": "☁ x"}))
    await a.send(json.dumps({"method": "rename", "name": "☁ x", "new_name": "☁ y"}))
    await a.send(handshake_text(room, "player1"))
    await a.send(set_text("☁ x", "1"))
    assert await recv(b) == set_line("☁ x", "1")
    await a.send(json.dumps({"method": "rename", "name": "☁ x", "new_name": "☁ y"}))
    await a.send(json.dumps({"method": "delete", "name": "☁ x"}))
    await a.send(json.dumps({"method": "delete", "name": "☁ missing"}))
    await asyncio.gather(expect_nothing(a), expect_nothing(b))
    c = await joined(server.url, room, "player3")
    assert await recv(c) == set_line("☁ x", "1")  # still there, under its old name
    await close_all(a, b, c)


async def test_case_23_create_relayed_as_set(server, room):
    """A create message reaches the other clients as a set."""
    a, b = await pair(server.url, room)
    await a.send(set_text("☁ c", "3", "create"))
    assert await recv(b) == set_line("☁ c", "3")
    await close_all(a, b)


async def test_case_24_user_and_project_id_on_set_ignored(server, room):
    """A set carrying another project_id still goes to the room of the handshake."""
    other = fresh_room()
    a, b = await pair(server.url, room)
    c = await joined(server.url, other, "player3")
    await a.send(json.dumps({"method": "set", "name": "☁ x", "value": "5", "user": "player9",
                             "project_id": other}))
    assert await recv(b) == set_line("☁ x", "5")
    await expect_nothing(c)
    await close_all(a, b, c)


async def test_case_25_names_not_checked_on_set(server, room):
    """Unprefixed, missing, numeric and null names are stored and relayed as they are."""
    a, b = await pair(server.url, room)
    sent_and_expected = [
        (set_text("no prefix", "1"), '{"method":"set","name":"no prefix","value":"1"}'),
        ('{"method":"set","value":"8"}', '{"method":"set","value":"8"}'),
        ('{"method":"set","name":12,"value":"3"}', '{"method":"set","name":12,"value":"3"}'),
        ('{"method":"set","name":null,"value":"4"}', '{"method":"set","name":null,"value":"4"}'),
        ('{"method":"set","name":1.50,"value":"5"}', '{"method":"set","name":1.5,"value":"5"}'),
        # §4 serialisation: lone surrogates as lower-case escapes, floats nested in names.
        ('{"method":"set","name":"\\uD800\\u0001\\u00e9","value":"6"}',
         '{"method":"set","name":"\\ud800\\u0001é","value":"6"}'),
        ('{"method":"set","name":[1.0,{"a":2.50,"b":null}],"value":"7"}',
         '{"method":"set","name":[1,{"a":2.5,"b":null}],"value":"7"}'),
    ]
    for sent, expected in sent_and_expected:
        await a.send(sent)
        assert await recv(b) == expected
    await a.close()
    c = await joined(server.url, room, "player3")
    assert await recv(c) == "\n".join(expected for _, expected in sent_and_expected)
    await close_all(b, c)


# Nesting


def nested(depth: int) -> str:
    """JSON text of `depth` arrays nested in each other."""
    return "[" * depth + "]" * depth


async def test_nesting_within_the_limit_is_an_ignored_value(server, room):
    """A nested value within MAX_JSON_DEPTH is an invalid value: ignored, connection open."""
    a, b = await pair(server.url, room)
    await a.send(raw_message(method='"set"', name='"☁ n"', value=nested(MAX_JSON_DEPTH - 1)))
    await a.send(set_text("☁ n", "7"))
    assert await recv(b) == set_line("☁ n", "7")
    await close_all(a, b)


async def test_nesting_past_the_limit_closes_4000(server, room):
    """A message nested past MAX_JSON_DEPTH (600 or 50 000 deep) is refused like bad JSON."""
    for field, depth in (("value", 600), ("name", 600), ("value", 50_000)):
        a, b = await pair(server.url, room)
        fields = {"method": '"set"', "name": '"☁ n"', "value": "1", field: nested(depth)}
        await a.send(raw_message(**fields))
        await expect_close(a, 4000)
        await expect_nothing(b)
        await close_all(b)
    deep_room = await ws_connect(server.url)
    await deep_room.send(raw_handshake(nested(600)))
    await expect_close(deep_room, 4000)
    assert "Traceback" not in server.log()
