"""The dashboard's figures on a cluster: every node's stats.json shows the whole cluster.

At each tick of the dashboard's sampler (ops/dashboard.py) a node broadcasts a small report of
its own figures on the cluster's message bus (topic `dashboard.figures`, `node_report`), keeps
the latest report of every other node, and adds them to its own (`combine`): those totals are
what it samples into its history and serves as stats.json, exactly as one process serves its
own. Nothing is asked and nothing awaited: a tick costs one small publish and a sum over the
nodes' reports, a slow or stopped node only lets its report grow old, and stats.json is still
answered from the body prepared at the last tick. Since every node sums the same reports, the
nodes agree within one interval, so the page draws the same curves whichever node a load
balancer hands a poll to.

- Rooms count once per room id without sending the ids: for each room with members here a
  node reports its share, members here / members of the room over all nodes (each node holding
  a room already follows the other nodes' member counts, for max_clients_per_room), so the
  shares of one room add up to 1 over the nodes. A room in memory here with no member on any
  node counts 1 here (an empty room two nodes both keep in memory counts on each of them).
- Rates are each node's own, from its own counters, summed: a node that joins or leaves adds or
  takes away its rate, never a jump made of the difference of two sums.
- Busiest rooms: each node reports its BUSIEST_ROOMS rooms with the most members over the
  cluster, with its own members in each; ranked by the cluster's count, a room among the
  cluster's busiest is in the report of every node holding it, so merged by room id (members
  and updates summed) its count is the cluster's.
- History: a node that starts while others run borrows the history of the first node it hears
  from that has been up longer (one `Facade.ask` on `dashboard.history`, once), so its curves
  cover the same window as theirs instead of starting empty.
- A report counts while it is younger than STALE_INTERVALS of its sender's intervals (plus a
  little for the bus). A node heard from (its heartbeat) whose report is older, or that never
  sent one (its dashboard is off), is listed as missing and left out of the totals; a node that
  is gone (`on_node_gone`, after [cluster] node_timeout) is forgotten.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from server.backplane import MessageBus
from server.facade import Facade
from server.logsafe import printable

from .admin import busiest, merge_rooms

log = logging.getLogger("stratus.dashboard")

FIGURES_TOPIC = "dashboard.figures"
# A report older than this many of its sender's intervals (plus BUS_SLACK seconds) no longer
# counts: its node is listed as missing.
STALE_INTERVALS = 3
BUS_SLACK = 0.5
# Summed traffic totals of the reports (the rates are summed apart).
TOTALS = ("messages_received", "updates_delivered", "frames_sent")


def members_elsewhere(facade: Facade) -> dict[tuple[str, str], int]:
    """Members on other nodes of the rooms this node holds, by (protocol, room id)."""
    counts = {(namespace, room_id): count
              for namespace in facade.namespaces()
              for room_id, count in facade.members_elsewhere(namespace).items()}
    try:
        cl4 = facade.service("cl4").members_elsewhere()
    except LookupError:
        cl4 = {}
    counts.update({("cl4", room_id): count for room_id, count in cl4.items()})
    return counts


def node_report(document: dict[str, Any], rooms: list[dict[str, Any]],
                elsewhere: dict[tuple[str, str], int], interval: float, link_up: bool,
                room_updates: dict[tuple[str, str], int], worker: int) -> dict[str, Any]:
    """This node's report to the others: its figures from `document` (`stats_document`, with
    the rates added), its share of each protocol's rooms, and its busiest rooms (by members
    over the cluster) with its own members in each. `rooms`: `room_list`; `elsewhere`: members
    on other nodes by (protocol, id); `room_updates`: updates flushed per room here; `worker`:
    the node's worker number, which names it in public (`public_name`)."""
    shares: dict[str, dict[str, float]] = {}
    for room in rooms:
        here = room["clients"]
        other = elsewhere.get((room["protocol"], room["id"]), 0)
        counts = shares.setdefault(room["protocol"], {"rooms": 0.0, "active": 0.0, "held": 0})
        counts["held"] += 1
        if here:
            share = here / (here + other)
            counts["rooms"] += share
            counts["active"] += share
        elif not other:
            counts["rooms"] += 1  # empty everywhere: kept in memory here
    top = busiest(rooms, lambda room: room["clients"]
                  + elsewhere.get((room["protocol"], room["id"]), 0))
    return {
        "version": document["version"],
        "worker": worker,
        "uptime_seconds": document["uptime_seconds"],
        "interval_seconds": interval,
        "link_up": link_up,
        "connections": document["connections"],
        "rooms": {protocol: {name: round(value, 6) for name, value in counts.items()}
                  for protocol, counts in shares.items()},
        **{name: document[name] for name in TOTALS},
        "messages_per_second": document["messages_per_second"],
        "updates_per_second": document["updates_per_second"],
        "busiest_rooms": [{**room, "updates": room_updates.get((room["protocol"], room["id"]), 0)}
                          for room in top],
    }


def public_name(report: dict[str, Any] | None) -> str:
    """How stats.json names a node: by its worker number, never by its node id, which by
    default holds the host name (stats.json is public); the start-up log line and the admin
    API's `per_node` pair the two."""
    return f"worker {report['worker']}" if report is not None else "a node not heard from yet"


def _summed(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for part in parts:
        for name, value in part.items():
            total[name] = total.get(name, 0) + value
    return total


def combine(reports: list[tuple[str, float, dict[str, Any]]]) -> dict[str, Any]:
    """The cluster's figures from the nodes' reports, `(node, age in seconds, report)`, this
    node's first: counts, totals and rates summed, rooms counted once, the busiest rooms merged
    by id, the longest uptime (each aged to now), and `per_node`."""
    own = reports[0][2]
    rooms: dict[str, dict[str, int]] = {}
    for protocol in dict.fromkeys(name for _, _, report in reports for name in report["rooms"]):
        counts = _summed(report["rooms"][protocol] for _, _, report in reports
                         if protocol in report["rooms"])
        rooms[protocol] = {"rooms": round(counts["rooms"]), "active": round(counts["active"])}
    merged = merge_rooms(report["busiest_rooms"] for _, _, report in reports)
    return {
        "version": own["version"],
        "uptime_seconds": round(max(report["uptime_seconds"] + age
                                    for _, age, report in reports), 3),
        "connections": _summed(report["connections"] for _, _, report in reports),
        "rooms": rooms,
        **{name: sum(report[name] for _, _, report in reports) for name in TOTALS},
        "busiest_rooms": busiest(merged),
        "messages_per_second": round(sum(report["messages_per_second"]
                                         for _, _, report in reports), 3),
        "updates_per_second": round(sum(report["updates_per_second"]
                                        for _, _, report in reports), 3),
        "per_node": [{"node": public_name(report), "connections": report["connections"]["total"],
                      "rooms": sum(counts["held"] for counts in report["rooms"].values()),
                      "link_up": report["link_up"]}
                     for node, _, report in reports],
    }


def check_report(report: Any) -> None:
    """Raise ValueError (or KeyError, TypeError) unless `report` has the shape `node_report`
    makes, so a report from another version of Stratus cannot break `combine`."""
    numbers = ("worker", "uptime_seconds", "interval_seconds", *TOTALS, "messages_per_second",
               "updates_per_second")
    if not isinstance(report, dict) or not all(_is_number(report[name]) for name in numbers):
        raise ValueError("not a report")
    if not isinstance(report["version"], str) or not isinstance(report["link_up"], bool):
        raise ValueError("no version or link state")
    if not (isinstance(report["connections"], dict) and _is_number(report["connections"]["total"])
            and all(_is_number(count) for count in report["connections"].values())):
        raise ValueError("bad connections")
    for counts in report["rooms"].values():
        if not all(_is_number(counts[name]) for name in ("rooms", "active", "held")):
            raise ValueError("bad room counts")
    for room in report["busiest_rooms"]:
        if not (isinstance(room["protocol"], str) and isinstance(room["id"], str)
                and all(_is_number(room[name]) for name in ("clients", "variables", "updates"))):
            raise ValueError("bad busiest room")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_fresh(report: dict[str, Any], age: float) -> bool:
    """True while a report of that age still counts (see STALE_INTERVALS)."""
    return age <= STALE_INTERVALS * report["interval_seconds"] + BUS_SLACK


class ClusterFigures:
    """The latest report of every other node, and the cluster's figures made from them."""

    def __init__(self, bus: MessageBus, link_fault: Callable[[], str | None],
                 first_heard: Callable[[str, dict[str, Any]], None] = lambda node, report: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.link_fault = link_fault
        # first_heard(node, report): the first report of a node (since it was last gone).
        self.first_heard = first_heard
        self.clock = clock
        # node id -> (when it arrived, on `clock`; the report)
        self.latest: dict[str, tuple[float, dict[str, Any]]] = {}
        self._unreadable_from: set[str] = set()
        bus.subscribe(FIGURES_TOPIC, self.received)
        bus.on_node_gone(self.node_gone)

    @property
    def node_id(self) -> str:
        """This node's id."""
        return self.bus.node_id

    def received(self, origin: str, payload: bytes) -> None:
        """Keep another node's report (replacing its previous one)."""
        try:
            report = json.loads(payload)
            check_report(report)
        except (ValueError, KeyError, TypeError, AttributeError):
            if origin not in self._unreadable_from:  # once per node, not once per tick
                self._unreadable_from.add(origin)
                log.warning("dashboard: an unreadable report from node %s is ignored",
                            printable(origin))
            return
        first = origin not in self.latest
        self.latest[origin] = (self.clock(), report)
        if first:
            self.first_heard(origin, report)

    def node_gone(self, node: str) -> None:
        """A node stopped answering: forget it."""
        self.latest.pop(node, None)
        self._unreadable_from.discard(node)

    def figures(self, own: dict[str, Any]) -> dict[str, Any]:
        """Send `own` report to the other nodes and return the cluster's figures, with a
        "nodes" section: this node, the nodes whose reports count, and those missing."""
        self.bus.publish(FIGURES_TOPIC, json.dumps(own, separators=(",", ":")).encode())
        now = self.clock()
        reports = [(self.node_id, 0.0, own)]
        missing = []
        for node in sorted(set(self.bus.nodes()) | set(self.latest)):
            arrived, report = self.latest.get(node, (None, None))
            if report is not None and is_fresh(report, now - arrived):
                reports.append((node, now - arrived, report))
            else:
                missing.append(node)
        document = combine(reports)
        unheard = [public_name(self.latest.get(node, (None, None))[1]) for node in missing]
        nodes: dict[str, Any] = {"this": public_name(own),
                                 "reported": sorted(public_name(report)
                                                    for _, _, report in reports),
                                 "missing": unheard}
        fault = self.link_fault()
        if fault:
            nodes["note"] = f"{fault}: the other nodes' figures may be missing or old"
        elif missing:
            nodes["note"] = "no recent figures from " + ", ".join(unheard)
        document["nodes"] = nodes
        return document
