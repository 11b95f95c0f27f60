"""Example request handlers for the scratchcommunication and scratchattach sprites.

Used by docs/sprites.md and the tests. Point a plugin at the class in config.toml:

    [[plugins]]
    use = "plugins.sprites.scratchcommunication:CloudRequests"
    rooms = ["123456"]
    handlers = "examples.sprite_handlers:Handlers"
"""

from __future__ import annotations

import asyncio

from plugins.sprites.request_api import RequestError, current_request, request


class Handlers:
    """Requests a project may send. Each `@request` method answers one request name."""

    def __init__(self, plugin=None):
        # Created once per plugin; a parameter in __init__ receives the plugin (for pushes).
        self.plugin = plugin

    @request
    def test(self, number: int) -> str:
        """The scratchcommunication demo sends `test 5`; the project shows the reply."""
        return f"Hello client! {number} squared is {number * number}."

    @request
    def add(self, a: float, b: float) -> float:
        """`add 2 3.5` → 5.5 (arguments converted from the annotations)."""
        return a + b

    @request(name="echo", allow_python_syntax=False)
    def echo_text(self, text: str) -> str:
        """Echo a text back unchanged: `echo "two words"`."""
        return text

    @request
    def whoami(self) -> str:
        """The username of the asking connection (cosmetic: usernames are unauthenticated)."""
        context = current_request()
        return context.username if context and context.username else "nobody"

    @request
    def ping(self) -> str:
        """scratchattach template: `ping` → `pong`."""
        return "pong"

    @request
    def foo(self, name: str) -> list:
        """scratchattach template: `foo&TimMcCool` → a list the project shows item by item."""
        return [name, 200, name]

    @request
    def repeat(self, text: str, times: int) -> str:
        """A long reply: `repeat&ab&3000` (scratchattach sends it in parts)."""
        if times > 100_000:
            raise RequestError("That is too many.")
        return text * times

    @request
    def announce(self, text: str) -> int:
        """scratchattach: push `text` to every connection of the asking project's room."""
        push = getattr(self.plugin, "push", None)
        if push is None:
            raise RequestError("Pushes need the scratchattach plugin.")
        return push(text, room=current_request().room)

    @request(timeout=1.0)
    async def slow(self, seconds: float) -> str:
        """An async handler; takes longer than its 1 s timeout for seconds > 1."""
        await asyncio.sleep(seconds)
        return "done"

    @request
    def fail(self) -> str:
        """Always raises: the project gets the documented error reply."""
        raise RuntimeError("this handler is broken on purpose")
