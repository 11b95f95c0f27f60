"""The Sans-I/O CL4 engine against docs/specs/cl4.md: §15 cases #1-#34, limits, plugin seams."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.cl4 import (
    COMMAND_SCHEMAS,
    DEFAULT_SCHEMA,
    LEGACY_VERSION_MARKERS,
    Cl4Options,
    Cl4Schema,
    JsonError,
    Reject,
    StatusCode,
    encode_message,
    looks_like_cl4,
    parse_json,
)
from protocols.cl4.engine import MAX_WAITING_MESSAGES, snowflake_after
from protocols.js import MAX_JSON_DEPTH
from tests.protocols.cl4.harness import Harness, ok, status

TW_HANDSHAKE = {
    "cmd": "handshake",
    "val": {"language": "Scratch", "version": {"editorType": "TurboWarp", "versionNumber": 2}},
    "listener": "handshake_cfg",
}
MULTIPLE_BOBS = (
    "Multiple matches found for bob, found 2 matches. "
    "Please use Snowflakes, UUIDs, or client objects instead."
)


def ulist(mode: str, val, room: str) -> dict:
    """A ulist message in the observed key order."""
    return {"cmd": "ulist", "mode": mode, "val": val, "rooms": room}


def sorted_users(users: list[dict]) -> list[dict]:
    """`ulist set` content in a stable order (spec: element order is not significant)."""
    return sorted(users, key=lambda user: user["uuid"])


def normalise_set(frames: list) -> list:
    """Frames with every `ulist set` payload sorted."""
    return [
        {**frame, "val": sorted_users(frame["val"])}
        if isinstance(frame, dict) and frame.get("mode") == "set"
        else frame
        for frame in frames
    ]


@pytest.fixture
def harness() -> Harness:
    """An engine with default options."""
    return Harness()


# -- §15 conformance cases ---------------------------------------------------------------------


def test_01_first_handshake_reply(harness):
    """#1: nothing unsolicited; the handshake gets client_ip ... OK(handshake_cfg), in order."""
    bob = harness.client("bob", "bob")
    alice = harness.connect("alice", ip="198.51.100.4")
    assert alice.take() == []
    harness.send(alice, TW_HANDSHAKE)
    frames = alice.take()
    assert frames == [
        {"cmd": "client_ip", "val": "198.51.100.4"},
        {"cmd": "server_version", "val": "0.2.0-stratus"},
        {"cmd": "client_obj", "val": harness.obj(alice)},
        ulist("set", [harness.obj(bob)], "default"),
        ok("handshake_cfg"),
    ]
    assert "0.2." in frames[1]["val"]
    client_obj = frames[2]["val"]
    assert list(client_obj) == ["id", "uuid"]
    assert client_obj["id"].isdecimal() and 0 < int(client_obj["id"]) < 2**63
    assert str(uuid.UUID(client_obj["uuid"])) == client_obj["uuid"]
    assert bob.take() == []


def test_01_handshake_motd_and_no_client_ip():
    """#1: the motd follows server_version; client_ip can be switched off."""
    harness = Harness(motd="Welcome!", send_client_ip=False)
    alice = harness.connect("alice")
    harness.send(alice, TW_HANDSHAKE)
    assert [frame["cmd"] for frame in alice.take()] == [
        "server_version",
        "motd",
        "client_obj",
        "ulist",
        "statuscode",
    ]


def test_02_handshake_without_listener(harness):
    """#2: a bare handshake gets the same burst; the statuscode has no listener key."""
    alice = harness.connect("alice")
    harness.send(alice, {"cmd": "handshake"})
    frames = alice.take()
    assert [frame["cmd"] for frame in frames] == [
        "client_ip",
        "server_version",
        "client_obj",
        "ulist",
        "statuscode",
    ]
    assert frames[-1] == ok()


def test_03_repeat_handshake(harness):
    """#3: a second handshake returns only OK."""
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "handshake", "listener": "again"})
    assert alice.take() == [ok("again")]


def test_04_ping(harness):
    """#4: ping answers OK with the listener."""
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "ping", "listener": "p1"})
    assert alice.take() == [ok("p1")]


def test_04_listener_keeps_its_json_type(harness):
    """§1: a numeric listener comes back as a number."""
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "ping", "listener": 7})
    assert alice.take() == [ok(7)]


def test_05_setid(harness):
    """#5: others get ulist add; the sender gets ulist set, then OK with its user object."""
    alice = harness.client("alice")
    bob = harness.client("bob")
    harness.send(alice, {"cmd": "setid", "val": "alice", "listener": "username_cfg"})
    alice_obj = harness.obj(alice)
    assert alice_obj["username"] == "alice" and list(alice_obj) == ["id", "username", "uuid"]
    assert bob.take() == [ulist("add", alice_obj, "default")]
    assert alice.take() == [
        ulist("set", [alice_obj], "default"),
        ok("username_cfg", val=alice_obj),
    ]


def test_05_setid_set_lists_every_named_member(harness):
    """#5: the sender's ulist set holds all named members (unnamed ones never appear)."""
    bob = harness.client("bob", "bob")
    harness.client("nobody")
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "setid", "val": "alice"})
    first = alice.take()[0]
    assert sorted_users(first["val"]) == sorted_users([harness.obj(alice), harness.obj(bob)])


def test_06_setid_again(harness):
    """#6: a second setid is E:107 with the current user object."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "setid", "val": "alice2", "listener": "username_cfg"})
    assert alice.take() == [
        status("E:107 | ID already set", listener="username_cfg", val=harness.obj(alice))
    ]


def test_07_numeric_username_is_accepted_as_string(harness):
    """#7 (FIX #11): setid 123 is accepted as the username "123"."""
    carol = harness.client("carol")
    harness.send(carol, {"cmd": "setid", "val": 123, "listener": "username_cfg"})
    carol_obj = harness.obj(carol)
    assert carol_obj["username"] == "123"
    assert carol.take() == [
        ulist("set", [carol_obj], "default"),
        ok("username_cfg", val=carol_obj),
    ]


@pytest.mark.parametrize(
    ("val", "username"), [(True, "true"), (1e3, "1000"), (1.5, "1.5"), (1e21, "1e+21")]
)
def test_07_setid_coerces_like_js_string(harness, val, username):
    """FIX #11: numbers and booleans become their JavaScript String() form."""
    carol = harness.client("carol")
    harness.send(carol, {"cmd": "setid", "val": val})
    assert harness.obj(carol)["username"] == username


@pytest.mark.parametrize("val", [None, {"a": 1}, ["a"]])
def test_07_setid_rejects_non_scalar(harness, val):
    """FIX #11: null, objects and arrays are E:101 with the listener."""
    carol = harness.client("carol")
    harness.send(carol, {"cmd": "setid", "val": val, "listener": "username_cfg"})
    (reply,) = carol.take()
    assert reply["code"] == "E:101 | Syntax" and reply["listener"] == "username_cfg"
    assert "val" in reply["details"]
    assert harness.engine.session(carol).username is None


def test_08_gmsg_reaches_everyone_including_sender(harness):
    """#8: every member of default, the sender included, gets the gmsg."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    unnamed = harness.client("unnamed")
    harness.send(bob, {"cmd": "gmsg", "val": "hello"})
    expected = [{"cmd": "gmsg", "val": "hello", "rooms": "default"}]
    assert alice.take() == bob.take() == unnamed.take() == expected


def test_09_gmsg_with_listener(harness):
    """#9 (FIX #2): the sender's copy has the listener; the others' keep rooms."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "gmsg", "val": {"x": 1}, "listener": "g1"})
    assert bob.take() == [{"cmd": "gmsg", "val": {"x": 1}, "listener": "g1", "rooms": "default"}]
    assert alice.take() == [{"cmd": "gmsg", "val": {"x": 1}, "rooms": "default"}]


def test_10_gvar(harness):
    """#10: every member including the sender gets the gvar."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "gvar", "name": "Apple", "val": "Banana"})
    expected = [{"cmd": "gvar", "name": "Apple", "val": "Banana", "rooms": "default"}]
    assert alice.take() == bob.take() == expected


def test_11_gvar_listener_only_on_senders_copy(harness):
    """#11 (FIX #1): only the sender's copy carries the listener, after rooms."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "gvar", "name": "Apple", "val": "Banana", "listener": "gv"})
    plain = {"cmd": "gvar", "name": "Apple", "val": "Banana", "rooms": "default"}
    (own,) = bob.take()
    assert own == {**plain, "listener": "gv"} and list(own)[-1] == "listener"
    assert alice.take() == [plain]


def test_12_pmsg(harness):
    """#12: the recipient gets the pmsg with the sender as origin; the sender gets OK."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "pmsg", "id": "alice", "val": "psst", "listener": "pm"})
    assert alice.take() == [
        {"cmd": "pmsg", "val": "psst", "origin": harness.obj(bob), "rooms": "default"}
    ]
    assert bob.take() == [ok("pm")]


def test_13_pvar(harness):
    """#13: pvar carries the name before val."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "pvar", "id": "alice", "name": "secret", "val": 42, "listener": "pv"})
    assert alice.take() == [
        {
            "cmd": "pvar",
            "name": "secret",
            "val": 42,
            "origin": harness.obj(bob),
            "rooms": "default",
        }
    ]
    assert bob.take() == [ok("pv")]


def test_14_pmsg_to_nobody(harness):
    """#14: no match is E:103 with details and the listener."""
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "pmsg", "id": "nobody", "val": "x", "listener": "pm2"})
    assert bob.take() == [
        status("E:103 | ID not found", "No matches found: nobody", listener="pm2")
    ]


@pytest.mark.parametrize(
    "message",
    [
        {"cmd": "pmsg", "id": "bob", "val": "x"},
        {"cmd": "pvar", "id": "bob", "name": "n", "val": "x"},
        {"cmd": "link", "val": ["r"]},
        {"cmd": "unlink", "val": ""},
    ],
)
def test_15_username_required(harness, message):
    """#15: pmsg/pvar/link/unlink before setid are E:111 with the listener."""
    harness.client("bob", "bob")
    unnamed = harness.client("unnamed")
    harness.send(unnamed, {**message, "listener": "L"})
    assert unnamed.take() == [
        status("E:111 | ID required", "This command requires setting a username.", listener="L")
    ]


def test_16_ambiguous_username(harness):
    """#16: two clients named bob make a pmsg to "bob" E:104."""
    alice = harness.client("alice", "alice")
    bob1 = harness.client("bob1", "bob")
    bob2 = harness.client("bob2", "bob")
    harness.send(alice, {"cmd": "pmsg", "id": "bob", "val": "x", "listener": "pm"})
    assert alice.take() == [status("E:104 | ID not specific enough", MULTIPLE_BOBS, listener="pm")]
    assert bob1.take() == bob2.take() == []


def test_16_ambiguous_username_without_warning():
    """Option warn_if_multiple_username_matches=False: every bob gets it."""
    harness = Harness(warn_if_multiple_username_matches=False)
    alice = harness.client("alice", "alice")
    bob1 = harness.client("bob1", "bob")
    bob2 = harness.client("bob2", "bob")
    harness.send(alice, {"cmd": "pmsg", "id": "bob", "val": "x"})
    assert len(bob1.take()) == len(bob2.take()) == 1
    assert alice.take() == [ok()]


@pytest.mark.parametrize("key", ["id", "uuid"])
def test_17_pmsg_by_snowflake_or_uuid(harness, key):
    """#17: a snowflake or uuid reaches exactly that client."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "pmsg", "id": harness.obj(bob)[key], "val": "hi", "listener": 1})
    assert bob.take() == [
        {"cmd": "pmsg", "val": "hi", "origin": harness.obj(alice), "rooms": "default"}
    ]
    assert alice.take() == [ok(1)]


def test_18_link(harness):
    """#18: default hears remove, the room hears add, the linker gets set then OK(link)."""
    tess = harness.client("tess", "tess")
    harness.send(tess, {"cmd": "link", "val": ["test"]})
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    carol = harness.client("carol", "carol")
    harness.drain()
    harness.send(alice, {"cmd": "link", "val": ["test"], "listener": "link"})
    alice_obj = harness.obj(alice)
    assert bob.take() == carol.take() == [ulist("remove", alice_obj, "default")]
    assert tess.take() == [ulist("add", alice_obj, "test")]
    assert normalise_set(alice.take()) == [
        ulist("set", sorted_users([alice_obj, harness.obj(tess)]), "test"),
        ok("link"),
    ]


def test_19_linked_client_leaves_default_traffic(harness):
    """#19: after linking away from default, default's gmsg no longer arrives."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "link", "val": ["test"]})
    harness.drain()
    harness.send(bob, {"cmd": "gmsg", "val": "default-only"})
    assert alice.take() == []


def test_20_room_not_joined(harness):
    """#20: naming a room the sender is not in is E:115 and nothing is broadcast."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "link", "val": ["test"]})
    harness.drain()
    harness.send(alice, {"cmd": "gmsg", "val": "x", "rooms": "default", "listener": "nj"})
    assert alice.take() == [
        status(
            "E:115 | Room not joined",
            "Attempted to access room default while not joined.",
            listener="nj",
        )
    ]
    assert bob.take() == []


def test_21_gmsg_to_every_joined_room(harness):
    """#21: one gmsg per room; a member of one room gets one copy."""
    alice = harness.client("alice", "alice")
    ron = harness.client("ron", "ron")
    harness.send(alice, {"cmd": "link", "val": ["r1", "r2"]})
    harness.send(ron, {"cmd": "link", "val": ["r1"]})
    harness.drain()
    harness.send(alice, {"cmd": "gmsg", "val": "multi"})
    assert alice.take() == [
        {"cmd": "gmsg", "val": "multi", "rooms": "r1"},
        {"cmd": "gmsg", "val": "multi", "rooms": "r2"},
    ]
    assert ron.take() == [{"cmd": "gmsg", "val": "multi", "rooms": "r1"}]


def test_22_unlink_all(harness):
    """#22: remove to each room left, add to default, set then OK(unlink) to the sender."""
    alice = harness.client("alice", "alice")
    ron = harness.client("ron", "ron")
    dora = harness.client("dora", "dora")
    harness.send(ron, {"cmd": "link", "val": ["r1"]})
    harness.send(alice, {"cmd": "link", "val": ["r1", "r2"]})
    harness.drain()
    harness.send(alice, {"cmd": "unlink", "val": "", "listener": "unlink"})
    alice_obj = harness.obj(alice)
    assert ron.take() == [ulist("remove", alice_obj, "r1")]
    assert dora.take() == [ulist("add", alice_obj, "default")]
    assert normalise_set(alice.take()) == [
        ulist("set", sorted_users([alice_obj, harness.obj(dora)]), "default"),
        ok("unlink"),
    ]
    assert harness.engine.session(alice).rooms == {"default": None}


def test_23_named_disconnect(harness):
    """#23: remaining members of each room get ulist remove with the leaver's object."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    ron = harness.client("ron", "ron")
    harness.send(bob, {"cmd": "link", "val": ["default", "r1"]})
    harness.send(ron, {"cmd": "link", "val": ["r1"]})
    harness.drain()
    bob_obj = harness.obj(bob)
    harness.engine.disconnect(bob)
    assert alice.take() == [ulist("remove", bob_obj, "default")]
    assert ron.take() == [ulist("remove", bob_obj, "r1")]
    assert "r1" in harness.engine.rooms()


def test_23_unnamed_disconnect_is_silent(harness):
    """#23: an unnamed client leaving produces nothing; disconnect is idempotent."""
    alice = harness.client("alice", "alice")
    unnamed = harness.client("unnamed")
    harness.engine.disconnect(unnamed)
    harness.engine.disconnect(unnamed)
    assert alice.take() == []
    assert harness.engine.room_members("default") == (harness.engine.session(alice),)


def test_23_rooms_are_deleted_when_empty(harness):
    """§8: the last member leaving deletes the room."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": ["solo"]})
    harness.engine.disconnect(alice)
    assert harness.engine.rooms() == ()


def test_24_invalid_command(harness):
    """#24 (FIX #3): E:109 carries the listener."""
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "nosuchcmd", "val": 1, "listener": "L"})
    assert alice.take() == [
        status("E:109 | Invalid command", "nosuchcmd is an invalid command.", listener="L")
    ]


def test_25_missing_and_null_val(harness):
    """#25 (FIX #3): required field / null value not allowed, listener when valid."""
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "gmsg", "listener": "L2"})
    harness.send(alice, {"cmd": "gmsg", "val": None})
    assert alice.take() == [
        status("E:101 | Syntax", {"val": ["required field"]}, listener="L2"),
        status("E:101 | Syntax", {"val": ["null value not allowed"]}),
    ]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"cmd": 5}, "cmd"),
        ({"cmd": "gvar", "name": 5, "val": 1}, "name"),
        ({"cmd": "direct", "id": ["x"], "val": 1}, "id"),
        ({"cmd": "gmsg", "val": 1, "rooms": {"a": 1}}, "rooms"),
        ({"cmd": "ping", "listener": None}, "listener"),
    ],
)
def test_25_schema_errors(harness, message, field):
    """§4: type errors name the field; an invalid listener is not echoed."""
    alice = harness.client("alice")
    harness.send(alice, message)
    (reply,) = alice.take()
    assert reply["code"] == "E:101 | Syntax" and field in reply["details"]
    assert "listener" not in reply


def test_26_json_error_keeps_connection(harness):
    """#26: invalid JSON is E:114 without a listener; the connection stays usable."""
    alice = harness.client("alice")
    harness.send(alice, "garbage{")
    (reply,) = alice.take()
    assert reply["code"] == "E:114 | JSON error" and reply["code_id"] == 114
    assert reply["details"].startswith("A JSON error was raised: ")
    assert "listener" not in reply and alice.closed is None
    harness.send(alice, {"cmd": "ping"})
    assert alice.take() == [ok()]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "Invalid JSON"),
        ('{"foo":"bar"}', "Unable to identify protocol"),
        ("", "Empty message"),
        ("[1,2,3]", "Unable to identify protocol"),
        ('"cmd"', "Unable to identify protocol"),
        ('{"cmd":5}', "Unable to identify protocol"),
    ],
)
def test_27_cl4_only_first_message(harness, text, reason):
    """#27 (CL4-only listener): the reason as text, then close 1000 with that reason."""
    alice = harness.connect("alice")
    harness.send(alice, text)
    assert alice.take() == [("text", reason)]
    assert alice.closed == (1000, reason)
    harness.send(alice, {"cmd": "ping"})
    assert alice.take() == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"cmd":"handshake"}', True),
        ('{"cmd":"x","method":"set"}', True),
        ('{"method":"handshake"}', False),
        ('{"cmd":5}', False),
        ("[1]", False),
        ("not json", False),
        ("", False),
    ],
)
def test_27_shared_listener_identification(text, expected):
    """§2: on a shared listener only an object with a string cmd is CL4."""
    assert looks_like_cl4(text) is expected


def test_first_message_identifies_and_is_handled(harness):
    """§2: any CL4 message identifies the client, joins default and is handled."""
    alice = harness.connect("alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "gmsg", "val": "early"})
    assert alice.take() == bob.take() == [{"cmd": "gmsg", "val": "early", "rooms": "default"}]


def test_28_direct_by_snowflake_and_uuid(harness):
    """#28 (§5 row): the recipient gets the listener, the sender nothing; unknown id E:103."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    for key in ("id", "uuid"):
        harness.send(
            alice, {"cmd": "direct", "id": harness.obj(bob)[key], "val": "d1", "listener": "d"}
        )
        assert bob.take() == [
            {"cmd": "direct", "val": "d1", "origin": harness.obj(alice), "listener": "d"}
        ]
        assert alice.take() == []
    harness.send(alice, {"cmd": "direct", "id": "nope", "val": "d1", "listener": "d"})
    assert alice.take() == [status("E:103 | ID not found", listener="d")]


def test_28_direct_without_listener_is_not_acknowledged(harness):
    """FIX #7: success is acknowledged only if the request had a listener."""
    alice = harness.client("alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "direct", "id": harness.obj(bob)["uuid"], "val": "d"})
    assert bob.take() == [{"cmd": "direct", "val": "d", "origin": harness.obj(alice)}]
    assert list(bob.take()) == [] and alice.take() == []


def test_28_direct_is_global(harness):
    """§5: direct ignores rooms."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "link", "val": ["elsewhere"]})
    harness.drain()
    harness.send(alice, {"cmd": "direct", "id": "bob", "val": "far"})
    assert bob.take() == [{"cmd": "direct", "val": "far", "origin": harness.obj(alice)}]


def test_28_direct_unforwarded_listener_option():
    """direct_forward_listener = false: no listener to the recipient, OK(d) to the sender."""
    harness = Harness(direct_forward_listener=False)
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "direct", "id": "bob", "val": "d1", "listener": "d"})
    assert bob.take() == [{"cmd": "direct", "val": "d1", "origin": harness.obj(alice)}]
    assert alice.take() == [ok("d")]


def test_28_direct_ambiguous_username(harness):
    """FIX #7: a username held by two clients is E:104."""
    alice = harness.client("alice", "alice")
    harness.client("bob1", "bob")
    harness.client("bob2", "bob")
    harness.send(alice, {"cmd": "direct", "id": "bob", "val": "x", "listener": "d"})
    assert alice.take() == [status("E:104 | ID not specific enough", MULTIPLE_BOBS, listener="d")]


@pytest.mark.parametrize("legacy", ["vers", "motd"])
def test_28_direct_never_carries_legacy_commands(harness, legacy):
    """§3.3: a direct val {"cmd": "vers"|"motd"} is refused (E:108), never forwarded."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "direct", "id": "bob", "val": {"cmd": legacy}, "listener": "d"})
    (reply,) = alice.take()
    assert reply["code"] == "E:108 | Refused" and reply["listener"] == "d"
    assert bob.take() == []


@pytest.mark.parametrize("cmd", [[], {"a": 1}, ["vers"], 5, None])
def test_28_direct_val_with_non_string_cmd_is_forwarded(harness, cmd):
    """A direct val whose `cmd` is not a string is an ordinary val: forwarded like any other."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "direct", "id": "bob", "val": {"cmd": cmd}, "listener": "d"})
    (delivered,) = bob.take()
    assert delivered["val"] == {"cmd": cmd} and delivered["origin"] == harness.obj(alice)
    assert delivered["listener"] == "d"  # forwarded by default, as CloudLink 0.2.0 does
    assert alice.take() == []


def test_29_empty_message_after_identification(harness):
    """#29 (FIX #4): an empty message is E:106; the connection stays open."""
    alice = harness.client("alice")
    harness.send(alice, "")
    assert alice.take() == [status("E:106 | Empty packet")]
    assert alice.closed is None


@pytest.mark.parametrize("text", ["[1,2,3]", "5", '"x"', "null", "true"])
def test_30_non_object_after_identification(harness, text):
    """#30 (FIX #13): non-object JSON is E:101 with details; the connection stays open."""
    alice = harness.client("alice")
    harness.send(alice, text)
    (reply,) = alice.take()
    assert reply["code"] == "E:101 | Syntax" and reply["details"]
    assert alice.closed is None


def test_31_link_numeric_room(harness):
    """#31 (FIX #9): link 5 joins room "5"."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": 5, "listener": "link"})
    assert alice.take() == [ulist("set", [harness.obj(alice)], "5"), ok("link")]


@pytest.mark.parametrize("val", [None, {"a": 1}, [None], [{"a": 1}]])
def test_31_link_rejects_null_and_objects(harness, val):
    """FIX #9: null or object room names are E:101 with the listener; nothing changes."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": val, "listener": "link"})
    (reply,) = alice.take()
    assert reply["code"] == "E:101 | Syntax" and reply["listener"] == "link"
    assert list(harness.engine.session(alice).rooms) == ["default"]


def test_32_unlink_room_never_joined(harness):
    """#32 (FIX #8): no broadcasts, OK(unlink)."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "unlink", "val": "ghost", "listener": "unlink"})
    assert alice.take() == [ok("unlink")]
    assert bob.take() == []


def test_33_direct_by_username(harness):
    """#33 (FIX #7): direct by a unique username is delivered, with the listener."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "direct", "id": "bob", "val": "x", "listener": "d"})
    assert bob.take() == [
        {"cmd": "direct", "val": "x", "origin": harness.obj(alice), "listener": "d"}
    ]
    assert alice.take() == []


@pytest.mark.parametrize("fields", [("id", "username", "uuid"), ("id",), ("username",)])
def test_34_pmsg_to_user_object(harness, fields):
    """#34 (FIX #5): a user object id matches by uuid, else id, else username."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    target = {key: harness.obj(bob)[key] for key in fields}
    harness.send(alice, {"cmd": "pmsg", "id": target, "val": "o", "listener": "pm"})
    assert bob.take() == [
        {"cmd": "pmsg", "val": "o", "origin": harness.obj(alice), "rooms": "default"}
    ]
    assert alice.take() == [ok("pm")]


def test_34_pmsg_to_unknown_user_object(harness):
    """FIX #5: an unmatched object is E:103 with the listener."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "pmsg", "id": {"uuid": "x"}, "val": "o", "listener": "pm"})
    assert alice.take() == [
        status("E:103 | ID not found", 'No matches found: {"uuid":"x"}', listener="pm")
    ]


# -- further project decisions -----------------------------------------------------------------


def test_pmsg_list_is_multicast(harness):
    """FIX #6: each list entry resolves on its own; unknown entries are skipped."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    carol = harness.client("carol", "carol")
    harness.send(alice, {"cmd": "pmsg", "id": ["bob", "carol", "nobody", "bob"], "val": "m"})
    expected = [{"cmd": "pmsg", "val": "m", "origin": harness.obj(alice), "rooms": "default"}]
    assert bob.take() == carol.take() == expected
    assert alice.take() == [ok()]
    harness.send(alice, {"cmd": "pmsg", "id": ["x", "y"], "val": "m"})
    assert alice.take() == [status("E:103 | ID not found", 'No matches found: ["x","y"]')]


def test_pmsg_only_reaches_shared_rooms(harness):
    """§5: a client in r1 cannot pmsg someone only in default (E:103)."""
    alice = harness.client("alice", "alice")
    harness.client("bob", "bob")
    harness.send(alice, {"cmd": "link", "val": ["r1"]})
    alice.take()
    harness.send(alice, {"cmd": "pmsg", "id": "bob", "val": "x"})
    assert alice.take() == [status("E:103 | ID not found", "No matches found: bob")]


def test_pmsg_to_self(harness):
    """§5: the sender receives its own pmsg when it matches."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "pmsg", "id": "alice", "val": "me"})
    assert alice.take() == [
        {"cmd": "pmsg", "val": "me", "origin": harness.obj(alice), "rooms": "default"},
        ok(),
    ]


def test_gmsg_rooms_number_is_coerced(harness):
    """FIX #10: a numeric rooms value names the room "5"."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": [5, "default"]})
    alice.take()
    harness.send(alice, {"cmd": "gmsg", "val": "x", "rooms": 5})
    assert alice.take() == [{"cmd": "gmsg", "val": "x", "rooms": "5"}]


def test_link_is_additive_and_sets_follow_request_order(harness):
    """§8: link keeps earlier non-default rooms; ulist sets come in request order."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": ["a"]})
    alice.take()
    harness.send(alice, {"cmd": "link", "val": ["c", "b", "c"]})
    assert [frame.get("rooms") for frame in alice.take()] == ["c", "b", None]
    assert list(harness.engine.session(alice).rooms) == ["a", "c", "b"]


def test_link_away_from_default_twice_sends_one_remove(harness):
    """FIX #8: remove is only sent to default when the client really left it."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "link", "val": ["a"]})
    harness.send(alice, {"cmd": "link", "val": ["b"]})
    assert bob.take() == [ulist("remove", harness.obj(alice), "default")]


def test_link_to_joined_room_does_not_duplicate_add(harness):
    """A second link to the same room sends no second add (cloudlink.js would list twice)."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "link", "val": ["r"]})
    harness.send(alice, {"cmd": "link", "val": ["r"]})
    harness.drain()
    harness.send(alice, {"cmd": "link", "val": ["r"]})
    assert bob.take() == []
    assert [frame["cmd"] for frame in alice.take()] == ["ulist", "statuscode"]


def test_link_empty_string_room_is_kept(harness):
    """FIX #9 keeps "" as a valid room name (parity)."""
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": ""})
    assert alice.take()[0]["rooms"] == ""


def test_unlink_last_room_rejoins_default(harness):
    """§5: unlinking the only room puts the client back in default."""
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(alice, {"cmd": "link", "val": ["r"]})
    harness.drain()
    harness.send(alice, {"cmd": "unlink", "val": ["r"]})
    assert bob.take() == [ulist("add", harness.obj(alice), "default")]
    assert [frame.get("mode") for frame in alice.take()] == ["set", None]


def test_unique_usernames():
    """Option unique_usernames: a taken name is E:112 with the listener."""
    harness = Harness(unique_usernames=True)
    harness.client("alice", "alice")
    other = harness.client("other")
    harness.send(other, {"cmd": "setid", "val": "alice", "listener": "username_cfg"})
    (reply,) = other.take()
    assert reply["code"] == "E:112 | ID conflict" and reply["listener"] == "username_cfg"


class ClusterClaims:
    """A cluster's username claim as the engine sees it: each claim a future the test answers."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, asyncio.Future]] = []

    def __call__(self, session, username: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((username, future))
        return future


async def settle() -> None:
    """Let the loop run the callbacks of futures answered just now."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_setid_waits_for_the_cluster_and_later_messages_keep_their_order():
    """With a cluster claim on its way, setid answers only once it is decided, and what the
    client sent meanwhile is handled after it, in order."""
    harness = Harness(unique_usernames=True)
    claims = harness.engine.username_claim = ClusterClaims()
    client = harness.client("client")
    harness.send(client, {"cmd": "setid", "val": "sam", "listener": "s"})
    harness.send(client, {"cmd": "link", "val": ["lobby"], "listener": "l"})
    harness.send(client, {"cmd": "ping", "listener": "p"})
    assert client.take() == [] and [name for name, _ in claims.pending] == ["sam"]
    claims.pending[0][1].set_result(True)
    await settle()
    listeners = [m.get("listener") for m in client.take() if m.get("cmd") == "statuscode"]
    assert listeners == ["s", "l", "p"]
    assert harness.engine.find_by_username("sam")


async def test_setid_refused_by_the_cluster_is_e112_and_leaves_the_client_unnamed():
    """A name the cluster gives to another node's client answers E:112; the client may then
    pick another name."""
    harness = Harness(unique_usernames=True)
    claims = harness.engine.username_claim = ClusterClaims()
    client = harness.client("client")
    harness.send(client, {"cmd": "setid", "val": "sam", "listener": "s"})
    claims.pending[0][1].set_result(False)
    await settle()
    (reply,) = client.take()
    assert reply["code"] == "E:112 | ID conflict" and reply["listener"] == "s"
    assert not harness.engine.find_by_username("sam")
    harness.send(client, {"cmd": "setid", "val": "sam2", "listener": "t"})
    claims.pending[1][1].set_result(True)
    await settle()
    assert client.take()[-1]["code"] == "I:100 | OK"


async def test_a_client_flooding_while_setid_waits_is_closed():
    """More messages than MAX_WAITING_MESSAGES while a claim is on its way close the client
    with 1008, as a flood past the rate limit does."""
    harness = Harness(unique_usernames=True, messages_per_second=0)
    harness.engine.username_claim = ClusterClaims()
    client = harness.client("client")
    harness.send(client, {"cmd": "setid", "val": "sam"})
    for _ in range(MAX_WAITING_MESSAGES + 1):
        harness.send(client, {"cmd": "ping"})
    assert client.closed == (1008, "Rate limited")


def test_duplicate_and_empty_usernames_are_accepted(harness):
    """§5 parity: duplicate names and "" are accepted."""
    first = harness.client("first", "same")
    second = harness.client("second", "same")
    empty = harness.client("empty", "")
    assert harness.obj(first)["username"] == harness.obj(second)["username"] == "same"
    assert harness.obj(empty)["username"] == ""


def test_disabled_command():
    """Option disabled_commands: E:110 with the listener."""
    harness = Harness(disabled_commands=("gmsg",))
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "gmsg", "val": 1, "listener": "L"})
    assert alice.take() == [
        status("E:110 | Command disabled", "gmsg is a disabled command.", listener="L")
    ]


def test_ids_are_unique(harness):
    """§6: snowflakes and uuids differ per connection."""
    clients = [harness.client(f"c{i}") for i in range(50)]
    snowflakes = {harness.obj(client)["id"] for client in clients}
    uuids = {harness.obj(client)["uuid"] for client in clients}
    assert len(snowflakes) == len(uuids) == 50


def test_snowflakes_carry_the_instance_the_node_was_given(harness):
    """On a cluster each node's snowflakes carry its worker number, so nodes never clash."""
    harness.engine.use_snowflake_instance(7)
    clients = [harness.client(f"c{i}") for i in range(20)]
    instances = {(int(harness.obj(client)["id"]) >> 12) & 0x3FF for client in clients}
    assert instances == {7}


def test_ids_made_past_the_generator_keep_their_instance():
    """An id made when the generator gives none (4096 in one millisecond, clock went back)
    is above the last one and keeps this engine's instance bits."""
    last = (1000 << 22) | (7 << 12) | 5
    assert snowflake_after(last, 7) == last + 1
    full = (1000 << 22) | (7 << 12) | 0xFFF
    assert snowflake_after(full, 7) == (1001 << 22) | (7 << 12)
    other = (1000 << 22) | (9 << 12) | 3  # made before the instance changed to 7
    after = snowflake_after(other, 7)
    assert after > other and (after >> 12) & 0x3FF == 7


# -- limits ------------------------------------------------------------------------------------


def test_message_rate_limit():
    """Over the burst, messages are dropped with E:116 (+listener) until tokens refill."""
    harness = Harness(messages_per_second=2, message_burst=3)
    alice = harness.connect("alice")
    for _ in range(3):
        harness.send(alice, {"cmd": "ping", "listener": "p"})
    harness.send(alice, {"cmd": "ping", "listener": "p"})
    harness.send(alice, "garbage")
    frames = alice.take()
    assert frames[:3] == [ok("p")] * 3
    assert [frame["code"] for frame in frames[3:]] == ["E:116 | Rate limited"] * 2
    assert frames[3]["listener"] == "p" and "listener" not in frames[4]
    harness.clock.advance(0.5)
    harness.send(alice, {"cmd": "ping"})
    assert alice.take() == [ok()]


def test_message_rate_limit_disabled():
    """messages_per_second = 0 turns the limit off."""
    harness = Harness(messages_per_second=0)
    alice = harness.connect("alice")
    for _ in range(500):
        harness.send(alice, {"cmd": "ping"})
    assert alice.take() == [ok()] * 500


def test_client_that_keeps_flooding_is_closed_with_1008():
    """Past max_rate_limited_replies E:116 replies beyond the rate, the client is closed 1008."""
    harness = Harness(messages_per_second=10, message_burst=5, max_rate_limited_replies=20)
    alice = harness.connect("alice")
    for _ in range(26):
        harness.send(alice, {"cmd": "ping"})
    frames = alice.take()
    assert frames == [ok()] * 5 + [status("E:116 | Rate limited", frames[5]["details"])] * 20
    assert alice.closed == (1008, "Rate limited")
    harness.send(alice, {"cmd": "ping"})
    assert alice.take() == []


def test_client_at_twice_the_rate_is_answered_not_closed():
    """A client sending twice messages_per_second gets E:116 for half, and stays open."""
    harness = Harness(messages_per_second=10, message_burst=5, max_rate_limited_replies=20)
    alice = harness.connect("alice")
    for _ in range(400):  # 20 s at 20 messages a second
        harness.clock.advance(0.05)
        harness.send(alice, {"cmd": "ping"})
    codes = [frame["code"] for frame in alice.take()]
    assert alice.closed is None
    assert codes.count("E:116 | Rate limited") >= 190


def test_setid_rate_limit():
    """setid attempts are limited per client per minute (CloudLink issue #23)."""
    harness = Harness(setid_per_minute=1, setid_burst=2)
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "setid", "val": "a"})
    harness.send(alice, {"cmd": "setid", "val": "b"})
    harness.send(alice, {"cmd": "setid", "val": "c", "listener": "username_cfg"})
    codes = [frame["code"] for frame in alice.take() if frame["cmd"] == "statuscode"]
    assert codes == ["I:100 | OK", "E:107 | ID already set", "E:116 | Rate limited"]
    harness.clock.advance(60)
    harness.send(alice, {"cmd": "setid", "val": "d"})
    assert alice.take()[0]["code"] == "E:107 | ID already set"


def test_max_val_bytes():
    """A val whose forwarded JSON exceeds max_val_bytes is E:113 and not delivered."""
    harness = Harness(max_val_bytes=100)
    alice = harness.client("alice")
    bob = harness.client("bob")
    harness.send(alice, {"cmd": "gmsg", "val": "x" * 98})  # 100 bytes with its quotes
    assert len(bob.take()) == 1
    harness.drain()
    harness.send(alice, {"cmd": "gmsg", "val": "é" * 20, "listener": "L"})  # 122 bytes escaped
    (reply,) = alice.take()
    assert reply["code"] == "E:113 | Too large" and reply["listener"] == "L"
    assert bob.take() == []


def test_max_rooms_per_client():
    """A link beyond max_rooms_per_client is E:117 and changes nothing."""
    harness = Harness(max_rooms_per_client=2)
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": ["a", "b"]})
    alice.take()
    harness.send(alice, {"cmd": "link", "val": ["c"], "listener": "link"})
    (reply,) = alice.take()
    assert reply["code"] == "E:117 | Too many rooms" and reply["listener"] == "link"
    assert list(harness.engine.session(alice).rooms) == ["a", "b"]
    harness.send(alice, {"cmd": "link", "val": ["b"]})  # already linked: still within the limit
    assert alice.take()[-1] == ok()


def test_max_name_lengths():
    """Over-long usernames and room names are E:113."""
    harness = Harness(max_username_length=5, max_room_name_length=3)
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "setid", "val": "toolong"})
    assert alice.take()[0]["code"] == "E:113 | Too large"
    harness.send(alice, {"cmd": "setid", "val": "alice"})
    alice.take()
    harness.send(alice, {"cmd": "link", "val": ["abcd"]})
    assert alice.take()[0]["code"] == "E:113 | Too large"


# -- plugin seams ------------------------------------------------------------------------------


def test_pre_dispatch_hook_veto(harness):
    """A hook's Reject answers with its status, details and the request's listener."""
    harness.engine.pre_dispatch_hooks.append(
        lambda session, message: (
            Reject(StatusCode.REFUSED, "no gmsg") if message["cmd"] == "gmsg" else None
        )
    )
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "gmsg", "val": "x", "listener": "L"})
    assert alice.take() == [status("E:108 | Refused", "no gmsg", listener="L")]


def test_pre_dispatch_hook_rewrite(harness):
    """A hook may return a rewritten message; later hooks and the handler see it."""
    seen = []
    harness.engine.pre_dispatch_hooks.append(
        lambda session, message: {**message, "val": str(message.get("val")).upper()}
    )
    harness.engine.pre_dispatch_hooks.append(lambda session, message: seen.append(message["val"]))
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "gmsg", "val": "quiet"})
    assert alice.take() == [{"cmd": "gmsg", "val": "QUIET", "rooms": "default"}]
    assert seen[-1] == "QUIET"


def test_pre_dispatch_hook_rewrite_is_revalidated(harness):
    """A rewrite that breaks the default schema is E:101."""
    harness.engine.pre_dispatch_hooks.append(lambda session, message: {**message, "cmd": None})
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "ping", "listener": "L"})
    assert alice.take()[0]["code"] == "E:101 | Syntax"


def test_hook_and_handler_exceptions_become_e105(harness, caplog):
    """A raising hook or handler is logged and answered E:105 with the listener."""
    alice = harness.client("alice")

    def broken(request):
        raise RuntimeError("boom")

    harness.engine.register_command("broken", broken)
    with caplog.at_level(logging.ERROR, logger="stratus.cl4"):
        harness.send(alice, {"cmd": "broken", "listener": "b"})
    assert alice.take() == [status("E:105 | Internal server error", listener="b")]
    assert "boom" in caplog.text

    harness.engine.pre_dispatch_hooks.append(lambda session, message: 1 / 0)
    harness.send(alice, {"cmd": "ping", "listener": "h"})
    assert alice.take() == [status("E:105 | Internal server error", listener="h")]


def test_custom_command_with_schema(harness):
    """A custom command's schema failure is E:101 with details and the listener."""

    def roll(request):
        request.reply(StatusCode.OK, val=request.message["sides"])

    harness.engine.register_command(
        "roll", roll, {"sides": {"type": "integer", "required": True, "min": 2}}
    )
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "roll", "sides": 6, "listener": "r"})
    harness.send(alice, {"cmd": "roll", "sides": 1, "listener": "r"})
    harness.send(alice, {"cmd": "roll", "listener": "r"})
    good, too_small, missing = alice.take()
    assert good == ok("r", val=6)
    assert too_small == status("E:101 | Syntax", {"sides": ["min value is 2"]}, listener="r")
    assert missing == status("E:101 | Syntax", {"sides": ["required field"]}, listener="r")


def test_custom_command_requiring_username(harness):
    """requires_username=True gives E:111 before the handler runs."""
    harness.engine.register_command("vip", lambda request: None, requires_username=True)
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "vip", "listener": 1})
    assert alice.take()[0]["code"] == "E:111 | ID required"


def test_replace_and_remove_builtin(harness):
    """Built-ins can be wrapped or replaced (replace=True) and removed (then E:109)."""
    builtin = harness.engine.command("gmsg")
    calls = []

    def counting_gmsg(request):
        calls.append(request.message["val"])
        builtin.handler(request)

    with pytest.raises(ValueError, match="replace=True"):
        harness.engine.register_command("gmsg", counting_gmsg)
    harness.engine.register_command("gmsg", counting_gmsg, builtin.schema, replace=True)
    alice = harness.client("alice")
    harness.send(alice, {"cmd": "gmsg", "val": "x"})
    assert calls == ["x"] and len(alice.take()) == 1
    harness.engine.unregister_command("gmsg")
    harness.send(alice, {"cmd": "gmsg", "val": "x"})
    assert alice.take()[0]["code"] == "E:109 | Invalid command"


def test_gvar_observer_and_emit_gvar(harness):
    """Bridge: observers see every CL4 gvar and its sender; emit_gvar parses JSON strings (§12)."""
    observed = []
    harness.engine.gvar_observers.append(
        lambda sender, *args: observed.append((sender.username, *args))
    )
    harness.engine.gvar_observers.append(lambda *args: 1 / 0)  # logged, not propagated
    alice = harness.client("alice", "alice")
    harness.send(alice, {"cmd": "link", "val": ["r1", "r2"]})
    alice.take()
    harness.send(alice, {"cmd": "gvar", "name": "v", "val": [1]})
    assert observed == [("alice", "r1", "v", [1]), ("alice", "r2", "v", [1])]
    alice.take()
    for value, parsed in [("5", 5), ("abc", "abc"), ('{"a":1}', {"a": 1}), ("null", "null")]:
        assert harness.engine.emit_gvar("r1", "☁ score", value) == 1
        assert alice.take() == [{"cmd": "gvar", "name": "☁ score", "val": parsed, "rooms": "r1"}]
    assert harness.engine.emit_gvar("nowhere", "x", "1") == 0
    assert len(observed) == 2


# -- options, wire format, schemas -------------------------------------------------------------


def test_default_server_version_has_no_legacy_marker():
    """§3.3: the default server_version contains "0.2." and no legacy substring."""
    version = Cl4Options().server_version
    assert "0.2." in version
    assert not any(marker in version for marker in LEGACY_VERSION_MARKERS)


@pytest.mark.parametrize("version", ["0.2.0-stratus/0.1.0", "1.0", "0.2.0 S1.x"])
def test_bad_server_version_is_refused(version):
    """§3.3: a server_version cloudlink.js would misread fails at start."""
    with pytest.raises(ValueError, match="server_version"):
        Cl4Options(server_version=version)


def test_encode_message_is_compact_ordered_ascii():
    """§1/§6: compact JSON, insertion key order, non-ASCII escaped, no NaN."""
    text = encode_message({"cmd": "gmsg", "val": "é/☁", "rooms": "r"})
    assert text == '{"cmd":"gmsg","val":"\\u00e9/\\u2601","rooms":"r"}'
    with pytest.raises(OverflowError):
        encode_message({"val": float("nan")})


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", "-Infinity", "1e400", "{} {}", "[1,]"])
def test_parse_json_rejects_what_json_parse_rejects(text):
    """JSON.parse semantics: no NaN/Infinity literals; no non-finite numbers; one value."""
    with pytest.raises(JsonError):
        parse_json(text)


def test_parse_json_tolerates_trailing_whitespace():
    """§1: trailing whitespace and newline are tolerated."""
    assert parse_json('{"cmd":"ping"}\r\n ') == {"cmd": "ping"}


def test_nesting_beyond_the_parser_is_a_syntax_error(harness):
    """Valid JSON too deep for the parser itself is E:101 (no listener can be read), no crash."""
    alice = harness.client("alice")
    harness.send(alice, '{"cmd":"gmsg","val":' + "[" * 100_000 + "]" * 100_000 + "}")
    assert alice.take() == [
        {
            "cmd": "statuscode",
            "code": "E:101 | Syntax",
            "code_id": 101,
            "details": {"message": [f"nested deeper than {MAX_JSON_DEPTH} levels"]},
        }
    ]


def nested(depth: int) -> str:
    """JSON text of `depth` arrays nested in each other."""
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("field", ["val", "listener", "rooms", "name", "id", "extra"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 600, 950])
def test_too_deep_field_is_a_syntax_error_naming_it(harness, field, depth):
    """A field nested past the limit gets E:101 naming the field, with a valid listener."""
    alice = harness.client("alice")
    listener = "" if field == "listener" else ',"listener":"deep"'
    harness.send(alice, f'{{"cmd":"gvar","name":"n","val":1{listener},"{field}":{nested(depth)}}}')
    expected = {
        "cmd": "statuscode",
        "code": "E:101 | Syntax",
        "code_id": 101,
        "details": {field: [f"nested deeper than {MAX_JSON_DEPTH} levels"]},
    }
    if field != "listener":
        expected["listener"] = "deep"
    assert alice.take() == [expected]


def test_nesting_up_to_the_limit_is_relayed(harness):
    """A val holding MAX_JSON_DEPTH - 1 levels (the message is one more) is delivered."""
    alice = harness.client("alice")
    depth = MAX_JSON_DEPTH - 1
    harness.send(alice, f'{{"cmd":"gmsg","val":{nested(depth)}}}')
    (message,) = alice.take()
    assert message["cmd"] == "gmsg"
    assert json.dumps(message["val"], separators=(",", ":")) == nested(depth)


def test_too_deep_first_message_is_answered_after_identification(harness):
    """The identifying message itself may be too deep: the client is identified, then E:101."""
    alice = harness.connect("alice")
    harness.send(alice, f'{{"cmd":"gmsg","val":{nested(700)},"listener":"x"}}')
    assert alice.take()[-1]["details"] == {"val": [f"nested deeper than {MAX_JSON_DEPTH} levels"]}
    harness.send(alice, {"cmd": "ping", "listener": "p"})
    assert alice.take()[-1]["code"] == "I:100 | OK"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
known_ids = st.sampled_from(["alice", "bob", "nobody", ""])
known_rooms = st.sampled_from(["default", "r1", "r2", 5])
command_names = st.sampled_from(
    ["handshake", "ping", "setid", "gmsg", "gvar", "pmsg", "pvar", "direct", "link", "unlink"]
    + ["nope", ""]
)
# Well-typed fields, so that most messages get past the schemas into the handlers.
plausible_messages = st.fixed_dictionaries(
    {
        "cmd": command_names,
        "val": known_rooms
        | st.lists(known_rooms, max_size=3)
        | json_values.filter(lambda value: value is not None),
    },
    optional={
        "name": st.text(max_size=5),
        "id": known_ids
        | st.lists(known_ids, max_size=3)
        | st.fixed_dictionaries({}, optional={"username": known_ids, "uuid": st.text(max_size=3)}),
        "listener": st.text(max_size=4) | st.integers(),
        "rooms": known_rooms | st.lists(known_rooms, max_size=3),
    },
)
field_names = st.sampled_from(["cmd", "val", "name", "id", "listener", "rooms", "origin"])
random_objects = st.dictionaries(field_names, json_values, max_size=6)
cl4_messages = (
    random_objects
    | plausible_messages
    | plausible_messages.map(
        lambda message: {**message, "listener": None} if "listener" in message else message
    )
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(cl4_messages | st.text(max_size=30), min_size=1, max_size=8))
def test_fuzz_receive_never_raises_and_answers_well_formed(messages):
    """Random objects and text never raise, and everything sent is a well-formed CL4 frame."""
    harness = Harness(messages_per_second=0)
    alice = harness.client("alice", "alice")
    bob = harness.client("bob", "bob")
    harness.send(bob, {"cmd": "link", "val": ["r1", "default"]})
    harness.drain()
    for message in messages:
        text = message if isinstance(message, str) else json.dumps(message)
        harness.engine.receive(alice, text)
    for frame in alice.take() + bob.take():
        assert isinstance(frame, dict) and isinstance(frame["cmd"], str)
        if frame["cmd"] == "statuscode":
            assert re.fullmatch(r"[IE]:\d+ \| [A-Za-z ]+", frame["code"])
            assert frame["code_id"] == int(frame["code"][2:].split(" ")[0])
            assert frame["code_id"] != 105, frame  # no built-in handler may crash
        if "rooms" in frame:
            assert isinstance(frame["rooms"], str)


@settings(max_examples=300)
@given(cl4_messages)
def test_fast_schema_path_never_accepts_what_cerberus_rejects(message):
    """The compiled fast check agrees with cerberus whenever it says "valid"."""
    for schema in (DEFAULT_SCHEMA, *COMMAND_SCHEMAS.values()):
        fast = schema._fast_check
        assert fast is not None
        if fast(message):
            assert schema._validator.validate(message), schema._validator.errors


def test_exotic_schema_rules_use_cerberus_only():
    """Rules the fast path does not understand leave validation entirely to cerberus."""
    schema = Cl4Schema({"sides": {"type": "integer", "min": 2}})
    assert schema._fast_check is None
    assert schema.errors({"sides": 1}) == {"sides": ["min value is 2"]}
    assert schema.errors({"sides": 3}) is None


def test_integer_literal_past_the_int_string_limit_is_a_json_error(harness):
    """A 4,400-digit integer is E:114 like 1e400 (JSON.parse would give Infinity); 4,300 relay."""
    alice = harness.client("alice")
    harness.send(alice, '{"cmd":"gmsg","val":1' + "0" * 4400 + "}")
    assert alice.take() == [
        status("E:114 | JSON error", details="A JSON error was raised: number literal too long")
    ]
    harness.send(alice, '{"cmd":"gmsg","val":1' + "0" * 4299 + "}")
    assert alice.take()[0]["val"] == 10**4299
