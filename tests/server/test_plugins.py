"""The plugin API (server/plugins.py) over real sockets: plugins loaded from config.toml in a
server subprocess, and plugins registered from code on an in-process `Server`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys

import pytest

from plugins.api import Plugin, custom_status, on_command, on_connect, on_disconnect
from server.__main__ import build_server, default_config
from server.config import Config
from tests.conformance.cl4_client import OK, Cl4, close_all, drain, identified, status
from tests.conformance.helpers import (
    expect_close,
    expect_nothing,
    fresh_room,
    handshake_text,
    joined,
    recv,
    recv_until,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import ROOT, ServerProcess
from tests.server.plugin_fixtures import append_plugins

FIXTURES = "tests.server.plugin_fixtures"


@pytest.fixture
def plugin_server(tmp_path):
    """Factory: a server subprocess with `[[plugins]]` tables (and other settings)."""
    started: list[ServerProcess] = []

    def factory(plugins, **settings) -> ServerProcess:
        workdir = tmp_path / f"server{len(started)}"
        workdir.mkdir(parents=True, exist_ok=True)
        proc = ServerProcess(workdir, settings)
        append_plugins(proc.config_path, plugins)
        started.append(proc.start())
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def standard(plugin_server) -> ServerProcess:
    """Tracer x2, Introspect, Rules (variable hooks in rooms hooked-*) and Gatekeeper."""
    return plugin_server([
        {"use": f"{FIXTURES}:Tracer", "tag": "one"},
        {"use": f"{FIXTURES}:Tracer", "tag": "two"},
        {"use": f"{FIXTURES}:Introspect"},
        {"use": f"{FIXTURES}:Rules", "rooms": ["hooked-*"]},
        {"use": f"{FIXTURES}:Gatekeeper"},
    ])


async def command(client: Cl4, message: dict) -> dict:
    """Send a command and return the statuscode that answers it."""
    await client.send(message)
    replies = await client.recv_until(lambda m: m.get("cmd") == "statuscode")
    return replies[-1]


# Hook order, veto, replacement


async def test_hook_order_is_config_order_then_definition_order(standard):
    """before_command hooks run plugin by plugin in config order, each in definition order."""
    (a,) = await identified(standard.url, "alice", named=False)
    reply = await command(a, {"cmd": "trace", "listener": "t"})
    assert reply["val"][-4:] == ["one.a", "one.b", "two.a", "two.b"]
    await a.close()


async def test_before_command_vetoes_builtin_with_custom_status(standard):
    """A before_command hook refuses a gmsg with E:120 | Cooldown; nobody receives it."""
    a, b = await identified(standard.url, "alice", "bob")
    await a.send({"cmd": "gmsg", "val": "forbidden", "listener": "g"})
    await a.expect(status("E:120 | Cooldown", "g", details="not now"))
    await b.expect_nothing()
    await close_all(a, b)


async def test_before_command_rewrites_message(standard):
    """A before_command hook returning a dict replaces the message before the built-in runs."""
    a, b = await identified(standard.url, "alice", "bob")
    await a.send({"cmd": "gmsg", "val": "rewrite-me"})
    for client in (a, b):
        await client.expect({"cmd": "gmsg", "val": "rewritten", "rooms": "default"})
    await close_all(a, b)


async def test_replace_builtin_command(standard):
    """@on_command("ping", replace=True) answers ping instead of the built-in."""
    (a,) = await identified(standard.url, "alice", named=False)
    await a.send({"cmd": "ping", "listener": "p"})
    await a.expect(OK("p", val="pong"))
    await a.close()


async def test_builtin_name_without_replace_fails_startup(tmp_path):
    """Registering a built-in command without replace=True stops start-up with exit code 2."""
    proc = ServerProcess(tmp_path)
    append_plugins(proc.config_path, [{"use": f"{FIXTURES}:BadBuiltin"}])
    result = subprocess.run([sys.executable, "-m", "server", "--config", str(proc.config_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "BadBuiltin" in result.stderr and "replace=True" in result.stderr


@pytest.mark.parametrize(("use", "expected"), [
    ("no_such_module_xyz:Thing", "no_such_module_xyz"),
    (f"{FIXTURES}:Missing", "has no 'Missing'"),
    (f"{FIXTURES}", "not a 'module:Class' string"),
    (f"{FIXTURES}:toml_value", "not a Plugin subclass"),
])
def test_bad_use_string_stops_startup(tmp_path, use, expected):
    """A bad `use` stops start-up with exit code 2 and a message naming the plugin entry."""
    proc = ServerProcess(tmp_path)
    append_plugins(proc.config_path, [{"use": use}])
    result = subprocess.run([sys.executable, "-m", "server", "--config", str(proc.config_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "[[plugins]] #1" in result.stderr and expected in result.stderr, result.stderr


# Errors


async def test_schema_failure_is_e101_with_details_and_listener(standard):
    """A plugin command whose message fails its schema gets E:101, details and the listener."""
    (a,) = await identified(standard.url, "alice", named=False)
    await a.send({"cmd": "strict", "val": 0, "listener": "s"})
    await a.expect(status("E:101 | Syntax", "s", details={"val": ["min value is 1"]}))
    await a.send({"cmd": "strict", "listener": "s"})
    await a.expect(status("E:101 | Syntax", "s", details={"val": ["required field"]}))
    await a.send({"cmd": "strict", "val": 3, "listener": "s"})
    await a.expect(OK("s", val=3))
    await a.close()


@pytest.mark.parametrize("message", [
    {"cmd": "boom", "listener": "b"},
    {"cmd": "gmsg", "val": "crash", "listener": "b"},
    {"cmd": "later", "val": "fail", "listener": "b"},
], ids=["command", "before_command", "async-command"])
async def test_plugin_exception_is_e105_and_connection_survives(standard, message):
    """A plugin exception is answered with E:105 and the listener; the connection keeps working."""
    (a,) = await identified(standard.url, "alice", named=False)
    await a.send(message)
    await a.expect(status("E:105 | Internal server error", "b"))
    await a.send({"cmd": "later", "listener": "l"})
    await a.expect(OK("l", val="done"))
    await a.close()


# on_variable


async def test_on_variable_transform_refuse_and_exception(standard):
    """on_variable doubles ☁ tdouble, refuses ☁ trefuse = 13, and a raising hook refuses."""
    room = fresh_room("hooked")
    a = await joined(standard.url, room, "player1")
    b = await joined(standard.url, room, "player2")
    await asyncio.sleep(0.1)
    await a.send(set_text("☁ tdouble", 21))
    await a.send(set_text("☁ trefuse", 13))
    await a.send(set_text("☁ texplode", 1))
    await a.send(set_text("☁ other", 5))
    lines = await recv_until(b, lambda got: set_line("☁ other", 5) in got)
    assert lines == [set_line("☁ tdouble", 42), set_line("☁ other", 5)]
    await expect_nothing(b)
    await a.send(set_text("☁ trefuse", 12))  # the hook let other values through
    assert str(await recv(b)) == set_line("☁ trefuse", 12)
    late = await joined(standard.url, room, "player3")  # what was stored
    dump = str(await recv(late)).split("\n")
    assert sorted(dump) == sorted([set_line("☁ tdouble", 42), set_line("☁ other", 5),
                                   set_line("☁ trefuse", 12)])
    for ws in (a, b, late):
        await ws.close()


async def test_plugin_rooms_restrict_variable_hooks(standard):
    """A plugin with rooms = ["hooked-*"] leaves writes in other projects alone."""
    room = fresh_room("plain")
    a = await joined(standard.url, room, "player1")
    b = await joined(standard.url, room, "player2")
    await asyncio.sleep(0.1)
    await a.send(set_text("☁ tdouble", 21))
    assert str(await recv(b)) == set_line("☁ tdouble", 21)
    await a.close()
    await b.close()


# on_handshake


async def test_scratch_handshake_refused_with_4002(standard):
    """on_handshake raising Refuse closes a Scratch client with 4002."""
    ws = await ws_connect(standard.url)
    await ws.send(handshake_text(fresh_room(), "banned"))
    await expect_close(ws, 4002)


async def test_cl4_handshake_refused_with_statuscode(standard):
    """on_handshake raising Refuse answers a CL4 handshake with its status, and nothing else."""
    a = await Cl4.open(standard.url, "a", user_agent_header="banned-client")
    await a.send({"cmd": "handshake", "listener": "handshake_cfg"})
    await a.expect(status("E:121 | Banned", "handshake_cfg", details="You are banned."))
    await a.expect_nothing()
    assert not a.model.connected
    await a.close()


async def test_async_handshake_replays_queued_sets_in_order(standard):
    """While an async on_handshake decides, later sets wait and are then applied in order."""
    room = fresh_room()
    watcher = await joined(standard.url, room, "watcher")
    slow = await ws_connect(standard.url)
    await slow.send(handshake_text(room, "slow-player"))
    for n in range(5):
        await slow.send(set_text("☁ n", n))
    await slow.send(set_text("☁ last", "1"))
    lines = await recv_until(watcher, lambda got: set_line("☁ last", "1") in got, timeout=5)
    values = [json.loads(line)["value"] for line in lines if '"☁ n"' in line]
    assert values and values[-1] == 4 and values == sorted(values)
    await watcher.close()
    await slow.close()


async def test_async_handshake_refusal(standard):
    """An async on_handshake that raises Refuse closes the Scratch client with 4002."""
    ws = await ws_connect(standard.url)
    await ws.send(handshake_text(fresh_room(), "slow-banned"))
    await ws.send(set_text("☁ n", 1))
    await expect_close(ws, 4002)


async def test_second_handshake_during_async_validation_closes_4000(standard):
    """A second handshake while an async on_handshake decides closes the client with 4000."""
    ws = await ws_connect(standard.url)
    await ws.send(handshake_text(fresh_room(), "slow-player"))
    await ws.send(handshake_text(fresh_room(), "slow-player"))
    await expect_close(ws, 4000)


# on_connect / on_disconnect


async def test_connect_and_disconnect_hooks_run_once_each(standard):
    """on_connect and on_disconnect run exactly once per connection, Scratch and CL4 alike."""
    room = fresh_room()
    s = await joined(standard.url, room, "player1")
    c = (await identified(standard.url, "alice"))[0]
    refused = await ws_connect(standard.url)
    await refused.send(handshake_text(room, "banned"))
    await expect_close(refused, 4002)
    await s.close()
    await c.close()
    await asyncio.sleep(0.2)
    (probe,) = await identified(standard.url, "probe", named=False)
    reply = await command(probe, {"cmd": "events"})
    me, events = reply["val"]["me"], reply["val"]["events"]
    connects = [e[1] for e in events if e[0] == "connect"]
    disconnects = [e[1] for e in events if e[0] == "disconnect"]
    assert len(connects) == len(set(connects)) == 4
    assert sorted(disconnects) == sorted(n for n in connects if n != me)
    assert sorted(e[2] for e in events if e[0] == "disconnect") == ["cl4", "scratch", "scratch"]
    await probe.close()


# PluginHost


async def test_host_sends_to_client_room_and_everyone(standard):
    """PluginHost: send to one client, to a CL4 room and to every CL4 client."""
    a, b, c = await identified(standard.url, "alice", "bob", "carol")
    await c.send({"cmd": "link", "val": ["side"], "listener": "link"})
    await c.recv_until(lambda m: m == OK("link"))
    await drain(a, b, c)
    note = {"cmd": "direct", "val": "hi"}
    reply = await command(a, {"cmd": "host_send",
                              "val": {"to": "client", "target": "bob", "message": note}})
    assert reply["val"] == 1
    await b.expect(note)
    await c.expect_nothing(0.1)
    reply = await command(a, {"cmd": "host_send",
                              "val": {"to": "room", "target": "side", "message": note}})
    assert reply["val"] == 1
    await c.expect(note)
    await b.expect_nothing(0.1)
    await a.send({"cmd": "host_send", "val": {"to": "all", "message": note}})
    await a.expect(note, OK(val=3))
    for client in (b, c):
        await client.expect(note)
    await close_all(a, b, c)


async def test_host_reads_room_state_and_sets_variables(standard):
    """PluginHost reads CL4 and Scratch room state and writes a stored, relayed variable."""
    room = fresh_room()
    s1 = await joined(standard.url, room, "player1")
    await asyncio.sleep(0.05)
    await s1.send(set_text("☁ a", 1))
    (a,) = await identified(standard.url, "alice")
    await asyncio.sleep(0.1)
    state = (await command(a, {"cmd": "rooms_state", "val": room}))["val"]
    assert state["cl4"]["default"] == ["alice"]
    assert state["scratch_rooms"] is True
    assert state["variables"] == {"☁ a": 1}
    assert state["members"] == ["player1"]
    reply = await command(a, {"cmd": "scratch_set",
                              "val": {"room": room, "name": "☁ b", "value": 7}})
    assert reply["val"] is True
    assert str(await recv(s1)) == set_line("☁ b", 7)
    late = await joined(standard.url, room, "player2")
    assert sorted(str(await recv(late)).split("\n")) == [set_line("☁ a", 1), set_line("☁ b", 7)]
    await a.close()
    await s1.close()
    await late.close()


def test_custom_status_ranges():
    """custom_status refuses numbers below 116 and 200-204, and kinds other than I/E."""
    assert custom_status("E", 120, "Cooldown").code == "E:120 | Cooldown"
    assert custom_status("I", 205, "Fine").code_id == 205
    for number in (0, 100, 115, 200, 202, 204):
        with pytest.raises(ValueError):
            custom_status("E", number, "x")
    with pytest.raises(ValueError):
        custom_status("W", 150, "x")


# Registered from code


class Counter(Plugin):
    """Counts lifecycle calls in-process and answers `count`."""

    def __init__(self, host, settings=None):
        super().__init__(host, settings)
        self.connects = 0
        self.disconnects = 0
        self.started = False

    async def start(self) -> None:
        self.started = True

    @on_connect
    def opened(self, client) -> None:
        self.connects += 1

    @on_disconnect
    def closed(self, client) -> None:
        self.disconnects += 1

    @on_command("count")
    def count(self, request) -> None:
        request.reply(val=[self.settings.get("label"), self.connects, self.disconnects])


class Shadow(Plugin):
    @on_command("ping")
    def ping(self, request) -> None:
        request.reply()


def in_process_config(**plugins) -> Config:
    config = default_config()
    config.server = dataclasses.replace(config.server, host="127.0.0.1", port=0)
    config.store = dataclasses.replace(config.store, backend="memory")
    config.plugins = list(plugins.get("entries", []))
    return config


async def test_register_from_code_before_start():
    """server.plugins.add(Plugin, settings) before start() registers commands and hooks."""
    config = in_process_config(entries=[{"use": f"{FIXTURES}:Tracer", "tag": "config"}])
    server = build_server(config)
    counter = server.plugins.add(Counter, {"label": "from-code"})
    await server.start()
    try:
        assert counter.started
        url = f"ws://127.0.0.1:{server.port}"
        a = await Cl4.open(url, "a", quiet=False)
        await a.handshake()
        reply = await command(a, {"cmd": "count"})
        assert reply["val"] == ["from-code", 1, 0]
        await a.close()
        await asyncio.sleep(0.1)
        assert (counter.connects, counter.disconnects) == (1, 1)
        with pytest.raises(RuntimeError, match="before Server.start"):
            server.plugins.add(Counter)
    finally:
        await server.shutdown()


async def test_register_from_code_builtin_without_replace_fails():
    """Adding a plugin whose command shadows a built-in without replace=True raises at once."""
    server = build_server(in_process_config())
    with pytest.raises(ValueError, match=r"'ping' exists; use @on_command\('ping', replace=True\)"):
        server.plugins.add(Shadow)
    assert not server.plugins.loaded


async def test_code_plugins_run_after_config_plugins():
    """Hooks of plugins added from code run after those loaded from config."""
    config = in_process_config(entries=[{"use": f"{FIXTURES}:Tracer", "tag": "config"},
                                        {"use": f"{FIXTURES}:Introspect"}])
    server = build_server(config)
    from tests.server.plugin_fixtures import Tracer

    server.plugins.add(Tracer, {"tag": "code"})
    await server.start()
    try:
        a = await Cl4.open(f"ws://127.0.0.1:{server.port}", "a", quiet=False)
        await a.handshake()
        reply = await command(a, {"cmd": "trace"})
        assert reply["val"][-4:] == ["config.a", "config.b", "code.a", "code.b"]
        await a.close()
    finally:
        await server.shutdown()
