"""The example plugins of plugins/examples/, loaded with the exact `[[plugins]]` TOML blocks
that docs/plugins.md shows, over real sockets."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.conformance.cl4_client import INT, OK, close_all, identified, regex, status
from tests.conformance.helpers import (
    expect_nothing,
    fresh_room,
    joined,
    recv,
    recv_until,
    set_line,
    set_text,
)
from tests.conftest import ROOT, ServerProcess
from tests.server.plugin_fixtures import append_plugins

GUIDE = ROOT / "docs" / "plugins.md"


def guide_block(use: str) -> str:
    """The ```toml block of the guide whose `use` line names `use`, verbatim."""
    blocks = re.findall(r"```toml\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    found = [block for block in blocks if f'use = "{use}"' in block]
    assert len(found) >= 1, f"docs/plugins.md shows no config for {use}"
    return found[-1]  # the Examples section comes last


@pytest.fixture
def guide_server(tmp_path):
    """Factory: a server subprocess configured with the guide's block for `use`."""
    started: list[ServerProcess] = []

    def factory(use: str) -> ServerProcess:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir()
        proc = ServerProcess(workdir)
        append_plugins(proc.config_path, guide_block(use))
        started.append(proc.start())
        return proc

    yield factory
    for proc in started:
        proc.stop()


# Dice


async def test_dice_rolls_with_reply_and_announcement(guide_server):
    """roll 2 answers OK with two 1-6 rolls, and the room is told who rolled what."""
    srv = guide_server("plugins.examples.dice:Dice")
    alice, bob = await identified(srv.url, "alice", "bob")
    await alice.send({"cmd": "roll", "val": 2, "listener": "r"})
    announcement, reply = await alice.expect(
        {"cmd": "gmsg", "val": regex(r"alice rolled \[\d, \d\]"), "rooms": "default"},
        OK("r", val=[INT, INT]),
    )
    assert all(1 <= roll <= 6 for roll in reply["val"])
    assert announcement["val"] == f"alice rolled {reply['val']}"
    await bob.expect({"cmd": "gmsg", "val": announcement["val"], "rooms": "default"})
    await close_all(alice, bob)


@pytest.mark.parametrize(("val", "details"), [
    (11, {"val": ["max value is 10"]}),
    (0, {"val": ["min value is 1"]}),
    ("two", {"val": ["must be of integer type"]}),
])
async def test_dice_schema_errors(guide_server, val, details):
    """roll with a val outside 1-10 or not an integer gets E:101 with details and listener."""
    srv = guide_server("plugins.examples.dice:Dice")
    (a,) = await identified(srv.url, "alice")
    await a.send({"cmd": "roll", "val": val, "listener": "r"})
    await a.expect(status("E:101 | Syntax", "r", details=details))
    await a.expect_nothing()
    await a.close()


# Cooldown filter


async def test_cooldown_vetoes_the_fourth_message(guide_server):
    """Three gmsg/gvar pass within 10 s; the fourth gets E:120 | Cooldown and reaches nobody."""
    srv = guide_server("plugins.examples.filter:Cooldown")
    a, b = await identified(srv.url, "alice", "bob")
    await a.send({"cmd": "gmsg", "val": "one"})
    await a.send({"cmd": "gvar", "name": "v", "val": 2})
    await a.send({"cmd": "gmsg", "val": "three"})
    await a.send({"cmd": "gmsg", "val": "four", "listener": "g"})
    await b.expect(
        {"cmd": "gmsg", "val": "one", "rooms": "default"},
        {"cmd": "gvar", "name": "v", "val": 2, "rooms": "default"},
        {"cmd": "gmsg", "val": "three", "rooms": "default"},
    )
    await b.expect_nothing()
    got = await a.recv_until(lambda m: m.get("cmd") == "statuscode")
    assert [m.get("val") for m in got[:-1]] == ["one", 2, "three"]
    assert got[-1]["code"] == "E:120 | Cooldown" and got[-1]["code_id"] == 120
    assert got[-1]["listener"] == "g" and got[-1]["details"].startswith("Slow down: try again in")
    # Other clients and other commands are not limited.
    await b.send({"cmd": "gmsg", "val": "bob is fine"})
    await a.expect({"cmd": "gmsg", "val": "bob is fine", "rooms": "default"})
    await a.send({"cmd": "pmsg", "id": "bob", "val": "psst", "listener": "p"})
    await a.expect(OK("p"))
    await close_all(a, b)


async def test_cooldown_masks_blocked_words(guide_server):
    """A blocked word in gmsg text reaches everyone as asterisks."""
    srv = guide_server("plugins.examples.filter:Cooldown")
    a, b = await identified(srv.url, "alice", "bob")
    await a.send({"cmd": "gmsg", "val": "what the Heck, heckler"})
    for client in (a, b):
        await client.expect({"cmd": "gmsg", "val": "what the ****, heckler", "rooms": "default"})
    await close_all(a, b)


# Score validator


async def test_score_validator_refuses_negatives_and_clamps(guide_server):
    """☁ score -5 is refused, 5000 becomes 1000 (relayed and stored), other names pass."""
    srv = guide_server("plugins.examples.validator:ScoreValidator")
    room = fresh_room()
    a = await joined(srv.url, room, "player1")
    b = await joined(srv.url, room, "player2")
    await asyncio.sleep(0.1)
    await a.send(set_text("☁ score", -5))
    await a.send(set_text("☁ score2", 5000))
    await a.send(set_text("☁ lives", -5))
    lines = await recv_until(b, lambda got: set_line("☁ lives", -5) in got)
    assert lines == [set_line("☁ score2", 1000), set_line("☁ lives", -5)]
    await a.send(set_text("☁ score", "42"))
    assert str(await recv(b)) == set_line("☁ score", "42")
    await expect_nothing(b)
    late = await joined(srv.url, room, "player3")
    assert sorted(str(await recv(late)).split("\n")) == sorted(
        [set_line("☁ score2", 1000), set_line("☁ lives", -5), set_line("☁ score", "42")])
    for ws in (a, b, late):
        await ws.close()
