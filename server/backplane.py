"""The backplane: the one way every accepted change reaches the fan-out.

A room stores a write, then publishes the change here. The backplane's job is to get it to the
fan-out of every node that has members in the room, in one order per room. In one process that
is a function call (`LocalBackplane`); a multi-node engine (Redis pub/sub with values in
hashes, the scale-out issue) implements the same three methods, and choosing one is the
`"module:Attr"` name the composition root is given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

# deliver(room, key, author): mark room.updates[key] for every local member but `author`.
Deliver = Callable[[Any, str, Any], None]


class Backplane(Protocol):
    """What the core needs from a backplane engine."""

    def attach(self, deliver: Deliver) -> None:
        """Hand every change published (here or, for a cluster, on any node) to `deliver`."""

    def publish(self, room: Any, key: str, author: Any) -> None:
        """An accepted change: `room.values[key]` is new (or, absent from it, deleted)."""

    async def close(self) -> None:
        """Stop delivering; release connections."""


class LocalBackplane:
    """One process: a published change is delivered straight back, synchronously."""

    def __init__(self) -> None:
        self.deliver: Deliver | None = None

    def attach(self, deliver: Deliver) -> None:
        """Deliver every published change to `deliver`."""
        self.deliver = deliver
        # Publishing is on every write's path: bind it straight to the fan-out, so the local
        # engine costs no call of its own.
        self.publish = deliver  # type: ignore[method-assign]

    def publish(self, room: Any, key: str, author: Any) -> None:
        """Deliver the change now (only reached before `attach`: nobody listens yet)."""

    async def close(self) -> None:
        """Nothing to release."""
