"""The event bus on its own (server.events): falsy when unused, ordered, failure-tolerant."""

from __future__ import annotations

import logging

import pytest

from server.events import EventBus


def test_events_are_falsy_until_someone_listens():
    """Every event is falsy with no listener, so publishers can skip it for free."""
    bus = EventBus()
    for name in EventBus.NAMES:
        assert not getattr(bus, name)
    bus.subscribe("room_flushed", lambda *args: None)
    assert bus.room_flushed
    assert not bus.message_received


def test_listeners_run_in_subscription_order_with_the_arguments():
    """Publishing calls every listener, in the order they subscribed, with the same arguments."""
    bus = EventBus()
    calls = []
    bus.subscribe("connection_closed", lambda conn, code: calls.append(("first", conn, code)))
    bus.subscribe("connection_closed", lambda conn, code: calls.append(("second", conn, code)))
    bus.connection_closed("conn", 1000)
    assert calls == [("first", "conn", 1000), ("second", "conn", 1000)]


def test_unsubscribe_stops_delivery():
    """The function subscribe returns removes the listener (twice is harmless)."""
    bus = EventBus()
    calls = []
    unsubscribe = bus.subscribe("store_committed", calls.append)
    bus.store_committed(1)
    unsubscribe()
    unsubscribe()
    bus.store_committed(2)
    assert calls == [1]
    assert not bus.store_committed


def test_a_failing_listener_is_logged_and_the_next_still_runs(caplog):
    """A listener that raises is logged; the listeners after it still run."""
    bus = EventBus()
    calls = []

    def broken(*args):
        raise RuntimeError("boom")

    bus.subscribe("client_refused", broken)
    bus.subscribe("client_refused", lambda *args: calls.append(args))
    with caplog.at_level(logging.ERROR, logger="stratus.events"):
        bus.client_refused("1.2.3.4", 4005, "cookie")
    assert calls == [("1.2.3.4", 4005, "cookie")]
    assert "client_refused" in caplog.text


def test_a_listener_may_unsubscribe_while_the_event_runs():
    """A listener removing itself during publishing does not skip the next listener."""
    bus = EventBus()
    calls = []
    unsubscribe = bus.subscribe("message_received", lambda *a: (calls.append(1), unsubscribe()))
    bus.subscribe("message_received", lambda *a: calls.append(2))
    bus.message_received("conn", "text")
    assert calls == [1, 2]


def test_unknown_event_names_are_refused():
    """Subscribing to an event that does not exist raises ValueError naming the known ones."""
    with pytest.raises(ValueError, match="room_flushed"):
        EventBus().subscribe("room_flushd", print)
