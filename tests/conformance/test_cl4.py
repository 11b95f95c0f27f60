"""CL4 spec §15 conformance cases #1-#34, the shared-port rule (§2), rooms (§8), the state of
the real extension (end of §15) and the CL4 limits, over real sockets.

Every test gets a fresh server, so room "default" holds only that test's clients. Clients are
driven as cloudlink.js drives them (§9.1): connect, stay silent for 500 ms while asserting the
server is silent too, then send the extension's handshake frame.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from websockets.asyncio.client import connect

from protocols.js import MAX_JSON_DEPTH
from tests.conformance.cl4_client import (
    OBJ,
    OK,
    SF,
    STR,
    UUID,
    Cl4,
    Unordered,
    close_all,
    drain,
    identified,
    matches,
    open_clients,
    status,
)
from tests.conformance.helpers import (
    expect_close,
    expect_nothing,
    fresh_room,
    joined,
    raw_connect,
    recv,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import BACKENDS

SERVER_VERSION = "0.2.0-stratus"  # the default [cl4] server_version
MULTIPLE = ("Multiple matches found for bob, found 2 matches. Please use Snowflakes, UUIDs, "
            "or client objects instead.")


@pytest.fixture(params=BACKENDS)
def url(request, make_backend) -> str:
    """A fresh server per test (CL4 room "default" is shared by every client of a server):
    one process, or two nodes on Redis behind a round-robin proxy (consecutive clients on
    different nodes)."""
    return make_backend(request.param).url


def ulist(mode: str, val, room: str = "default") -> dict:
    return {"cmd": "ulist", "mode": mode, "val": val, "rooms": room}


# §3 Handshake


async def test_case_01_extension_handshake_reply(url):
    """The extension's handshake gets client_ip, server_version, client_obj, ulist, then OK."""
    bob = (await identified(url, "bob"))[0]
    a = await Cl4.open(url, "a")  # asserts 500 ms of silence first
    burst = await a.handshake()
    assert matches([
        {"cmd": "client_ip", "val": "127.0.0.1"},
        {"cmd": "server_version", "val": SERVER_VERSION},
        {"cmd": "client_obj", "val": {"id": SF, "uuid": UUID}},
        ulist("set", [OBJ("bob")]),
        OK("handshake_cfg"),
    ], burst), burst
    assert "0.2." in burst[1]["val"]
    assert burst[0]["val"] == "127.0.0.1"
    await close_all(a, bob)


async def test_case_01_motd_follows_server_version(make_server):
    """With a MOTD configured, it arrives right after server_version."""
    url = make_server(cl4={"motd": "Welcome!"}).url
    a = await Cl4.open(url, "a")
    burst = await a.handshake()
    assert [m["cmd"] for m in burst] == ["client_ip", "server_version", "motd", "client_obj",
                                         "ulist", "statuscode"]
    assert burst[2] == {"cmd": "motd", "val": "Welcome!"}
    assert a.model.motd == "Welcome!"
    await a.close()


async def test_case_01_client_ip_can_be_disabled(make_server):
    """send_client_ip = false leaves client_ip out of the handshake reply."""
    url = make_server(cl4={"send_client_ip": False}).url
    a = await Cl4.open(url, "a", quiet=False)
    burst = await a.handshake()
    assert [m["cmd"] for m in burst] == ["server_version", "client_obj", "ulist", "statuscode"]
    await a.close()


async def test_case_02_bare_handshake_has_no_listener(url):
    """{"cmd":"handshake"} gets the same burst; the final statuscode has no listener key."""
    a = await Cl4.open(url, "a")
    burst = await a.handshake({"cmd": "handshake"})
    assert matches([
        {"cmd": "client_ip", "val": STR},
        {"cmd": "server_version", "val": SERVER_VERSION},
        {"cmd": "client_obj", "val": {"id": SF, "uuid": UUID}},
        ulist("set", []),
        OK(),
    ], burst), burst
    await a.close()


async def test_case_03_repeat_handshake_only_ok(url):
    """A second handshake is answered with OK only."""
    a = await Cl4.open(url, "a")
    await a.handshake()
    await a.send({"cmd": "handshake", "listener": "again"})
    await a.expect(OK("again"))
    await a.expect_nothing()
    await a.close()


async def test_case_04_ping(url):
    """ping is answered with OK and its listener."""
    (a,) = await identified(url, "a", named=False)
    await a.send({"cmd": "ping", "listener": "p1"})
    await a.expect(OK("p1"))
    await a.close()


async def test_listener_keeps_its_json_type(url):
    """A numeric or boolean listener comes back with the same JSON type (§1)."""
    (a,) = await identified(url, "a", named=False)
    for listener in (7, 1.5, True, ""):
        await a.send({"cmd": "ping", "listener": listener})
        await a.expect(OK(listener))
    await a.close()


# setid


async def test_case_05_setid(url):
    """setid: others get ulist add, the sender ulist set then OK with its user object."""
    a, b = await identified(url, "alice", "b", named=False)
    await a.send({"cmd": "setid", "val": "alice", "listener": "username_cfg"})
    await b.expect(ulist("add", OBJ("alice")))
    await a.expect(
        ulist("set", Unordered([OBJ("alice")])),
        OK("username_cfg", val=OBJ("alice")),
    )
    assert a.model.username_synced and a.model.my_username == "alice"
    await close_all(a, b)


async def test_case_06_second_setid(url):
    """A second setid gets E:107 with the current user object."""
    (a,) = await identified(url, "alice")
    await a.send({"cmd": "setid", "val": "alice2", "listener": "username_cfg"})
    await a.expect(status("E:107 | ID already set", "username_cfg", val=OBJ("alice")))
    await a.close()


async def test_case_07_numeric_username_accepted(url):
    """FIX #11: the number 123 (what the extension sends for "123") names the client "123"."""
    c, b = await identified(url, "c", "b", named=False)
    await c.send({"cmd": "setid", "val": 123, "listener": "username_cfg"})
    await b.expect(ulist("add", OBJ("123")))
    await c.expect(ulist("set", [OBJ("123")]), OK("username_cfg", val=OBJ("123")))
    assert c.model.username_synced and c.model.my_username == "123"
    await close_all(c, b)


# gmsg / gvar


async def test_case_08_gmsg_reaches_everyone_including_sender(url):
    """gmsg without listener reaches every member of default, the sender too."""
    a, b = await identified(url, "alice", "bob")
    (c,) = await identified(url, "c", named=False)
    await drain(a, b)
    await b.send({"cmd": "gmsg", "val": "hello"})
    for client in (a, b, c):
        await client.expect({"cmd": "gmsg", "val": "hello", "rooms": "default"})
    await close_all(a, b, c)


async def test_case_09_gmsg_listener_only_on_senders_copy(url):
    """FIX #2: the sender's copy carries the listener; everyone's copy carries rooms."""
    a, b = await identified(url, "alice", "bob")
    await b.send({"cmd": "gmsg", "val": {"x": 1}, "listener": "g1"})
    await b.expect({"cmd": "gmsg", "val": {"x": 1}, "listener": "g1", "rooms": "default"})
    await a.expect({"cmd": "gmsg", "val": {"x": 1}, "rooms": "default"})
    await close_all(a, b)


async def test_case_10_gvar(url):
    """gvar reaches every member including the sender, keyed by name."""
    a, b = await identified(url, "alice", "bob")
    await b.send({"cmd": "gvar", "name": "Apple", "val": "Banana"})
    for client in (a, b):
        await client.expect({"cmd": "gvar", "name": "Apple", "val": "Banana", "rooms": "default"})
        assert client.model.gvars == {"Apple": "Banana"}
    await close_all(a, b)


async def test_case_11_gvar_listener_only_on_senders_copy(url):
    """FIX #1: only the sender's gvar copy carries the listener."""
    a, b = await identified(url, "alice", "bob")
    await b.send({"cmd": "gvar", "name": "Apple", "val": 1, "listener": "gv"})
    await b.expect({"cmd": "gvar", "name": "Apple", "val": 1, "rooms": "default",
                    "listener": "gv"})
    await a.expect({"cmd": "gvar", "name": "Apple", "val": 1, "rooms": "default"})
    await close_all(a, b)


async def test_gmsg_and_gvar_are_not_replayed_to_new_joiners(url):
    """PARITY: gmsg/gvar values are not stored; a client joining later gets none of them."""
    (b,) = await identified(url, "bob")
    await b.send({"cmd": "gvar", "name": "Apple", "val": "Banana"})
    await b.send({"cmd": "gmsg", "val": "hi"})
    await drain(b)
    late = await Cl4.open(url, "late", quiet=False)
    burst = await late.handshake()
    assert [m["cmd"] for m in burst] == ["client_ip", "server_version", "client_obj", "ulist",
                                         "statuscode"]
    await late.expect_nothing()
    await close_all(b, late)


# pmsg / pvar


async def test_case_12_pmsg(url):
    """pmsg by username reaches that user with origin; the sender gets OK."""
    a, b, c = await identified(url, "alice", "bob", "carol")
    await b.send({"cmd": "pmsg", "id": "alice", "val": "psst", "listener": "pm"})
    await a.expect({"cmd": "pmsg", "val": "psst", "origin": OBJ("bob"), "rooms": "default"})
    await b.expect(OK("pm"))
    await c.expect_nothing()
    await close_all(a, b, c)


async def test_case_13_pvar(url):
    """pvar by username reaches that user with name and origin; the sender gets OK."""
    a, b = await identified(url, "alice", "bob")
    await b.send({"cmd": "pvar", "id": "alice", "name": "secret", "val": 42, "listener": "pv"})
    await a.expect({"cmd": "pvar", "name": "secret", "val": 42, "origin": OBJ("bob"),
                    "rooms": "default"})
    await b.expect(OK("pv"))
    assert a.model.pvars == {"secret": 42}
    await close_all(a, b)


async def test_case_14_pmsg_unknown_id(url):
    """pmsg to a name nobody has gets E:103 with details and the listener."""
    (b,) = await identified(url, "bob")
    await b.send({"cmd": "pmsg", "id": "nobody", "val": "x", "listener": "pm2"})
    await b.expect(status("E:103 | ID not found", "pm2", details="No matches found: nobody"))
    await b.close()


@pytest.mark.parametrize("message", [
    {"cmd": "pmsg", "id": "bob", "val": "x"},
    {"cmd": "pvar", "id": "bob", "name": "v", "val": "x"},
    {"cmd": "link", "val": ["r"]},
    {"cmd": "unlink", "val": ""},
], ids=["pmsg", "pvar", "link", "unlink"])
async def test_case_15_username_required(url, message):
    """pmsg, pvar, link and unlink before setid get E:111 with the listener."""
    (b,) = await identified(url, "bob")
    (n,) = await identified(url, "n", named=False)
    await n.send({**message, "listener": "L"})
    await n.expect(status("E:111 | ID required", "L",
                          details="This command requires setting a username."))
    await b.expect_nothing()
    await close_all(b, n)


async def test_case_16_ambiguous_username(url):
    """pmsg to a username two clients share gets E:104 and reaches neither."""
    a, b1, b2 = await identified(url, "alice", "bob", "bob")
    await a.send({"cmd": "pmsg", "id": "bob", "val": "x", "listener": "pm"})
    await a.expect(status("E:104 | ID not specific enough", "pm", details=MULTIPLE))
    await b1.expect_nothing(0.1)
    await b2.expect_nothing(0.1)
    await close_all(a, b1, b2)


async def test_case_17_pmsg_by_snowflake_and_uuid(url):
    """pmsg addressed by snowflake, then by uuid, reaches bob each time; OK each time."""
    a, b = await identified(url, "alice", "bob")
    for ident in (b.user["id"], b.user["uuid"]):
        await a.send({"cmd": "pmsg", "id": ident, "val": ident, "listener": "pm"})
        await b.expect({"cmd": "pmsg", "val": ident, "origin": OBJ("alice"), "rooms": "default"})
        await a.expect(OK("pm"))
    await close_all(a, b)


# Rooms


async def test_case_18_link(url):
    """link: default members get remove, room members add, the linker set then OK("link")."""
    a, b, c, d = await identified(url, "alice", "bob", "carol", "dave")
    await d.send({"cmd": "link", "val": ["test"], "listener": "link"})
    await d.recv_until(lambda m: m.get("cmd") == "statuscode")
    await drain(a, b, c)
    await a.send({"cmd": "link", "val": ["test"], "listener": "link"})
    for other in (b, c):
        await other.expect(ulist("remove", OBJ("alice")))
        assert other.model.recently_left["uuid"] == a.user["uuid"]
    await d.expect(ulist("add", OBJ("alice"), "test"))
    await a.expect(ulist("set", Unordered([OBJ("alice"), OBJ("dave")]), "test"), OK("link"))
    assert a.model.linked
    await close_all(a, b, c, d)


async def test_case_19_linked_client_leaves_default(url):
    """After linking away from default, a gmsg in default does not reach the linked client."""
    a, b, c = await identified(url, "alice", "bob", "carol")
    await a.send({"cmd": "link", "val": ["test"], "listener": "link"})
    await a.recv_until(lambda m: m.get("cmd") == "statuscode")
    await drain(b, c)
    await b.send({"cmd": "gmsg", "val": "default-only"})
    await c.expect({"cmd": "gmsg", "val": "default-only", "rooms": "default"})
    await a.expect_nothing()
    await close_all(a, b, c)


async def test_case_20_room_not_joined(url):
    """gmsg naming a room the sender left gets E:115 and nothing is broadcast."""
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "link", "val": ["test"], "listener": "link"})
    await a.recv_until(lambda m: m.get("cmd") == "statuscode")
    await drain(b)
    await a.send({"cmd": "gmsg", "val": "x", "rooms": "default", "listener": "nj"})
    await a.expect(status("E:115 | Room not joined", "nj",
                          details="Attempted to access room default while not joined."))
    await b.expect_nothing()
    await close_all(a, b)


async def test_case_21_one_copy_per_room(url):
    """A client in r1 and r2 gets two copies of its gmsg; a member of r1 only gets one."""
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "link", "val": ["r1", "r2"], "listener": "link"})
    await a.recv_until(lambda m: m == OK("link"))
    await b.send({"cmd": "link", "val": ["r1"], "listener": "link"})
    await b.recv_until(lambda m: m == OK("link"))
    await drain(a, b)
    await a.send({"cmd": "gmsg", "val": "multi"})
    await a.expect({"cmd": "gmsg", "val": "multi", "rooms": "r1"},
                   {"cmd": "gmsg", "val": "multi", "rooms": "r2"})
    await b.expect({"cmd": "gmsg", "val": "multi", "rooms": "r1"})
    await b.expect_nothing()
    await close_all(a, b)


async def test_case_22_unlink_all(url):
    """unlink "": room members get remove, default gets add, the client set(default) then OK."""
    a, b, d = await identified(url, "alice", "bob", "dave")
    for client in (d, a):
        await client.send({"cmd": "link", "val": ["test"], "listener": "link"})
        await client.recv_until(lambda m: m == OK("link"))
    await drain(a, b, d)
    await a.send({"cmd": "unlink", "val": "", "listener": "unlink"})
    await d.expect(ulist("remove", OBJ("alice"), "test"))
    await b.expect(ulist("add", OBJ("alice")))
    await a.expect(ulist("set", Unordered([OBJ("alice"), OBJ("bob")])), OK("unlink"))
    assert not a.model.linked
    await close_all(a, b, d)


async def test_case_23_disconnect_removes_named_user(url):
    """A named client leaving: ulist remove (by its uuid) to the rest; unnamed leaves silently."""
    a, b = await identified(url, "alice", "bob")
    (c,) = await identified(url, "c", named=False)
    bob_uuid = b.user["uuid"]
    await drain(a)
    await b.close()
    for client in (a, c):
        message = (await client.expect(ulist("remove", OBJ("bob"))))[0]
        assert message["val"]["uuid"] == bob_uuid
    await c.close()
    await a.expect_nothing()
    await a.close()


# Errors


async def test_case_24_unknown_command(url):
    """FIX #3: an unknown cmd gets E:109 with details and the listener."""
    (a,) = await identified(url, "alice")
    await a.send({"cmd": "nosuchcmd", "val": 1, "listener": "L"})
    await a.expect(status("E:109 | Invalid command", "L",
                          details="nosuchcmd is an invalid command."))
    await a.close()


async def test_case_25_schema_errors(url):
    """A missing val gets E:101 with details and the listener; a null val E:101 too."""
    (a,) = await identified(url, "alice")
    await a.send({"cmd": "gmsg", "listener": "L2"})
    await a.expect(status("E:101 | Syntax", "L2", details={"val": ["required field"]}))
    await a.send({"cmd": "gmsg", "val": None})
    await a.expect(status("E:101 | Syntax", details={"val": ["null value not allowed"]}))
    await a.close()


async def test_case_26_json_error_keeps_connection(url):
    """Invalid JSON after identification gets E:114 and the connection stays open."""
    (a,) = await identified(url, "alice")
    await a.send_text("garbage{")
    reply = (await a.expect(status("E:114 | JSON error", details=STR)))[0]
    assert reply["details"].startswith("A JSON error was raised: ")
    await a.send({"cmd": "ping", "listener": "still"})
    await a.expect(OK("still"))
    await a.close()


@pytest.mark.parametrize("first", ["not json", '{"foo":"bar"}', "", "[1,2]", '"cmd"'],
                         ids=["not-json", "no-cmd-or-method", "empty", "array", "string"])
async def test_case_27_unidentified_first_message_goes_to_scratch(url, first):
    """Shared listener: a first message that is not CL4 is the Scratch handler's: close 4000."""
    ws = await ws_connect(url)
    await ws.send(first)
    await expect_close(ws, 4000)


async def test_case_28_direct_by_snowflake_and_uuid(url):
    """§5 row: direct reaches bob with the sender's listener; the sender gets nothing; E:103."""
    a, b = await identified(url, "alice", "bob")
    for ident in (b.user["id"], b.user["uuid"]):
        await a.send({"cmd": "direct", "id": ident, "val": "d1", "listener": "d"})
        await b.expect({"cmd": "direct", "val": "d1", "origin": OBJ("alice"), "listener": "d"})
        await a.expect_nothing()
    await a.send({"cmd": "direct", "id": "nope", "val": "d1", "listener": "d"})
    await a.expect(status("E:103 | ID not found", "d"))
    assert b.model.direct_data == "d1"
    await close_all(a, b)


async def test_direct_without_listener_is_not_acknowledged(url):
    """direct without a listener: the recipient gets it, the sender gets nothing."""
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "direct", "id": b.user["uuid"], "val": {"k": 1}})
    await b.expect({"cmd": "direct", "val": {"k": 1}, "origin": OBJ("alice")})
    await a.expect_nothing()
    await close_all(a, b)


async def test_case_29_empty_message(url):
    """FIX #4: an empty message after identification gets E:106; the connection stays open."""
    (a,) = await identified(url, "alice")
    await a.send_text("")
    await a.expect(status("E:106 | Empty packet"))
    await a.send({"cmd": "ping", "listener": 1})
    await a.expect(OK(1))
    await a.close()


async def test_case_30_non_object_json(url):
    """FIX #13: [1,2,3] after identification gets E:101 with details; connection open."""
    (a,) = await identified(url, "alice")
    await a.send([1, 2, 3])
    reply = await a.recv()
    assert reply["code"] == "E:101 | Syntax" and reply["code_id"] == 101 and reply["details"]
    assert "listener" not in reply
    await a.send({"cmd": "ping", "listener": 1})
    await a.expect(OK(1))
    await a.close()


async def test_case_31_link_number_room(url):
    """FIX #9: link val 5 joins room "5"."""
    (a,) = await identified(url, "alice")
    await a.send({"cmd": "link", "val": 5, "listener": "link"})
    await a.expect(ulist("set", [OBJ("alice")], "5"), OK("link"))
    await a.close()


async def test_case_32_unlink_ghost_room(url):
    """FIX #8: unlink of a room never joined broadcasts nothing and answers OK."""
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "unlink", "val": "ghost", "listener": "unlink"})
    await a.expect(OK("unlink"))
    await b.expect_nothing()
    await close_all(a, b)


async def test_case_33_direct_by_username(url):
    """FIX #7: direct to a unique username reaches it, with the listener; the sender, nothing."""
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "direct", "id": "bob", "val": "x", "listener": "d"})
    await b.expect({"cmd": "direct", "val": "x", "origin": OBJ("alice"), "listener": "d"})
    await a.expect_nothing()
    await close_all(a, b)


async def test_direct_listener_not_forwarded_when_configured(make_server):
    """[cl4] direct_forward_listener = false: bob gets no listener, the sender gets OK."""
    url = make_server(cl4={"direct_forward_listener": False}).url
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "direct", "id": b.user["uuid"], "val": "x", "listener": "d"})
    await b.expect({"cmd": "direct", "val": "x", "origin": OBJ("alice")})
    await a.expect(OK("d"))
    await close_all(a, b)


async def test_case_34_pmsg_to_user_object(url):
    """FIX #5: pmsg whose id is bob's user object reaches bob; the sender gets OK."""
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "pmsg", "id": b.user, "val": "obj", "listener": "pm"})
    await b.expect({"cmd": "pmsg", "val": "obj", "origin": OBJ("alice"), "rooms": "default"})
    await a.expect(OK("pm"))
    await close_all(a, b)


# §2 one port for both protocols


async def test_first_message_with_cmd_is_cl4(url):
    """A first message with a string cmd is CL4, even with a method key too."""
    a = await Cl4.open(url, "a")
    await a.send({"cmd": "ping", "method": "handshake", "listener": "x"})
    await a.expect(OK("x"))
    await a.close()


async def test_first_message_with_method_is_scratch(url):
    """A first message with a method is the Scratch protocol: handshake, then sets relay."""
    room = fresh_room()
    a = await joined(url, room, "player1")
    b = await joined(url, room, "player2")
    await asyncio.sleep(0.1)
    await a.send(set_text("☁ x", 5))
    assert set_line("☁ x", 5) in str(await recv(b)).split("\n")
    await a.close()
    await b.close()


async def test_same_room_name_is_separate_without_bridge(url):
    """With the bridge off, CL4 room P and Scratch project P never see each other's traffic."""
    room = fresh_room()
    scratch = await joined(url, room, "player1")
    (cl4,) = await identified(url, "alice")
    await cl4.send({"cmd": "link", "val": [room], "listener": "link"})
    await cl4.recv_until(lambda m: m == OK("link"))
    await scratch.send(set_text("☁ x", 1))
    await cl4.send({"cmd": "gvar", "name": "☁ x", "val": 2})
    await cl4.expect({"cmd": "gvar", "name": "☁ x", "val": 2, "rooms": room})
    await cl4.expect_nothing()
    await expect_nothing(scratch)
    late = await joined(url, room, "player2")  # the Scratch room holds only the Scratch write
    assert set_line("☁ x", 1) in str(await recv(late)).split("\n")
    await close_all(cl4)
    await scratch.close()
    await late.close()


# The real extension's state (end of §15)


async def test_extension_state_table(url):
    """A model of cloudlink.js driven by two clients ends in the state the spec's table lists."""
    a, b = await open_clients(url, "alice", "bob")
    await a.handshake()
    await b.handshake()
    for client in (a, b):
        model = client.model
        assert model.connected
        assert "0.2." in model.server_version and model.level == 4
        assert set(model.client_obj) == {"id", "uuid"}
    await a.setid("alice")
    await b.setid("bob")
    await drain(a, b)
    assert a.model.username_synced and a.model.my_username == "alice"
    assert sorted(a.model.usernames()) == ["alice", "bob"]
    assert all(set(user) == {"id", "username", "uuid"} for user in a.model.ulist)

    c = await Cl4.open(url, "c", quiet=False)
    await c.handshake()
    await c.send({"cmd": "setid", "val": 123, "listener": "username_cfg"})  # typed "123"
    await c.recv_until(lambda m: m.get("cmd") == "statuscode")
    assert c.model.username_synced and c.model.my_username == "123"
    await c.close()
    await drain(a, b)
    assert sorted(a.model.usernames()) == ["alice", "bob"]

    await b.send({"cmd": "gmsg", "val": "hello"})
    await b.send({"cmd": "gvar", "val": "Banana", "name": "Apple"})
    await drain(a, b)
    for client in (a, b):
        assert client.model.global_data == "hello"
        assert client.model.gvars["Apple"] == "Banana"

    await b.send({"cmd": "pmsg", "val": "psst", "id": "alice"})
    await drain(a, b)
    assert a.model.private_data == "psst"
    assert b.model.status_code == "I:100 | OK"
    await b.send({"cmd": "pmsg", "val": "psst", "id": "nobody"})
    await drain(b)
    assert b.model.status_code == "E:103 | ID not found"

    await a.send({"cmd": "link", "val": "test", "listener": "link"})
    await drain(a, b)
    assert a.model.linked and a.model.usernames() == ["alice"]
    await a.send({"cmd": "unlink", "val": "", "listener": "unlink"})
    await drain(a, b)
    assert not a.model.linked and sorted(a.model.usernames()) == ["alice", "bob"]

    joins, leaves = a.model.joined_hats, a.model.left_hats
    await b.close()
    await drain(a)
    assert a.model.usernames() == ["alice"]
    assert a.model.recently_left == b.user
    assert not a.model.id_connected("bob")
    assert a.model.left_hats == leaves + 1 and a.model.joined_hats == joins
    assert a.model.status_code == ""  # reserved-listener replies never reached the reporter
    await a.close()


# Limits


async def test_message_rate_limit(make_server):
    """Over messages_per_second (after the burst) a message is dropped with E:116."""
    url = make_server(cl4={"messages_per_second": 2.0, "message_burst": 3}).url
    a = await Cl4.open(url, "a", quiet=False)
    for n in range(6):
        await a.send({"cmd": "ping", "listener": n})
    replies = [await a.recv() for _ in range(6)]
    assert replies[:3] == [OK(0), OK(1), OK(2)]
    for n, reply in zip(range(3, 6), replies[3:], strict=True):
        assert reply["code"] == "E:116 | Rate limited" and reply["code_id"] == 116
        assert reply["listener"] == n
    await asyncio.sleep(0.6)  # one token back
    await a.send({"cmd": "ping", "listener": "later"})
    await a.expect(OK("later"))
    await a.close()


async def test_setid_rate_limit(make_server):
    """Cycling setid (CloudLink issue #23) is limited: past the burst, E:116."""
    url = make_server(cl4={"setid_per_minute": 1.0, "setid_burst": 2}).url
    (a,) = await identified(url, "alice")  # one setid spent
    await a.send({"cmd": "setid", "val": "x", "listener": "username_cfg"})
    await a.expect(status("E:107 | ID already set", "username_cfg", val=OBJ("alice")))
    await a.send({"cmd": "setid", "val": "y", "listener": "username_cfg"})
    reply = await a.recv()
    assert reply["code"] == "E:116 | Rate limited" and reply["listener"] == "username_cfg"
    await a.close()


async def test_max_val_size(make_server):
    """A val larger than max_val_bytes is refused with E:113 and not broadcast."""
    url = make_server(cl4={"max_val_bytes": 100}).url
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "gmsg", "val": "x" * 200, "listener": "big"})
    reply = await a.recv()
    assert reply["code"] == "E:113 | Too large" and reply["listener"] == "big"
    await b.expect_nothing()
    await a.send({"cmd": "gmsg", "val": "x" * 50})
    await b.expect({"cmd": "gmsg", "val": "x" * 50, "rooms": "default"})
    await close_all(a, b)


async def test_max_rooms_per_client(make_server):
    """Linking more rooms than max_rooms_per_client is refused with E:117; nothing changes."""
    url = make_server(cl4={"max_rooms_per_client": 2}).url
    a, b = await identified(url, "alice", "bob")
    await a.send({"cmd": "link", "val": ["r1", "r2", "r3"], "listener": "link"})
    reply = await a.recv()
    assert reply["code"] == "E:117 | Too many rooms" and reply["listener"] == "link"
    await b.expect_nothing()  # alice is still in default
    await a.send({"cmd": "link", "val": ["r1", "r2"], "listener": "link"})
    await a.recv_until(lambda m: m == OK("link"))
    await a.close()
    await b.close()


async def test_slow_reader_is_disconnected_with_1013(make_server):
    """A CL4 client that stops reading while its room is flooded is closed with 1013."""
    srv = make_server(server={"write_buffer_high": 16384},
                      cl4={"max_queue_bytes": 65536, "messages_per_second": 0,
                           "max_val_bytes": 0})
    slow = await raw_connect(srv.url, rcvbuf=4096)
    await slow.send_text(json.dumps({"cmd": "handshake"}))
    await slow.drain()
    # Read the handshake burst, then never read again.
    for _ in range(5):
        await slow.recv_message()  # fails if the connection ends

    flooder = await connect(srv.url, compression=None, ping_interval=None, max_queue=None)
    await flooder.send(json.dumps({"cmd": "handshake"}))

    alive = asyncio.Event()

    async def discard():
        async for text in flooder:
            if json.loads(text) == OK("alive"):
                alive.set()

    reader = asyncio.create_task(discard())
    payload = "y" * 8000
    for _ in range(400):  # 3.2 MB for the slow client: far past its kernel buffers
        await flooder.send(json.dumps({"cmd": "gmsg", "val": payload}))
    await asyncio.sleep(0.3)

    closed = await slow.expect_close(timeout=10)
    frames = len(closed.frames)
    assert closed.code == 1013, f"closed with {closed.code} after {frames} frames"
    assert frames < 400

    # The server is healthy and the flooder still served.
    with urllib.request.urlopen(srv.http_url + "/healthz", timeout=3) as reply:
        assert reply.status == 200
    await flooder.send(json.dumps({"cmd": "ping", "listener": "alive"}))
    fresh = await Cl4.open(srv.url, "fresh", quiet=False)
    await fresh.handshake()
    await asyncio.wait_for(alive.wait(), 5)
    reader.cancel()
    await fresh.close()
    await flooder.close()
    await slow.abort()


# Bad input: every message is answered, nothing reaches the log as a traceback


def nested(depth: int) -> str:
    """JSON text of `depth` arrays nested in each other."""
    return "[" * depth + "]" * depth


async def test_deeply_nested_fields_get_e101(make_server):
    """A field nested ~600 deep gets E:101 naming it (+listener); past the parser, E:101 too."""
    srv = make_server()
    (a,) = await identified(srv.url, "alice")
    too_deep = [f"nested deeper than {MAX_JSON_DEPTH} levels"]
    for field in ("val", "rooms", "id", "name"):
        await a.send_text(f'{{"cmd":"gvar","name":"n","val":1,"listener":"L","{field}":'
                          f"{nested(600)}}}")
        await a.expect({"cmd": "statuscode", "code": "E:101 | Syntax", "code_id": 101,
                        "details": {field: too_deep}, "listener": "L"})
    await a.send_text(f'{{"cmd":"gmsg","val":1,"listener":{nested(600)}}}')
    await a.expect(status("E:101 | Syntax", details={"listener": too_deep}))
    await a.send_text(f'{{"cmd":"gmsg","val":{nested(50_000)},"listener":"L"}}')
    await a.expect(status("E:101 | Syntax", details={"message": too_deep}))
    await a.send({"cmd": "ping", "listener": "still open"})
    await a.expect(OK("still open"))
    await a.close()
    assert "Traceback" not in srv.log()
