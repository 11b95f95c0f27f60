"""A chat filter for CL4: a per-client cooldown on gmsg/gvar, and masked blocked words.

config.toml:

    [[plugins]]
    use = "plugins.examples.filter:Cooldown"
    messages = 5                # at most this many gmsg/gvar ...
    seconds = 10.0              # ... per this many seconds, per client
    blocked_words = ["heck"]    # replaced by asterisks in gmsg text
"""

from __future__ import annotations

import re
import time
from collections import deque

from plugins.api import Client, Plugin, Refuse, before_command, custom_status

COOLDOWN = custom_status("E", 120, "Cooldown")


class Cooldown(Plugin):
    """Vetoes gmsg/gvar beyond `messages` per `seconds` with E:120 | Cooldown (+listener)."""

    name = "cooldown"

    def __init__(self, host, settings=None):
        super().__init__(host, settings)
        self.messages = int(self.settings.get("messages", 5))
        self.seconds = float(self.settings.get("seconds", 10.0))
        words = [re.escape(word) for word in self.settings.get("blocked_words", [])]
        self.blocked = re.compile(r"\b(" + "|".join(words) + r")\b", re.I) if words else None

    @before_command("gmsg", "gvar")
    def cooldown(self, client: Client, message: dict) -> None:
        now = time.monotonic()
        sent: deque = client.data.setdefault("cooldown", deque())
        while sent and sent[0] <= now - self.seconds:
            sent.popleft()
        if len(sent) >= self.messages:
            wait = sent[0] + self.seconds - now
            raise Refuse(COOLDOWN, details=f"Slow down: try again in {wait:.1f} s.")
        sent.append(now)

    @before_command("gmsg")
    def mask(self, client: Client, message: dict) -> dict | None:
        text = message.get("val")
        if self.blocked is None or not isinstance(text, str):
            return None  # unchanged
        masked = self.blocked.sub(lambda m: "*" * len(m.group()), text)
        return {**message, "val": masked} if masked != text else None
