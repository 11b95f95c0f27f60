"""The live dashboard at "/" and the public figures it draws, GET /dashboard/stats.json.

On with `[http] dashboard = true` (the default) and `[server] status_page = true`; off, the core
serves its plain status page at "/" (or nothing, without status_page) and stats.json answers
404. The page (ops/dashboard.html) is one self-contained file, read once when the server is
built: inline CSS and JavaScript allowed by a Content-Security-Policy nonce made afresh at each
start, charts drawn by hand on <canvas>, no request leaves the server's origin. It works without
a token from stats.json; with the admin token entered in the page (kept in sessionStorage) it
calls the admin API (ops/admin.py) for the room inspector and the actions.

stats.json is public because it holds only aggregates: counts, rates, the version, uptime and
the busiest rooms by id with their counts; nothing about a single client. Its figures come from
a timer that samples every `[http] dashboard_interval` seconds into a ring buffer of
`[http] dashboard_window` seconds, so a freshly opened page draws the whole window at once. The
sample reuses the admin API's figures (`stats_document`) and its traffic `Counters`, shared with
the admin API, so nothing is counted twice; each request is answered from the last sample's
serialized document, so however often the page is polled the server does the work once per tick.

On a cluster (`[cluster] backend = "redis"`) the figures are the whole cluster's, alike on every
node, so a page polled through a load balancer draws the same curves whichever node answers:
at each tick the node broadcasts its own figures to the others and adds theirs
(ops/dashboard_cluster.py: connections and rates summed, rooms counted once per id, the busiest
rooms merged by id, `per_node` and the `missing` nodes), and a node that starts later borrows
an older node's history once. One process does none of this: its stats.json is as it always was.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import secrets
import time
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

from websockets.http11 import Response

from server import __version__
from server.app import status_line
from server.config import HttpSection
from server.facade import Facade
from server.http import plain_response
from server.logsafe import printable
from server.routes import JSON, HttpRequest, json_bytes

from .admin import Counters, room_list, stats_document
from .dashboard_cluster import ClusterFigures, members_elsewhere, node_report

log = logging.getLogger("stratus.dashboard")

PAGE_FILE = Path(__file__).with_name("dashboard.html")
STATS_PATH = "/dashboard/stats.json"
HTML = "text/html; charset=utf-8"
# Most samples kept, whatever the interval and window: bounds memory and the JSON's size (a
# shorter interval then shortens the window).
MAX_SAMPLES = 3600
# Placeholders in dashboard.html.
NONCE_MARK = "__CSP_NONCE__"
STATUS_MARK = "__STATUS_LINE__"
VERSION_MARK = "__VERSION__"
# On a cluster: the request a starting node sends an older one for its history.
HISTORY_TOPIC = "dashboard.history"


class Sample(NamedTuple):
    """One point of the charts."""

    time: float  # Unix time
    connections: int
    rooms: int  # rooms in memory
    active_rooms: int  # rooms with at least one client
    messages_per_second: float
    updates_per_second: float


def content_security_policy(nonce: str) -> str:
    """The page's policy: only its own nonce-marked inline script and style run, it talks to
    its own origin only, and nothing may frame it."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def render_template(template: str, nonce: str, version: str) -> str:
    """The page with its start-time placeholders filled (the status line stays a mark)."""
    for mark in (NONCE_MARK, STATUS_MARK, VERSION_MARK):
        if mark not in template:
            raise ValueError(f"{PAGE_FILE.name} lacks the placeholder {mark}")
    return template.replace(NONCE_MARK, nonce).replace(VERSION_MARK, html.escape(version))


def rate(now_count: int, then_count: int, seconds: float) -> float:
    """Events per second between two readings of a counter (0 when no time passed)."""
    if seconds <= 0:
        return 0.0
    return round(max(0, now_count - then_count) / seconds, 3)


def history_columns(samples: Any) -> dict[str, list[Any]]:
    """The samples as columns (one list per field), the shape stats.json sends."""
    columns: dict[str, list[Any]] = {name: [] for name in Sample._fields}
    for sample in samples:
        for name, value in zip(Sample._fields, sample, strict=True):
            columns[name].append(round(value, 3) if name == "time" else value)
    return columns


class Dashboard:
    """The dashboard as a server component: "/" and /dashboard/stats.json, and the sampler."""

    name = "dashboard"

    def __init__(self, http: HttpSection, status_page: bool, counters: Counters,
                 page_file: Path = PAGE_FILE) -> None:
        self.enabled = http.dashboard and status_page
        self.interval = http.dashboard_interval
        self.window = http.dashboard_window
        self.counters = counters
        self.samples: deque[Sample] = deque(
            maxlen=max(2, min(MAX_SAMPLES, math.ceil(self.window / self.interval))))
        self.nonce = secrets.token_urlsafe(18)
        self.page_file = page_file
        self.page = ""
        self.facade: Facade | None = None
        # On a cluster: the other nodes' figures, which stats.json adds to this node's.
        self.cluster: ClusterFigures | None = None
        self._stats_body = b"{}\n"
        self._previous: tuple[float, int, int] | None = None  # monotonic time, messages, updates
        self._timer: asyncio.TimerHandle | None = None
        # On a cluster: the borrowing of an older node's history (once; see _node_heard).
        self._borrowing: asyncio.Task | None = None
        self._borrowed = False

    def install(self, server: Any) -> None:
        """Read the page, register "/" and stats.json, count traffic (nothing when off)."""
        if not self.enabled:
            return
        self.facade = server.facade
        self.page = render_template(self.page_file.read_text(encoding="utf-8"), self.nonce,
                                    __version__)
        self.counters.attach(self.facade.events)
        self.facade.on_http("/", self.serve_page)
        self.facade.on_http(STATS_PATH, self.serve_stats)
        bus = server.cluster.bus
        if bus is not None:
            self.cluster = ClusterFigures(bus, lambda: self.facade.cluster_fault,
                                          self._node_heard)
            self.facade.answer(HISTORY_TOPIC, self._answer_history)

    async def start(self, server: Any) -> None:
        """Take the first sample and sample every `interval` seconds from now on."""
        if not self.enabled:
            return
        self.sample()
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)
        log.info("dashboard at / (a sample every %g s, %d kept)", self.interval,
                 self.samples.maxlen)

    async def stop(self) -> None:
        """Stop sampling."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._borrowing is not None:
            self._borrowing.cancel()

    # On a cluster: a node that starts later draws the history the others have

    def _answer_history(self, origin: str, payload: bytes) -> bytes:
        """Another node asks for this node's history (it just started)."""
        return json_bytes(history_columns(self.samples))

    def _node_heard(self, node: str, report: dict[str, Any]) -> None:
        """The first report of `node`: if it has been up longer than this node, borrow its
        history (from one node, once), so this node's curves cover the same window."""
        if self._borrowed or self._borrowing is not None:
            return
        if float(report["uptime_seconds"]) <= self.facade.stats()["uptime"] + self.interval:
            return
        self._borrowing = asyncio.get_running_loop().create_task(self._borrow_history(node))

    async def _borrow_history(self, node: str) -> None:
        try:
            replies = await self.facade.ask(HISTORY_TOPIC, b"", node=node)
            payload = replies.replies.get(node)
            if payload is not None:
                self.adopt_history(json.loads(payload))
                self._borrowed = True
                log.info("dashboard: history of node %s adopted (%d samples now)",
                         printable(node), len(self.samples))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("dashboard: the history of node %s is unreadable (%s)", printable(node),
                        exc)
            self._borrowed = True  # that node's is broken: do not ask again
        finally:
            self._borrowing = None

    def adopt_history(self, columns: dict[str, list[Any]]) -> None:
        """Put the samples of `columns` (stats.json's history) that are older than this
        node's first sample before it, keeping the newest `samples.maxlen`."""
        rows = zip(*(columns[name] for name in Sample._fields), strict=True)
        borrowed = [Sample(float(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]),
                           float(row[5])) for row in rows]
        first = self.samples[0].time if self.samples else math.inf
        older = [sample for sample in borrowed if sample.time < first - self.interval / 2]
        self.samples = deque([*older, *self.samples], maxlen=self.samples.maxlen)

    def _tick(self) -> None:
        try:
            self.sample()
        except Exception:
            log.exception("dashboard sample failed")
        self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def sample(self) -> None:
        """Read the figures once (on a cluster: this node's, sent to the others, plus theirs):
        append a sample and prepare stats.json's answer."""
        rooms = room_list(self.facade) if self.cluster is not None else None
        document = stats_document(self.facade, self.counters, rooms)
        now, clock = time.time(), time.monotonic()
        messages, updates = document["messages_received"], document["updates_delivered"]
        if self._previous is None:
            message_rate = update_rate = 0.0
        else:
            then, old_messages, old_updates = self._previous
            message_rate = rate(messages, old_messages, clock - then)
            update_rate = rate(updates, old_updates, clock - then)
        self._previous = (clock, messages, updates)
        document["messages_per_second"] = message_rate
        document["updates_per_second"] = update_rate
        if self.cluster is not None:
            document = self.cluster.figures(node_report(
                document, rooms, members_elsewhere(self.facade), self.interval,
                self.facade.cluster_fault is None, self.counters.room_updates,
                self.facade.worker))
        by_protocol = document["rooms"].values()
        self.samples.append(Sample(
            now, document["connections"]["total"], sum(counts["rooms"] for counts in by_protocol),
            sum(counts["active"] for counts in by_protocol), document["messages_per_second"],
            document["updates_per_second"]))
        document.update({
            "sampled_at": round(now, 3),
            "interval_seconds": self.interval,
            "window_seconds": round(self.interval * (self.samples.maxlen - 1), 3),
            # (moved here: the keys keep the order they always had)
            "messages_per_second": document.pop("messages_per_second"),
            "updates_per_second": document.pop("updates_per_second"),
            "history": history_columns(self.samples),
        })
        self._stats_body = json_bytes(document)

    def serve_page(self, request: HttpRequest) -> Response:
        """GET /: the page, with the current status line for readers without JavaScript (on a
        cluster, the cluster's as of the last sample)."""
        if self.cluster is not None and self.samples:  # the cluster's, as the charts show
            last = self.samples[-1]
            figures = {"connections": last.connections, "rooms": {
                "cluster": {"active": last.active_rooms, "in_memory": last.rooms}}}
        else:
            figures = self.facade.stats()
        body = self.page.replace(STATUS_MARK, status_line(figures), 1)
        return plain_response(200, "OK", body.encode(), HTML,
                              {"Content-Security-Policy": content_security_policy(self.nonce)})

    def serve_stats(self, request: HttpRequest) -> Response:
        """GET /dashboard/stats.json: the last sample's figures and the history."""
        return plain_response(200, "OK", self._stats_body, JSON)
