"""Prometheus metrics at GET /metrics, in the text exposition format.

Nothing here runs per message. Figures the core keeps anyway (connections, rooms, messages
read per connection, frames/bytes/updates sent, store writes) are read from `Facade.stats` when
Prometheus scrapes. Rare events (a connection closing, a client over its rate, a refusal) are
counted by event-bus listeners into plain integers; the one per-batch listener is the flush
delay histogram (one `bisect` per room flush). Each server has its own registry, so several
servers in one process (tests, embedding) never share or clash over figures. With
`[http] metrics = false` this module is not loaded, subscribes to nothing and costs nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from websockets.http11 import Request, Response

from server.app import protocol_of
from server.facade import Facade
from server.http import plain_response

METRICS_PATH = "/metrics"
# Upper bounds (seconds) of the flush delay histogram: a quiet room flushes after
# [scratch] burst_window_ms (2 ms), a busy one after up to 1/batch_hz (16.7 ms at 60 Hz);
# the higher buckets show an overloaded event loop.
FLUSH_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0)
NO_CLOSE_FRAME = "none"  # the `code` label of a connection whose TCP ended without a close


class Histogram:
    """A latency histogram in plain integers: `observe` is a bisect and two additions."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs as Prometheus wants them, +Inf last."""
        cumulative = 0
        pairs = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            pairs.append((bound, cumulative))
        return pairs


class EventCounts:
    """Counters fed by the event bus: closes by code, rate limiting, refusals, flush delay."""

    def __init__(self) -> None:
        self.closed_by_code: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.refused_by_status: dict[str, int] = {}
        self.flush_delay = Histogram(FLUSH_DELAY_BUCKETS)
        self._upgraded: set[Any] = set()  # open WebSocket connections (plain HTTP excluded)

    def subscribe(self, facade: Facade) -> list[Callable[[], None]]:
        """Listen on `facade.events`; returns the functions that unsubscribe."""
        subscribe = facade.events.subscribe
        return [
            subscribe("connection_upgraded", self._upgraded.add),
            subscribe("connection_closed", self.connection_closed),
            subscribe("rate_limited", self.client_rate_limited),
            subscribe("client_refused", self.client_refused),
            subscribe("flush_delay", self.flushed),
        ]

    def connection_closed(self, connection: Any, code: int | None) -> None:
        if connection not in self._upgraded:
            return  # a plain HTTP request (this scrape, a health check) or a failed upgrade
        self._upgraded.discard(connection)
        label = NO_CLOSE_FRAME if code is None else str(int(code))
        self.closed_by_code[label] = self.closed_by_code.get(label, 0) + 1

    def client_rate_limited(self, connection: Any) -> None:
        name = protocol_of(connection)
        self.rate_limited[name] = self.rate_limited.get(name, 0) + 1

    def client_refused(self, address: str, status_or_code: int, reason: str) -> None:
        label = str(int(status_or_code))
        self.refused_by_status[label] = self.refused_by_status.get(label, 0) + 1

    def flushed(self, namespace: str, seconds: float) -> None:
        self.flush_delay.observe(seconds)


def _labelled(metric: Any, values: dict[str, float]) -> Any:
    for label, value in sorted(values.items()):
        metric.add_metric([label], value)
    return metric


class StratusCollector:
    """Builds every `stratus_*` metric from the facade and `EventCounts` at scrape time."""

    def __init__(self, facade: Facade, counts: EventCounts) -> None:
        self.facade = facade
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        stats = self.facade.stats()
        counts = self.counts
        protocols = stats["protocols"]  # every registered protocol and "pending"
        zero = dict.fromkeys(protocols, 0)

        yield InfoMetricFamily("stratus_build", "The Stratus version serving.",
                               value={"version": stats["version"]})
        yield GaugeMetricFamily("stratus_uptime_seconds", "Seconds since the server started.",
                                value=stats["uptime"])
        yield _labelled(GaugeMetricFamily(
            "stratus_connections",
            "Open connections by protocol; 'pending' have not chosen one yet (HTTP requests, "
            "WebSockets before their first message).", labels=["protocol"]), protocols)
        yield _labelled(GaugeMetricFamily(
            "stratus_rooms", "Rooms with at least one member, by protocol.",
            labels=["protocol"]), self._rooms(stats))
        yield _labelled(GaugeMetricFamily(
            "stratus_rooms_in_memory",
            "Rooms held in memory (empty ones waiting to be dropped included), by namespace.",
            labels=["namespace"]),
            {name: room["in_memory"] for name, room in stats["rooms"].items()})
        yield _labelled(CounterMetricFamily(
            "stratus_messages_received", "Text messages read from clients, by protocol.",
            labels=["protocol"]), stats["messages_received"])
        sent = stats["sent"]
        yield CounterMetricFamily(
            "stratus_updates_delivered",
            "Variable updates written to clients (lines; one frame carries many).",
            value=sent["updates"])
        yield CounterMetricFamily(
            "stratus_frames_sent",
            "WebSocket data frames written to clients (update batches and CL4 messages).",
            value=sent["frames"])
        yield CounterMetricFamily(
            "stratus_bytes_sent", "Bytes of those frames, WebSocket headers included.",
            value=sent["bytes"])
        yield _labelled(CounterMetricFamily(
            "stratus_connections_closed",
            "WebSocket connections that ended, by the close code sent or echoed ('none': TCP "
            "ended without a close frame).", labels=["code"]), counts.closed_by_code)
        yield _labelled(CounterMetricFamily(
            "stratus_rate_limited",
            "Times a client went over a rate limit (its reading paused, or a CL4 message "
            "refused with E:116), by protocol.", labels=["protocol"]),
            {**zero, **counts.rate_limited})
        yield _labelled(CounterMetricFamily(
            "stratus_clients_refused",
            "Requests and clients turned away, by HTTP status or close code.",
            labels=["code"]), counts.refused_by_status)
        store = stats["store"]
        yield CounterMetricFamily(
            "stratus_store_writes", "Write transactions the store committed.",
            value=store["writes"])
        yield CounterMetricFamily(
            "stratus_store_errors", "Store write attempts that failed (each is retried).",
            value=store["write_errors"])
        yield GaugeMetricFamily(
            "stratus_store_healthy", "1 while the store writes and reads, 0 while it fails.",
            value=0 if store["fault"] else 1)
        delay = counts.flush_delay
        yield HistogramMetricFamily(
            "stratus_flush_delay_seconds",
            "Time from a room's first pending write to the flush that sent it.",
            buckets=delay.buckets(), sum_value=delay.total)

    def _rooms(self, stats: dict[str, Any]) -> dict[str, int]:
        rooms = {name: room["active"] for name, room in stats["rooms"].items()}
        try:
            cl4 = self.facade.service("cl4")
        except LookupError:
            return rooms
        rooms["cl4"] = len(cl4.rooms())
        return rooms


class Metrics:
    """The metrics component: counts events and serves GET /metrics from its own registry."""

    name = "metrics"

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.counts = EventCounts()
        self._unsubscribe: list[Callable[[], None]] = []

    def install(self, server: Any) -> None:
        """Subscribe to the event bus and register the route (the server's facade only)."""
        facade: Facade = server.facade
        self.registry.register(StratusCollector(facade, self.counts))
        ProcessCollector(registry=self.registry)
        self._unsubscribe = self.counts.subscribe(facade)
        facade.on_http(METRICS_PATH, self.page)

    async def start(self, server: Any) -> None:
        """Nothing to open: figures are read when scraped."""

    async def stop(self) -> None:
        """Stop listening to the event bus."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def page(self, request: Request) -> Response:
        """The metrics in Prometheus' text format (version 0.0.4)."""
        return plain_response(200, "OK", generate_latest(self.registry),
                              CONTENT_TYPE_PLAIN_0_0_4)
