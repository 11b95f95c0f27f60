"""The opt-in Scratch <-> CL4 bridge (docs/specs/cl4.md §12, following CloudLink 0.1.9).

A Scratch `set` in project P reaches the CL4 members of room P as a `gvar` (JSON-string values
parsed, so "42" arrives as 42). A CL4 `gvar` in room P reaches the Scratch clients of P as a
`set`, stored like any write, if it passes Scratch value validation (most non-numbers do not)
and the room's variable-write hooks, exactly as a Scratch client's `set` would: a plugin that
owns a name (the sprite plugins' reply variables) refuses or consumes it the same way.
Only rooms matching the configured globs are bridged. In a cluster the write happens on the
node that received the gvar, which reads the Scratch room from Redis if none of its own clients
runs the project (its Scratch clients may all be on other nodes).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.globs import compile_globs
from server.plugins import DROP
from server.rooms import NamedWriter

from .js import js_number_to_string, js_stringify
from .scratch import (
    ScratchProtocol,
    accepts_name,
    apply_variable_hooks,
    key_to_name,
    variable_key,
)
from .validators import is_valid_value

if TYPE_CHECKING:
    from server.app import Server
    from server.rooms import Room

    from .cl4.endpoint import Cl4Protocol
    from .cl4.state import Cl4ClientState


# The author of the writes the bridge makes into Scratch rooms, as the history names it (not a
# possible Scratch username, so no client can pass for it).
BRIDGE_WRITER = NamedWriter("(bridge)")


@dataclass(frozen=True)
class BridgeSection:
    """The [bridge] table."""

    enabled: bool = False
    rooms: list[str] = field(default_factory=lambda: ["*"])


class Bridge:
    """Forwards variable writes between the Scratch rooms and the CL4 engine."""

    name = "bridge"

    def __init__(self, section: BridgeSection, scratch: ScratchProtocol,
                 cl4: Cl4Protocol) -> None:
        self.scratch = scratch
        self.cl4 = cl4
        self.pattern: re.Pattern = compile_globs(section.rooms)
        self._forwarding = False  # set while writing a gvar into Scratch, so it does not echo
        self.server: Server | None = None

    def install(self, server: Server) -> None:
        """Nothing to register before start."""
        self.server = server

    async def start(self, server: Server) -> None:
        """Watch both sides (after both protocols started)."""
        self.scratch.rooms.write_observers.append(self.scratch_written)
        self.cl4.engine.gvar_observers.append(self.gvar_sent)

    async def stop(self) -> None:
        """Nothing to release."""

    def scratch_written(self, room: Room, key: str, value: Any, author: Any) -> None:
        """A Scratch variable changed: tell CL4 room `room.id`."""
        if self._forwarding or not key or not self.pattern.fullmatch(room.id):
            return
        name = key_to_name(key)
        if not isinstance(name, str):
            return
        text = value if isinstance(value, str) else js_number_to_string(value)
        self.cl4.engine.emit_gvar(room.id, name, text)

    def gvar_sent(self, sender: Cl4ClientState, room_id: str, name: str, val: Any) -> None:
        """A CL4 gvar went to room `room_id`: write it into the Scratch room of that id."""
        if not self.pattern.fullmatch(room_id):
            return
        rooms = self.scratch.rooms
        room = rooms.get(room_id)
        if room is None:
            if self.server.cluster.bus is None:
                return  # nobody runs that project now; don't create rooms for CL4 traffic
            # In a cluster its Scratch clients may be on other nodes: write through this one.
            opened = rooms.opening(room_id)
            if opened is None:
                return  # at max_rooms
            if isinstance(opened, asyncio.Future):

                def loaded(done: asyncio.Future) -> None:
                    if not done.cancelled() and done.exception() is None:  # else: logged
                        self._write(done.result(), sender, name, val)

                opened.add_done_callback(loaded)
                return
            room = opened
        self._write(room, sender, name, val)

    def _write(self, room: Room, sender: Cl4ClientState, name: str, val: Any) -> None:
        """Write a CL4 gvar into a Scratch room like a Scratch client's set."""
        if isinstance(val, (dict, list, bool)) or val is None:
            val = js_stringify(val)
        section = self.scratch.options.section
        if not is_valid_value(val, section.max_value_length, section.allow_non_numeric_values):
            return
        if not accepts_name(name, section):
            return
        if room.variable_hooks:
            client = self.server.plugins.client(sender.connection)
            val = apply_variable_hooks(room, client, name, val, section)
            if val is DROP:
                return
        key = variable_key(name)
        self._forwarding = True
        try:
            room.set(key, val, BRIDGE_WRITER)
        finally:
            self._forwarding = False
