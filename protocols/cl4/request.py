"""What a CL4 command handler gets and returns: the request, the command entry, a veto.

Kept apart from the engine so the built-in commands (`commands`) and plugins depend on these
types, and the engine on the commands, without a circle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from protocols.cl4.codes import Status
from protocols.cl4.schema import Cl4Schema
from protocols.cl4.state import Cl4ClientState
from protocols.js import MISSING  # "no listener": a listener may be "", 0 or false

__all__ = ["DEFAULT_ROOM", "MISSING", "Cl4Command", "Cl4Request", "CommandHandler", "Reject",
           "listener_of"]

DEFAULT_ROOM = "default"
_LISTENER_TYPES = (str, int, float, bool)
CommandHandler = Callable[["Cl4Request"], None]


@dataclasses.dataclass(frozen=True, slots=True)
class Reject:
    """A pre-dispatch hook's veto: the sender gets `status` (+details, +listener)."""

    status: Status
    details: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Cl4Command:
    """A command: its handler, optional schema, and whether it needs a username (E:111)."""

    name: str
    handler: CommandHandler
    schema: Cl4Schema | None = None
    requires_username: bool = False


class Cl4Request:
    """One validated message being handled, with helpers to answer it."""

    __slots__ = ("engine", "message", "session")

    def __init__(self, engine: Any, session: Cl4ClientState, message: dict):
        self.engine = engine
        self.session = session
        self.message = message

    @property
    def listener(self) -> Any:
        """The request's listener if it had a valid one, else MISSING."""
        return listener_of(self.message)

    def reply(self, status: Status, *, details: Any = None, val: Any = None) -> None:
        """Send the sender a statuscode carrying this request's listener."""
        self.engine.reply(self.session, status, self.listener, details=details, val=val)


def listener_of(message: Mapping) -> Any:
    """The message's listener if it is a string, number or boolean, else MISSING."""
    listener = message.get("listener", MISSING)
    return listener if type(listener) in _LISTENER_TYPES else MISSING


