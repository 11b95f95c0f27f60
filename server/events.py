"""The event bus: what happens in the core, published as plain callbacks.

Each event is an `Event`, a list of listeners that is false while empty. Publishers guard the
call with a truth test (`if events.room_flushed: events.room_flushed(...)`), so an event
nobody listens to costs one attribute load and a length check on the hot path. Listeners run
synchronously, in subscription order, and must not raise: an exception is logged and the next
listener still runs.

Events and their arguments:

=====================  =====================================================================
connection_opened      (connection) - a TCP connection was accepted
connection_upgraded    (connection) - it became a WebSocket
connection_closed      (connection, code) - it ended; code is the close code we sent or
                       echoed, or None when TCP ended without one
protocol_selected      (connection, protocol_name) - its first message picked a protocol
message_received       (connection, text) - one text message arrived
room_flushed           (namespace, room_id, lines, frames) - a room sent one batch
flush_delay            (namespace, seconds) - that batch left `seconds` after the first write
                       it carries arrived (the wait batching added)
rate_limited           (connection) - a client went over a rate limit: the core stopped reading
                       it for a while (read budget), or its protocol refused a message (CL4)
backlog_dropped        (connection, code) - a client too far behind was closed
store_committed        (ticket) - the store committed every batch up to `ticket`
store_failed           (reason) - the store stopped writing (it retries; see /healthz)
client_refused         (address, status_or_code, reason) - a request or client was turned away
=====================  =====================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stratus.events")


class Event(list):
    """Listeners of one event; call it to publish. Falsy while nobody listens."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def __call__(self, *args: Any) -> None:
        for listener in tuple(self):
            try:
                listener(*args)
            except Exception:
                log.exception("listener %r of event %s failed", listener, self.name)

    def __repr__(self) -> str:
        return f"<Event {self.name} ({len(self)} listeners)>"

    __hash__ = object.__hash__


class EventBus:
    """Every event the core publishes (see the module docstring for arguments)."""

    NAMES = (
        "connection_opened",
        "connection_upgraded",
        "connection_closed",
        "protocol_selected",
        "message_received",
        "room_flushed",
        "flush_delay",
        "rate_limited",
        "backlog_dropped",
        "store_committed",
        "store_failed",
        "client_refused",
    )

    connection_opened: Event
    connection_upgraded: Event
    connection_closed: Event
    protocol_selected: Event
    message_received: Event
    room_flushed: Event
    flush_delay: Event
    rate_limited: Event
    backlog_dropped: Event
    store_committed: Event
    store_failed: Event
    client_refused: Event

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, Event(name))

    def subscribe(self, name: str, listener: Callable[..., None]) -> Callable[[], None]:
        """Call `listener` on every `name` event; returns a function that unsubscribes it."""
        if name not in self.NAMES:
            raise ValueError(f"unknown event {name!r}; known: {', '.join(self.NAMES)}")
        event: Event = getattr(self, name)
        event.append(listener)

        def unsubscribe() -> None:
            if listener in event:
                event.remove(listener)

        return unsubscribe
