"""A dice command for CL4 clients: {"cmd": "roll", "val": 2, "listener": "r"}.

config.toml:

    [[plugins]]
    use = "plugins.examples.dice:Dice"
    sides = 6           # optional, default 6
    announce = true     # optional: also tell the sender's rooms what was rolled
"""

from __future__ import annotations

import random

from plugins.api import CommandRequest, Plugin, on_command


class Dice(Plugin):
    """Rolls `val` dice (1-10) with `sides` sides; the statuscode's val holds the rolls."""

    name = "dice"

    def __init__(self, host, settings=None):
        super().__init__(host, settings)
        self.sides = self.settings.get("sides", 6)
        if not isinstance(self.sides, int) or self.sides < 2:
            raise ValueError("sides must be an integer of at least 2")
        self.announce = bool(self.settings.get("announce", False))
        self.random = random.Random(self.settings.get("seed"))

    @on_command("roll", schema={"val": {"type": "integer", "min": 1, "max": 10,
                                        "required": True}})
    def roll(self, request: CommandRequest) -> None:
        rolls = [self.random.randint(1, self.sides) for _ in range(int(request.message["val"]))]
        if self.announce:
            rooms = request.rooms  # the message's `rooms`, or every room the sender is in
            if rooms is None:
                return  # it named a room the sender is not in: E:115 was answered
            name = request.client.username or "someone"
            for room in rooms:
                request.send_room(room, {"cmd": "gmsg", "val": f"{name} rolled {rolls}",
                                         "rooms": room})
        request.reply(val=rolls)  # {"cmd":"statuscode","code":"I:100 | OK",...,"val":[4,2]}
