"""The opt-in Scratch <-> CL4 bridge (docs/specs/cl4.md §12, following CloudLink 0.1.9).

A Scratch `set` in project P reaches the CL4 members of room P as a `gvar` (JSON-string values
parsed, so "42" arrives as 42). A CL4 `gvar` in room P reaches the Scratch clients of P as a
`set`, stored like any write, if it passes Scratch value validation (most non-numbers do not)
and the room's variable-write hooks, exactly as a Scratch client's `set` would: a plugin that
owns a name (the sprite plugins' reply variables) refuses or consumes it the same way.
Only rooms matching the configured globs are bridged.
"""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Any

from server.plugins import DROP

from .js import js_number_to_string, js_stringify
from .scratch import accepts_name, apply_variable_hooks, key_to_name, variable_key
from .validators import is_valid_value

if TYPE_CHECKING:
    from server.plugins import PluginManager
    from server.rooms import Room, RoomRegistry

    from .cl4.engine import Cl4Engine
    from .cl4.session import Cl4Client
    from .scratch import ScratchOptions


class Bridge:
    """Forwards variable writes between one Scratch room registry and one CL4 engine."""

    def __init__(self, scratch_rooms: RoomRegistry, options: ScratchOptions, engine: Cl4Engine,
                 rooms: list[str], plugins: PluginManager | None = None) -> None:
        self.scratch_rooms = scratch_rooms
        self.options = options
        self.engine = engine
        self.plugins = plugins
        self.pattern = re.compile("|".join(fnmatch.translate(glob) for glob in rooms) or "(?!)")
        self._forwarding = False  # set while writing a gvar into Scratch, so it does not echo
        scratch_rooms.write_observers.append(self.scratch_written)
        engine.gvar_observers.append(self.gvar_sent)

    def scratch_written(self, room: Room, key: str, value: Any) -> None:
        """A Scratch variable changed: tell CL4 room `room.id`."""
        if self._forwarding or not key or not self.pattern.fullmatch(room.id):
            return
        name = key_to_name(key)
        if not isinstance(name, str):
            return
        text = value if isinstance(value, str) else js_number_to_string(value)
        self.engine.emit_gvar(room.id, name, text)

    def gvar_sent(self, sender: Cl4Client, room_id: str, name: str, val: Any) -> None:
        """A CL4 gvar went to room `room_id`: write it into the Scratch room of that id."""
        if not self.pattern.fullmatch(room_id):
            return
        room = self.scratch_rooms.get(room_id)
        if room is None:
            return  # nobody runs that project now; don't create rooms for CL4 traffic
        if isinstance(val, (dict, list, bool)) or val is None:
            val = js_stringify(val)
        section = self.options.section
        if not is_valid_value(val, section.max_value_length, section.allow_non_numeric_values):
            return
        if not accepts_name(name, section):
            return
        if room.variable_hooks:
            client = self.plugins.client(sender.connection) if self.plugins else None
            val = apply_variable_hooks(room, client, name, val, section)
            if val is DROP:
                return
        key = variable_key(name)
        self._forwarding = True
        try:
            room.set(key, val, None)
        finally:
            self._forwarding = False
