"""The Sans-I/O Scratch engine (protocols.scratch.engine) without sockets.

Each `ScratchSession` talks to a fake Peer (`tests.server.fakes.FakeMember`) and to a real room
registry wired as `Server.open_rooms` wires it (Fanout + LocalBackplane + Persister over a
memory store). Test names carry the conformance case of docs/specs/scratch-cloud.md §18 they
check, where there is one.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from protocols.scratch import (
    CODEC,
    COOKIE_WARNING,
    NAMESPACE,
    ROOM_FULL,
    ScratchOptions,
    ScratchSection,
    ScratchSession,
    connect_refusal,
)
from server.config import StoreSection
from server.plugins import Plugin, PluginManager, Refuse, on_handshake, on_variable
from server.store import open_store
from tests.server.fakes import FakeMember, FakeStore, make_registry

FLUSH = 0.05  # longer than the default burst window (2 ms): every pending batch has left


class Scratch:
    """A Scratch room namespace and helpers to connect fake peers to it."""

    def __init__(self, data_dir: Path, plugins: PluginManager | None = None, store=None,
                 **section: object) -> None:
        self.options = ScratchOptions.from_config(ScratchSection(**section))
        if store is None:
            store = open_store(StoreSection(backend="memory"), data_dir)
        self.rooms = make_registry(
            namespace=NAMESPACE,
            codec=CODEC,
            limits=self.options.room_limits(3600.0, 1000, ROOM_FULL),
            settings=self.options.fanout_settings(),
            store=store,
        )
        self.plugins = plugins

    def connect(self, name: str = "", headers: dict[str, str] | None = None) -> FakeMember:
        """A new peer with its session (not handshaken)."""
        peer = FakeMember(name, headers)
        peer.session = ScratchSession(peer, self.rooms, self.options, self.plugins)
        return peer

    def join(self, room: str, user: str = "player1234") -> FakeMember:
        """A peer that handshook into `room`."""
        peer = self.connect(user)
        send(peer, {"method": "handshake", "project_id": room, "user": user})
        return peer


def send(peer: FakeMember, message: object) -> None:
    """Hand the session one text message (a dict is sent as JSON)."""
    text = message if isinstance(message, str) else json.dumps(message, ensure_ascii=False)
    peer.session.receive(text)


def set_var(peer: FakeMember, name: str, value: object) -> None:
    send(peer, {"method": "set", "name": name, "value": value})


@pytest.fixture
async def scratch(tmp_path):
    """A Scratch namespace with default settings."""
    return Scratch(tmp_path)


# Handshake and dump


async def test_case01_handshake_joins_silently(scratch):
    """A handshake into a new room joins it, sends nothing and keeps the connection open."""
    peer = scratch.join("R")
    assert peer.is_open and peer.closes == []
    assert peer.frames() == []
    room = scratch.rooms.get("R")
    assert room is not None and peer in room.members
    assert peer.session.identified and peer.session.room_id == "R"


async def test_case02_handshake_with_trailing_newline(scratch):
    """A handshake ending in a newline, or pretty-printed over lines, is accepted."""
    first = scratch.connect()
    send(first, '{"method":"handshake","project_id":"R","user":"player1"}\n')
    second = scratch.connect()
    send(second, '{\n  "method": "handshake",\n  "project_id": "R",\n  "user": "player2"\n}')
    assert first.is_open and second.is_open
    assert set(scratch.rooms.get("R").members) == {first, second}


async def test_case04_dump_is_one_frame_in_insertion_order(scratch):
    """A client joining a room with variables gets them all as one message, oldest first."""
    author = scratch.join("R")
    set_var(author, "☁ a", "1")
    set_var(author, "☁ b", "2")
    await asyncio.sleep(FLUSH)
    late = scratch.join("R", "player2")
    assert late.frames() == [
        '{"method":"set","name":"☁ a","value":"1"}\n{"method":"set","name":"☁ b","value":"2"}'
    ]


async def test_case05_empty_room_sends_no_dump(scratch):
    """Joining a room with no variables sends nothing."""
    scratch.join("R")
    second = scratch.join("R", "player2")
    assert second.frames() == []


async def test_case03_set_reaches_others_not_author(scratch):
    """A set reaches the other member, compact and in key order, and never its author."""
    author = scratch.join("R", "player1")
    other = scratch.join("R", "player2")
    send(author, '{"method":"set","name":"☁ x","value":"42","user":"player1","project_id":"R"}\n')
    await asyncio.sleep(FLUSH)
    assert other.frames() == ['{"method":"set","name":"☁ x","value":"42"}']
    assert author.frames() == []


async def test_case17_rooms_are_separate(scratch):
    """A set in one room never reaches another, even one whose id differs only by case."""
    author = scratch.join("R")
    scratch.join("R", "player2")
    elsewhere = scratch.join("r", "player3")
    set_var(author, "☁ x", 1)
    await asyncio.sleep(FLUSH)
    assert elsewhere.frames() == []


async def test_case34_burst_sends_latest_value_once(scratch):
    """Twenty sets of one variable within a flush reach a peer as one line with the last value."""
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    for value in range(1, 21):
        set_var(author, "☁ x", value)
    await asyncio.sleep(FLUSH)
    assert other.lines() == ['{"method":"set","name":"☁ x","value":20}']


# Violations and refusals


@pytest.mark.parametrize("text", ["not json", "123", "null", "[]", '{"name":"x"}', '{"method":1}'])
async def test_case19_invalid_messages_close_4000(scratch, text):
    """Invalid JSON or a message that is not a method object closes with 4000."""
    peer = scratch.connect()
    send(peer, text)
    assert peer.close_code == 4000


async def test_case16_nan_value_is_invalid_json(scratch):
    """A raw NaN value is invalid JSON in JavaScript, so it closes with 4000."""
    peer = scratch.join("R")
    send(peer, '{"method":"set","name":"☁ n","value":NaN}')
    assert peer.close_code == 4000
    assert peer not in scratch.rooms.get("R").members


@pytest.mark.parametrize("method", ["set", "create"])
async def test_case18_set_before_handshake_closes_4000(scratch, method):
    """A set or create before the handshake closes with 4000."""
    peer = scratch.connect()
    send(peer, {"method": method, "name": "☁ x", "value": 1})
    assert peer.close_code == 4000


async def test_case20_unknown_method_closes_4000(scratch):
    """An unknown method after the handshake closes with 4000."""
    peer = scratch.join("R")
    send(peer, {"method": "get"})
    assert peer.close_code == 4000


async def test_case12_second_handshake_closes_4000(scratch):
    """A second handshake on a connection already in a room closes with 4000."""
    peer = scratch.join("R")
    send(peer, {"method": "handshake", "project_id": "S", "user": "player1"})
    assert peer.close_code == 4000
    assert peer not in scratch.rooms.get("R").members


@pytest.mark.parametrize("room_id", ["", [], "😀" * 500])
async def test_case08_invalid_room_id_closes_with_configured_code(tmp_path, room_id):
    """An invalid room id closes with invalid_room_close_code (4004 by default, or 4000)."""
    for code in (4004, 4000):
        scratch = Scratch(tmp_path, invalid_room_close_code=code)
        peer = scratch.connect()
        send(peer, {"method": "handshake", "project_id": room_id, "user": "player1"})
        assert peer.close_code == code


async def test_blocked_room_from_config_closes_4004(tmp_path):
    """A project listed in [scratch] blocked_rooms is refused with 4004."""
    scratch = Scratch(tmp_path, blocked_rooms=["banned"])
    peer = scratch.join("banned")
    assert peer.close_code == 4004
    assert scratch.rooms.get("banned") is None


async def test_blocked_room_at_run_time_closes_members_and_refuses_joins(scratch):
    """Blocking a room closes its members with 4004 and refuses new joins; unblocking allows."""
    member = scratch.join("R")
    assert scratch.rooms.block("R", 4004) == 1
    assert member.close_code == 4004
    assert not scratch.rooms.get("R").members
    assert scratch.join("R", "player2").close_code == 4004
    assert scratch.rooms.unblock("R")
    assert scratch.join("R", "player3").is_open


@pytest.mark.parametrize("user", ["", "e" * 21, "bad name", "abcdé", "player1\n", 5, None])
async def test_case10_invalid_username_closes_4002(scratch, user):
    """An invalid or missing username closes with 4002."""
    peer = scratch.connect()
    message = {"method": "handshake", "project_id": "R"}
    if user is not None:
        message["user"] = user
    send(peer, message)
    assert peer.close_code == 4002


async def test_case11_builtin_filter_refuses_impersonation(scratch):
    """Names like "ScratchCat" are refused with 4002 while "iloveceebee" is accepted."""
    assert scratch.join("R", "Scratch-Cat").close_code == 4002
    assert scratch.join("R", "iloveceebee").is_open


async def test_case27_room_full_closes_4000(tmp_path):
    """The client past max_clients_per_room is closed with 4000; once one leaves, one joins."""
    scratch = Scratch(tmp_path, max_clients_per_room=2)
    first = scratch.join("R", "player1")
    scratch.join("R", "player2")
    third = scratch.join("R", "player3")
    assert third.close_code == 4000
    first.close(1000)
    assert scratch.join("R", "player4").is_open


async def test_case26_too_many_variables_closes_4000(tmp_path):
    """A new variable past max_variables_per_room closes its sender with 4000; others still set."""
    scratch = Scratch(tmp_path, max_variables_per_room=2)
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    set_var(author, "☁ a", 1)
    set_var(author, "☁ b", 2)
    set_var(author, "☁ c", 3)
    assert author.close_code == 4000
    room = scratch.rooms.get("R")
    assert '"☁ c"' not in room.values
    set_var(other, "☁ a", 5)
    assert other.is_open and room.values['"☁ a"'] == 5


async def test_case28_too_many_rooms_closes_4003(tmp_path):
    """A handshake for a new room past max_rooms closes with 4003; existing rooms still join."""
    scratch = Scratch(tmp_path, max_rooms=1)
    scratch.join("R")
    assert scratch.join("S", "player2").close_code == 4003
    assert scratch.join("R", "player3").is_open


# Values and names


@pytest.mark.parametrize("value", ["abc", "1e5", " 4", "+5", "NaN", "٣٤", True, None, [], {}])
async def test_case15_invalid_values_are_ignored(scratch, value):
    """An invalid value is silently ignored: not stored, not relayed, the connection stays open."""
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    set_var(author, "☁ x", "1")
    set_var(author, "☁ x", value)
    await asyncio.sleep(FLUSH)
    assert author.is_open
    assert scratch.rooms.get("R").values['"☁ x"'] == "1"
    assert other.lines() == ['{"method":"set","name":"☁ x","value":"1"}']


async def test_case23_create_is_relayed_as_set(scratch):
    """A create is relayed to peers as a set."""
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    send(author, {"method": "create", "name": "☁ x", "value": 3})
    await asyncio.sleep(FLUSH)
    assert other.frames() == ['{"method":"set","name":"☁ x","value":3}']


async def test_case25_unprefixed_and_missing_names_are_relayed(scratch):
    """Names are not checked by default: a name with no prefix and a missing name are relayed."""
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    set_var(author, "no prefix", 1)
    send(author, {"method": "set", "value": "8"})
    await asyncio.sleep(FLUSH)
    assert other.lines() == ['{"method":"set","name":"no prefix","value":1}',
                             '{"method":"set","value":"8"}']


async def test_strict_variable_names_drop_unprefixed_writes(tmp_path):
    """With strict_variable_names, a write to a name without the cloud prefix is dropped."""
    scratch = Scratch(tmp_path, strict_variable_names=True)
    author = scratch.join("R")
    set_var(author, "no prefix", 1)
    set_var(author, "☁ ok", 2)
    assert author.is_open
    assert list(scratch.rooms.get("R").values) == ['"☁ ok"']


# delete and rename


@pytest.mark.parametrize("method", ["delete", "rename"])
async def test_case22_delete_and_rename_ignored_by_default(scratch, method):
    """delete and rename are ignored by default, before or after the handshake."""
    early = scratch.connect()
    send(early, {"method": method, "name": "☁ x", "new_name": "☁ y"})
    assert early.is_open
    author = scratch.join("R")
    set_var(author, "☁ x", 1)
    send(author, {"method": method, "name": "☁ x", "new_name": "☁ y"})
    assert author.is_open
    assert scratch.rooms.get("R").values == {'"☁ x"': 1}


async def test_delete_when_enabled_removes_the_variable(tmp_path):
    """With allow_delete, a delete removes the variable (not broadcast); a missing one is 4000."""
    scratch = Scratch(tmp_path, allow_delete=True)
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    set_var(author, "☁ x", 1)
    set_var(author, "☁ y", 2)
    send(author, {"method": "delete", "name": "☁ x"})
    await asyncio.sleep(FLUSH)
    assert other.lines() == ['{"method":"set","name":"☁ y","value":2}']
    assert scratch.join("R", "player3").frames() == ['{"method":"set","name":"☁ y","value":2}']
    send(author, {"method": "delete", "name": "☁ x"})
    assert author.close_code == 4000


async def test_rename_when_enabled_keeps_position(tmp_path):
    """With allow_rename, a rename keeps the value and its place; a bad new name closes 4000."""
    scratch = Scratch(tmp_path, allow_rename=True)
    author = scratch.join("R")
    set_var(author, "☁ a", 1)
    set_var(author, "☁ b", 2)
    send(author, {"method": "rename", "name": "☁ a", "new_name": "☁ z"})
    assert author.is_open
    assert scratch.join("R", "player2").frames() == [
        '{"method":"set","name":"☁ z","value":1}\n{"method":"set","name":"☁ b","value":2}'
    ]
    send(author, {"method": "rename", "name": "☁ z", "new_name": "no prefix"})
    assert author.close_code == 4000


async def test_rename_onto_an_existing_variable_closes_4000(tmp_path):
    """A rename onto a name that already exists closes with 4000 and changes nothing."""
    scratch = Scratch(tmp_path, allow_rename=True)
    author = scratch.join("R")
    set_var(author, "☁ a", 1)
    set_var(author, "☁ b", 2)
    send(author, {"method": "rename", "name": "☁ a", "new_name": "☁ b"})
    assert author.close_code == 4000
    assert scratch.rooms.get("R").values == {'"☁ a"': 1, '"☁ b"': 2}


# Several messages in one


async def test_case21_two_objects_in_one_message_close_4000(scratch):
    """Two JSON objects joined by a newline in one message close with 4000 by default."""
    peer = scratch.connect()
    send(peer, '{"method":"handshake","project_id":"R","user":"player1"}\n'
               '{"method":"set","name":"☁ x","value":1}')
    assert peer.close_code == 4000


async def test_split_newline_messages_handles_each_line(tmp_path):
    """With split_newline_messages, each line of a message is handled in order."""
    scratch = Scratch(tmp_path, split_newline_messages=True)
    other = scratch.join("R", "player2")
    peer = scratch.connect()
    send(peer, '{"method":"handshake","project_id":"R","user":"player1"}\n'
               '{"method":"set","name":"☁ x","value":1}\n\n'
               '{"method":"set","name":"☁ y","value":2}\n')
    await asyncio.sleep(FLUSH)
    assert peer.is_open
    assert other.lines() == ['{"method":"set","name":"☁ x","value":1}',
                             '{"method":"set","name":"☁ y","value":2}']


async def test_split_newline_messages_still_closes_on_a_bad_line(tmp_path):
    """With split_newline_messages, an invalid line still closes with 4000."""
    scratch = Scratch(tmp_path, split_newline_messages=True)
    peer = scratch.join("R")
    send(peer, '{"method":"set","name":"☁ x","value":1}\nnot json')
    assert peer.close_code == 4000


# Leaving


async def test_case37_leaving_tells_nobody(scratch):
    """A client that leaves is removed from its room and the others receive nothing."""
    leaver = scratch.join("R")
    other = scratch.join("R", "player2")
    leaver.close(1000)
    await asyncio.sleep(FLUSH)
    assert list(scratch.rooms.get("R").members) == [other]
    assert other.frames() == []


async def test_send_variable_reaches_only_that_client(scratch):
    """send_variable sends one client a set that is neither stored nor relayed."""
    peer = scratch.join("R")
    other = scratch.join("R", "player2")
    peer.session.send_variable("☁ secret", "7")
    await asyncio.sleep(FLUSH)
    assert peer.frames() == ['{"method":"set","name":"☁ secret","value":"7"}']
    assert other.frames() == []
    assert scratch.rooms.get("R").values == {}


# Rooms read from the store off the loop


async def test_messages_wait_in_order_while_the_room_loads(tmp_path):
    """Sets sent while the room is read from the store are applied after the stored values."""
    store = FakeStore({"R": [('"☁ old"', 0, "1")]})
    store.loads_block = True
    scratch = Scratch(tmp_path, store=store)
    peer = scratch.join("R")
    assert peer.session.queued == []
    set_var(peer, "☁ new", "2")
    for _ in range(100):
        if scratch.rooms.get("R") is not None and peer.session.queued is None:
            break
        await asyncio.sleep(0.01)
    room = scratch.rooms.get("R")
    assert peer in room.members
    assert room.values == {'"☁ old"': "1", '"☁ new"': "2"}
    assert peer.frames() == ['{"method":"set","name":"☁ old","value":"1"}']
    scratch.rooms.close()


# Plugins


class Gatekeeper(Plugin):
    @on_handshake
    def check(self, client):
        if client.username == "intruder":
            raise Refuse(close_code=4004)
        if client.username == "stranger":
            raise Refuse()


class SlowGatekeeper(Plugin):
    @on_handshake
    async def check(self, client):
        await asyncio.sleep(0.01)
        if client.username == "intruder":
            raise Refuse(close_code=4003)


class Doubler(Plugin):
    @on_variable("☁ double*")
    def double(self, write):
        return str(int(write.value) * 2)

    @on_variable("☁ secret")
    def secret(self, write):
        raise Refuse()


def plugin_manager(*plugins: type[Plugin]) -> PluginManager:
    manager = PluginManager(host=None)
    for plugin in plugins:
        manager.add(plugin)
    return manager


async def test_handshake_hook_refusal_closes_with_its_code(tmp_path):
    """A Refuse from an on_handshake hook closes with its close_code (4002 by default)."""
    scratch = Scratch(tmp_path, plugins=plugin_manager(Gatekeeper))
    assert scratch.join("R", "intruder").close_code == 4004
    assert scratch.join("R", "stranger").close_code == 4002
    welcome = scratch.join("R", "friend")
    assert welcome.is_open and welcome in scratch.rooms.get("R").members


async def test_async_handshake_hook_queues_messages_until_it_decides(tmp_path):
    """While an async handshake hook decides, later messages wait, then apply in order."""
    scratch = Scratch(tmp_path, plugins=plugin_manager(SlowGatekeeper))
    other = scratch.join("R", "observer")
    await asyncio.sleep(0.05)
    peer = scratch.join("R", "friend")
    set_var(peer, "☁ x", 1)
    set_var(peer, "☁ x", 2)
    assert scratch.rooms.get("R").values == {}
    await asyncio.sleep(0.05 + FLUSH)
    assert peer in scratch.rooms.get("R").members
    assert scratch.rooms.get("R").values == {'"☁ x"': 2}
    assert other.lines() == ['{"method":"set","name":"☁ x","value":2}']
    refused = scratch.join("R", "intruder")
    assert refused.close_code is None
    await asyncio.sleep(0.05)
    assert refused.close_code == 4003


async def test_variable_hooks_rewrite_or_drop_writes(tmp_path):
    """on_variable hooks may rewrite a value or refuse the write (not stored, not relayed)."""
    scratch = Scratch(tmp_path, plugins=plugin_manager(Doubler))
    scratch.rooms.variable_hooks_for = scratch.plugins.variable_hooks
    author = scratch.join("R")
    other = scratch.join("R", "player2")
    set_var(author, "☁ double me", "21")
    set_var(author, "☁ secret", "1")
    await asyncio.sleep(FLUSH)
    assert author.is_open
    assert scratch.rooms.get("R").values == {'"☁ double me"': "42"}
    assert other.lines() == ['{"method":"set","name":"☁ double me","value":"42"}']


# Refusals before the first message


def test_case31_cookie_tripwire_refuses_with_4005():
    """A Cookie starting with scratchsessionsid= is refused with the warning text and 4005."""
    options = ScratchOptions.from_config(ScratchSection())
    leaking = FakeMember(headers={"Cookie": "scratchsessionsid=abc"})
    assert connect_refusal(leaking, options) == (COOKIE_WARNING, 4005)
    harmless = FakeMember(headers={"Cookie": "a=1; scratchsessionsid=x"})
    assert connect_refusal(harmless, options) is None
    off = ScratchOptions.from_config(ScratchSection(cookie_tripwire=False))
    assert connect_refusal(leaking, off) is None


def test_case32_user_agent_is_only_required_when_configured():
    """A missing User-Agent is accepted by default and refused with 4006 when required."""
    anonymous = FakeMember()
    assert connect_refusal(anonymous, ScratchOptions.from_config(ScratchSection())) is None
    strict = ScratchOptions.from_config(ScratchSection(require_user_agent=True))
    text, code = connect_refusal(anonymous, strict)
    assert code == 4006 and text == strict.section.user_agent_message
    assert connect_refusal(FakeMember(headers={"User-Agent": "bot (me@example.com)"}),
                           strict) is None


async def test_set_of_a_client_that_left_during_the_load_reaches_the_other_member(tmp_path):
    """A client that sets a value and leaves while its room loads still updates the one
    client that waited for the same room."""
    store = FakeStore({"R": []})
    store.loads_block = True
    scratch = Scratch(tmp_path, store=store)
    waiting = scratch.join("R", "waiting")
    leaver = scratch.join("R", "leaver")
    set_var(leaver, "☁ x", "5")
    leaver.close(1000)
    for _ in range(100):
        if scratch.rooms.get("R") is not None and waiting.session.queued is None:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(FLUSH)
    assert scratch.rooms.get("R").values == {'"☁ x"': "5"}
    assert waiting.frames() == ['{"method":"set","name":"☁ x","value":"5"}']
    scratch.rooms.close()
