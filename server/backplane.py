"""The backplane: the one way every accepted change reaches the fan-out, and the cluster seam.

A room stores a write, then publishes the change here. The backplane's job is to get it to the
fan-out of every node that has members in the room, in one order per room. In one process that
is a function call (`LocalBackplane`); a multi-node engine (Redis, `server.cluster`) implements
the same methods, and choosing one is the `[cluster] backend` name the composition root is
given.

A `Cluster` is the node's link to the other nodes: it makes one backplane per room namespace,
opens the store rooms are loaded from (the SQLite/memory store for one process, Redis for a
cluster), and offers protocols a `MessageBus` for what is not a room variable (CL4 messages and
presence) and `NameClaims` for names that must be unique across the nodes (CL4 usernames).
`LocalCluster` is the zero-cost default: no bus, no claims (one process sees every name), and
`LocalBackplane.publish` is `Fanout.deliver` itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .store import Store, open_store

if TYPE_CHECKING:
    from .config import Config

# deliver(room, key, author): mark room.updates[key] for every local member but `author`.
Deliver = Callable[[Any, str, Any], None]


class Backplane(Protocol):
    """What the core needs from a backplane engine (one per room namespace)."""

    def attach(self, deliver: Deliver) -> None:
        """Hand every change published (here or, for a cluster, on any node) to `deliver`."""

    def publish(self, room: Any, key: str, author: Any) -> None:
        """An accepted change: `room.values[key]` is new (or, absent from it, deleted)."""

    def stored(self, room: Any, key: str) -> None:
        """`room.values[key]` is new but not broadcast (the new key of a rename)."""

    def room_opened(self, room: Any) -> None:
        """`room` is now in this node's memory (its values were just loaded)."""

    def room_closed(self, room: Any) -> None:
        """`room` left this node's memory."""

    def members_changed(self, room: Any) -> None:
        """A member joined or left `room` on this node."""

    def is_settled(self, room: Any) -> bool:
        """True when nothing `room` accepted still waits to reach the cluster (it may leave
        memory)."""

    async def close(self) -> None:
        """Stop delivering; release connections."""


class LocalBackplane:
    """One process: a published change is delivered straight back, synchronously."""

    def __init__(self, namespace: str = "") -> None:
        self.namespace = namespace
        self.deliver: Deliver | None = None

    def attach(self, deliver: Deliver) -> None:
        """Deliver every published change to `deliver`."""
        self.deliver = deliver
        # Publishing is on every write's path: bind it straight to the fan-out, so the local
        # engine costs no call of its own.
        self.publish = deliver  # type: ignore[method-assign]

    def publish(self, room: Any, key: str, author: Any) -> None:
        """Deliver the change now (only reached before `attach`: nobody listens yet)."""

    def stored(self, room: Any, key: str) -> None:
        """Nothing to tell: this process is the only one."""

    def room_opened(self, room: Any) -> None:
        """Nothing to follow."""

    def room_closed(self, room: Any) -> None:
        """Nothing to release."""

    def members_changed(self, room: Any) -> None:
        """Members are counted by the room itself."""

    def is_settled(self, room: Any) -> bool:
        """Always: delivery is synchronous."""
        return True

    async def close(self) -> None:
        """Nothing to release."""


# receiver(origin node id, payload) of a bus topic.
BusReceiver = Callable[[str, bytes], None]


class MessageBus(Protocol):
    """Protocol-agnostic messages between nodes (for what is not a room variable).

    Messages of one topic from one node arrive in the order they were published; a node never
    receives its own broadcasts.
    """

    node_id: str

    def subscribe(self, topic: str, receiver: BusReceiver) -> None:
        """Call `receiver` for every message on `topic` broadcast by, or sent to this node
        by, another node."""

    def publish(self, topic: str, payload: bytes, node: str | None = None) -> None:
        """Send `payload` to every other node (or only to `node`); never blocks."""

    def nodes(self) -> list[str]:
        """The other nodes heard from lately (within the cluster's node timeout), by id."""

    def on_node_gone(self, listener: Callable[[str], None]) -> None:
        """Call `listener(node id)` when a node stops answering (its clients are gone)."""

    def on_relinked(self, listener: Callable[[], None]) -> None:
        """Call `listener()` when the link to the other nodes is back after an outage (and
        once when it first comes up): state shared over the bus should be sent again."""


# lost(space, name, owner): a claim made while the cluster was unreachable turned out to be
# another node's once it was reachable again.
ClaimLost = Callable[[str, str, str], None]


class NameClaims(Protocol):
    """Names unique across the nodes, in separate spaces (e.g. "cl4" usernames).

    A claim is decided atomically by the cluster: of two owners claiming one name at the same
    moment on two nodes, exactly one gets it. A name is held until its owner releases it or its
    node dies. While the cluster is unreachable a claim is granted (the caller has checked what
    it knows locally) and made again once it is back; if another node's owner got the name
    meanwhile, the claim that reached the cluster first keeps it and the `on_lost` listeners
    are told about the other.
    """

    def claim(self, space: str, name: str, owner: str) -> bool | asyncio.Future[bool]:
        """Claim `name` for `owner` (a claim it already holds succeeds): True or False now, or
        a future of it (one round trip to the cluster)."""

    def release(self, space: str, name: str, owner: str) -> None:
        """Give `name` back, if `owner` holds it; never blocks."""

    def on_lost(self, listener: ClaimLost) -> None:
        """Call `listener(space, name, owner)` for a granted claim the cluster later refused."""


class Cluster(Protocol):
    """A node's link to the other nodes: backplanes, the store rooms load from, the bus."""

    # None for one process; protocols use it for messages that are not room variables.
    bus: MessageBus | None
    # None for one process (every name is seen locally); names unique across the nodes.
    claims: NameClaims | None
    # This node's number among the live nodes (0 to 1023, unique while it runs; 0 for one
    # process): the high part of the client ids it hands out, so ids never clash across nodes.
    worker: int

    @property
    def fault(self) -> str | None:
        """Why the link to the other nodes is down (a note for /healthz), or None."""

    def open_store(self, config: Config) -> Store:
        """The store rooms are loaded from and persisted to."""

    def describe(self, config: Config) -> str:
        """Where rooms are kept, for the start-up log line."""

    def backplane(self, namespace: str) -> Backplane:
        """A new backplane for one room namespace."""

    async def start(self) -> None:
        """Connect (before the store opens and rooms load)."""

    async def close(self) -> None:
        """Disconnect (after the last room was flushed)."""


class LocalCluster:
    """One process: local backplanes, the configured store, no bus, no claims."""

    bus = None
    claims = None
    fault = None
    worker = 0

    def __init__(self, section: Any = None) -> None:
        self.section = section

    def open_store(self, config: Config) -> Store:
        """The [store] backend in [server] data_dir."""
        return open_store(config.store, Path(config.server.data_dir))

    def describe(self, config: Config) -> str:
        """The store backend."""
        return f"store: {config.store.backend}"

    def backplane(self, namespace: str) -> LocalBackplane:
        """A `LocalBackplane`."""
        return LocalBackplane(namespace)

    async def start(self) -> None:
        """Nothing to connect."""

    async def close(self) -> None:
        """Nothing to release."""
