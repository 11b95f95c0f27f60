"""Plugins used by tests/server/test_plugins.py, importable by the server subprocess
(`use = "tests.server.plugin_fixtures:Tracer"`), plus a writer for `[[plugins]]` tables.

Each one exposes what it saw through CL4 commands, so tests read plugin state over sockets.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from plugins.api import (
    DROP,
    Client,
    CommandRequest,
    Plugin,
    Refuse,
    VariableWrite,
    before_command,
    custom_status,
    on_command,
    on_connect,
    on_disconnect,
    on_handshake,
    on_variable,
)
from tests.conftest import toml_value

COOLDOWN = custom_status("E", 120, "Cooldown")
BANNED = custom_status("E", 121, "Banned")


class Tracer(Plugin):
    """Two before_command hooks that append "<tag>.a" then "<tag>.b" to client.data["trace"]."""

    @before_command()
    def first_hook(self, client: Client, message: dict) -> None:
        client.data.setdefault("trace", []).append(f"{self.settings['tag']}.a")

    @before_command()
    def second_hook(self, client: Client, message: dict) -> None:
        client.data.setdefault("trace", []).append(f"{self.settings['tag']}.b")


class Introspect(Plugin):
    """CL4 commands that expose hook traces, lifecycle events and the PluginHost API."""

    def __init__(self, host, settings=None):
        super().__init__(host, settings)
        self.events: list[list[Any]] = []
        self.numbers = itertools.count(1)

    @on_connect
    def connected(self, client: Client) -> None:
        client.data["n"] = next(self.numbers)
        self.events.append(["connect", client.data["n"]])

    @on_disconnect
    def disconnected(self, client: Client) -> None:
        self.events.append(["disconnect", client.data.get("n"), client.protocol])

    @on_command("trace")
    def trace(self, request: CommandRequest) -> None:
        request.reply(val=request.client.data.get("trace", []))

    @on_command("events")
    def lifecycle(self, request: CommandRequest) -> None:
        request.reply(val={"me": request.client.data.get("n"), "events": self.events})

    @on_command("host_send", schema={"val": {"type": "dict", "required": True}})
    def host_send(self, request: CommandRequest) -> None:
        spec = request.message["val"]
        message = spec["message"]
        if spec["to"] == "client":
            sent = 0
            for client in self.host.clients():
                if client.protocol == "cl4" and client.username == spec["target"]:
                    client.send(message)
                    sent += 1
        elif spec["to"] == "room":
            sent = self.host.cl4_send_room(spec["target"], message)
        else:
            sent = self.host.cl4_broadcast(message)
        request.reply(val=sent)

    @on_command("rooms_state")
    def rooms_state(self, request: CommandRequest) -> None:
        room = request.message.get("val")
        request.reply(val={
            "cl4": {name: sorted(c.username or "" for c in members)
                    for name, members in self.host.cl4_rooms().items()},
            "scratch_rooms": room in self.host.scratch_rooms(),
            "variables": self.host.scratch_variables(room),
            "members": sorted(c.username for c in self.host.scratch_members(room)),
        })

    @on_command("scratch_set", schema={"val": {"type": "dict", "required": True}})
    def scratch_set(self, request: CommandRequest) -> None:
        spec = request.message["val"]
        ok = self.host.set_scratch_variable(spec["room"], spec["name"], spec["value"])
        request.reply(val=ok)

    @on_command("boom")
    def boom(self, request: CommandRequest) -> None:
        raise RuntimeError("plugin bug")

    @on_command("later")
    async def later(self, request: CommandRequest) -> None:
        await asyncio.sleep(0.05)
        if request.message.get("val") == "fail":
            raise RuntimeError("async plugin bug")
        request.reply(val="done")

    @on_command("strict", schema={"val": {"type": "integer", "min": 1, "required": True}})
    def strict(self, request: CommandRequest) -> None:
        request.reply(val=request.message["val"])


class Rules(Plugin):
    """Vetoes, rewrites and replaces built-in CL4 commands; transforms Scratch writes."""

    @before_command("gmsg")
    def police(self, client: Client, message: dict) -> dict | None:
        val = message.get("val")
        if val == "forbidden":
            raise Refuse(COOLDOWN, details="not now")
        if val == "crash":
            raise RuntimeError("hook bug")
        if val == "rewrite-me":
            return {**message, "val": "rewritten"}
        return None

    @on_command("ping", replace=True)
    def ping(self, request: CommandRequest) -> None:
        request.reply(val="pong")

    @on_variable("☁ t*")
    def transform(self, write: VariableWrite) -> Any:
        if write.name == "☁ tdouble":
            return float(write.value) * 2
        if write.name == "☁ trefuse" and float(write.value) == 13:
            return DROP
        if write.name == "☁ texplode":
            raise RuntimeError("variable hook bug")
        return None


class Gatekeeper(Plugin):
    """on_handshake: refuses "banned" (Scratch: 4002; CL4: E:121 with the banned User-Agent),
    and decides "slow-*" Scratch users asynchronously (slow-banned is refused)."""

    @on_handshake
    def gate(self, client: Client):
        name = client.username or ""
        if name == "banned" or "banned" in client.header("User-Agent"):
            raise Refuse(BANNED, details="You are banned.")
        if name.startswith("slow-"):
            return self.decide_later(name)
        return None

    async def decide_later(self, name: str) -> None:
        await asyncio.sleep(0.4)
        if name.endswith("banned"):
            raise Refuse()


class LocalBlocks(Plugin):
    """Blocks the Scratch rooms of its `block` setting at start, without persist (a block of
    this node only, stored nowhere)."""

    async def start(self) -> None:
        for room_id in self.settings["block"]:
            self.host.block_room("scratch", room_id)


class BadBuiltin(Plugin):
    """Registers the built-in gmsg without replace=True: start-up must fail."""

    @on_command("gmsg")
    def gmsg(self, request: CommandRequest) -> None:
        request.reply()


def plugins_toml(entries: list[dict[str, Any]]) -> str:
    """`[[plugins]]` tables for a config file, in order."""
    lines = []
    for entry in entries:
        lines.append("[[plugins]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
        lines.append("")
    return "\n".join(lines)


def append_plugins(config_path: Path, entries: list[dict[str, Any]] | str) -> None:
    """Append `[[plugins]]` tables (dicts, or TOML text as written in a guide) to a config."""
    text = entries if isinstance(entries, str) else plugins_toml(entries)
    with open(config_path, "a", encoding="utf-8") as handle:
        handle.write("\n" + text + "\n")
