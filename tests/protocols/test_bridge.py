"""The opt-in Scratch <-> CL4 bridge (CL4 spec §12, `[bridge]`), over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from tests.conformance.cl4_client import OK, Cl4, close_all, drain, identified
from tests.conformance.helpers import (
    expect_nothing,
    fresh_room,
    joined,
    recv,
    recv_until,
    set_line,
    set_text,
)
from tests.conftest import BACKENDS, ServerProcess


@pytest.fixture(params=BACKENDS)
def bridged(request, make_backend):
    """A server with the bridge on for every room: one process, or two Redis nodes behind a
    round-robin proxy (a test's Scratch and CL4 clients on different nodes)."""
    return make_backend(request.param, bridge={"enabled": True})


async def cl4_in(url: str, room: str, name: str = "alice") -> Cl4:
    """A named CL4 client linked to `room` only, with its inbox drained."""
    (client,) = await identified(url, name)
    await client.send({"cmd": "link", "val": [room], "listener": "link"})
    await client.recv_until(lambda m: m == OK("link"))
    return client


async def test_scratch_set_reaches_cl4_as_gvar(bridged):
    """A Scratch set in project P reaches CL4 room P as a gvar; "42" arrives as 42."""
    room = fresh_room()
    cl4 = await cl4_in(bridged.url, room)
    scratch = await joined(bridged.url, room, "player1")
    await asyncio.sleep(0.1)
    await scratch.send(set_text("☁ score", "42"))
    await cl4.expect({"cmd": "gvar", "name": "☁ score", "val": 42, "rooms": room})
    await scratch.send(set_text("☁ score", 7.5))
    await cl4.expect({"cmd": "gvar", "name": "☁ score", "val": 7.5, "rooms": room})
    await cl4.expect_nothing()
    await close_all(cl4)
    await scratch.close()


async def test_cl4_gvar_reaches_scratch_and_is_stored(bridged):
    """A CL4 gvar in room P reaches Scratch clients of P as a set and is stored for joiners."""
    room = fresh_room()
    scratch = await joined(bridged.url, room, "player1")
    cl4 = await cl4_in(bridged.url, room)
    await asyncio.sleep(0.1)
    await cl4.send({"cmd": "gvar", "name": "☁ score", "val": 42})
    lines = await recv_until(scratch, lambda got: set_line("☁ score", 42) in got)
    assert set_line("☁ score", 42) in lines
    late = await joined(bridged.url, room, "player2")
    assert set_line("☁ score", 42) in str(await recv(late)).split("\n")
    await close_all(cl4)
    await scratch.close()
    await late.close()


async def test_invalid_values_do_not_reach_scratch(bridged):
    """Objects, lists and text from a CL4 gvar fail Scratch validation and are not relayed."""
    room = fresh_room()
    scratch = await joined(bridged.url, room, "player1")
    cl4 = await cl4_in(bridged.url, room)
    await asyncio.sleep(0.1)
    for val in ({"x": 1}, [1, 2], "hello", True):
        await cl4.send({"cmd": "gvar", "name": "☁ v", "val": val})
    await cl4.send({"cmd": "gvar", "name": "☁ v", "val": "123"})  # numeric text is valid
    lines = await recv_until(scratch, lambda got: any('"☁ v"' in line for line in got))
    assert lines == [set_line("☁ v", "123")]
    await expect_nothing(scratch)
    await close_all(cl4)
    await scratch.close()


async def test_no_echo_loop(bridged):
    """A bridged write is delivered once on each side and never bounces back."""
    room = fresh_room()
    scratch = await joined(bridged.url, room, "player1")
    cl4 = await cl4_in(bridged.url, room)
    await asyncio.sleep(0.1)
    await cl4.send({"cmd": "gvar", "name": "☁ a", "val": 1})
    await cl4.expect({"cmd": "gvar", "name": "☁ a", "val": 1, "rooms": room})  # its own copy
    await cl4.expect_nothing()
    assert str(await recv(scratch)) == set_line("☁ a", 1)
    await expect_nothing(scratch)

    await scratch.send(set_text("☁ b", 2))
    await cl4.expect({"cmd": "gvar", "name": "☁ b", "val": 2, "rooms": room})
    await cl4.expect_nothing()
    await expect_nothing(scratch)  # no echo of its own write
    await close_all(cl4)
    await scratch.close()


async def test_bridge_rooms_globs(make_server):
    """Only rooms matching [bridge] rooms are bridged."""
    srv = make_server(bridge={"enabled": True, "rooms": ["game-*"]})
    inside, outside = fresh_room("game"), fresh_room("other")
    cl4_in_game = await cl4_in(srv.url, inside, "a")
    cl4_other = await cl4_in(srv.url, outside, "b")
    s_game = await joined(srv.url, inside, "player1")
    s_other = await joined(srv.url, outside, "player2")
    await asyncio.sleep(0.1)
    await s_game.send(set_text("☁ x", 1))
    await s_other.send(set_text("☁ x", 2))
    await cl4_in_game.expect({"cmd": "gvar", "name": "☁ x", "val": 1, "rooms": inside})
    await cl4_other.expect_nothing()
    await close_all(cl4_in_game, cl4_other)
    await s_game.close()
    await s_other.close()


async def test_bridge_is_off_by_default(make_server):
    """Without [bridge] enabled, Scratch sets never reach CL4 rooms of the same name."""
    srv = make_server()
    room = fresh_room()
    cl4 = await cl4_in(srv.url, room)
    scratch = await joined(srv.url, room, "player1")
    await asyncio.sleep(0.1)
    await scratch.send(set_text("☁ x", 1))
    await cl4.send({"cmd": "gvar", "name": "☁ x", "val": 2})
    await cl4.expect({"cmd": "gvar", "name": "☁ x", "val": 2, "rooms": room})
    await cl4.expect_nothing()
    await expect_nothing(scratch)
    await drain(cl4)
    await close_all(cl4)
    await scratch.close()


@pytest.fixture
def bridged_sprites(tmp_path):
    """A bridged server whose `sc-*` rooms run CloudRequests and `sa-*` ScratchattachRequests."""
    proc = ServerProcess(tmp_path, {"bridge": {"enabled": True}})
    with proc.config_path.open("a", encoding="utf-8") as config:
        for plugin, rooms in (("scratchcommunication:CloudRequests", "sc-*"),
                              ("scratchattach_plugin:ScratchattachRequests", "sa-*")):
            config.write(f'\n[[plugins]]\nuse = "plugins.sprites.{plugin}"\nrooms = ["{rooms}"]\n'
                         'handlers = "examples.sprite_handlers:Handlers"\n')
    yield proc.start()
    proc.stop()


async def test_cl4_cannot_forge_sprite_replies(bridged_sprites):
    """A CL4 gvar named like a sprite plugin's variables obeys the plugin as a Scratch set does:
    reply variables are refused, request variables consumed; none reaches or stays in the room."""
    srv = bridged_sprites
    for prefix, owned in (("sc", ["☁ TO_CLIENT_1", "☁ TO_CLIENT_4", "☁ FROM_CLIENT"]),
                          ("sa", ["☁ FROM_HOST_1", "☁ FROM_HOST_9", "☁ TO_HOST"])):
        room = fresh_room(prefix)
        victim = await joined(srv.url, room, "victim")
        attacker = await cl4_in(srv.url, room, "mallory")
        await asyncio.sleep(0.1)
        for name in owned:
            await attacker.send({"cmd": "gvar", "name": name, "val": "1201918.123450000"})
        await attacker.send({"cmd": "gvar", "name": "☁ marker", "val": 5})
        lines = await recv_until(victim, lambda got: set_line("☁ marker", 5) in got)
        assert lines == [set_line("☁ marker", 5)], lines  # the bridge works, nothing forged
        await expect_nothing(victim)
        late = await joined(srv.url, room, "latecomer")
        assert str(await recv(late)).split("\n") == [set_line("☁ marker", 5)]  # none stored
        await close_all(attacker)
        await victim.close()
        await late.close()
    assert "Traceback" not in srv.log()
