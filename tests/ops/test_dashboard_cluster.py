"""The dashboard's figures on a cluster (ops/dashboard_cluster.py): the pure parts, then two
real Stratus nodes on one real redis-server whose stats.json both show the whole cluster."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from ops.dashboard import STATS_PATH
from ops.dashboard_cluster import check_report, combine, is_fresh, node_report
from tests.conformance.cl4_client import close_all as close_cl4
from tests.conformance.cl4_client import identified
from tests.conformance.helpers import close_all, http_get, joined, set_text
from tests.ops.api import call
from tests.ops.test_dashboard import stats, until_stats

INTERVAL = 0.3
NODE_TIMEOUT = 3.0  # long enough to see a stopped node missing before it is gone
SCORE = "☁ score"


# Pure parts


def report(connections: int, rooms: dict, busiest: list, rate: float = 0.0,
           uptime: float = 10.0, worker: int = 0) -> dict:
    """A node's report with the given figures (the rest zero)."""
    return {"version": "1.0", "worker": worker, "uptime_seconds": uptime, "interval_seconds": 2.0,
            "link_up": True, "connections": {"total": connections, "scratch": connections},
            "rooms": rooms, "messages_received": 10, "updates_delivered": 20,
            "frames_sent": 5, "messages_per_second": rate, "updates_per_second": 2 * rate,
            "busiest_rooms": busiest}


def room(room_id: str, clients: int, updates: int = 0, variables: int = 1) -> dict:
    return {"protocol": "scratch", "id": room_id, "clients": clients, "variables": variables,
            "updates": updates}


def test_a_node_reports_its_share_of_each_room():
    """A room shared with another node counts as the share of its members here; a room
    empty everywhere counts 1; an empty room with members elsewhere counts 0 here."""
    rooms = [room("shared", 1), room("own", 2), room("idle", 0), room("theirs", 0)]
    elsewhere = {("scratch", "shared"): 3, ("scratch", "theirs"): 5}
    document = {"version": "1.0", "uptime_seconds": 3.0, "connections": {"total": 3},
                "messages_received": 1, "updates_delivered": 2, "frames_sent": 3,
                "messages_per_second": 0.5, "updates_per_second": 1.0}
    own = node_report(document, rooms, elsewhere, 2.0, True, {("scratch", "own"): 7}, 5)
    assert own["rooms"] == {"scratch": {"rooms": 2.25, "active": 1.25, "held": 4}}
    # Ranked by members over the cluster: "theirs" (5 elsewhere) and "shared" (4) first.
    assert [entry["id"] for entry in own["busiest_rooms"]] == ["theirs", "shared", "own", "idle"]
    assert own["busiest_rooms"][2]["updates"] == 7
    assert own["busiest_rooms"][1]["clients"] == 1  # members here only
    check_report(own)  # what a node sends, the others accept


def test_cluster_figures_count_a_shared_room_once_and_sum_the_rest():
    """Two nodes' reports: a room on both counts once, its members are summed in the busiest
    list, connections and rates add up, and each node has a line."""
    a = report(1, {"scratch": {"rooms": 0.25, "active": 0.25, "held": 1}},
               [room("shared", 1, updates=4)], rate=1.5, uptime=100.0)
    b = report(4, {"scratch": {"rooms": 1.75, "active": 1.75, "held": 2}},
               [room("shared", 3, updates=6), room("solo", 1)], rate=2.0, uptime=5.0,
               worker=7)
    document = combine([("node-a", 0.0, a), ("node-b", 1.5, b)])
    assert document["connections"] == {"total": 5, "scratch": 5}
    assert document["rooms"] == {"scratch": {"rooms": 2, "active": 2}}
    assert document["busiest_rooms"][0] == room("shared", 4, updates=10)
    assert [entry["id"] for entry in document["busiest_rooms"]] == ["shared", "solo"]
    assert document["messages_per_second"] == 3.5 and document["updates_per_second"] == 7.0
    assert document["messages_received"] == 20
    assert document["uptime_seconds"] == 100.0
    assert document["per_node"] == [
        {"node": "worker 0", "connections": 1, "rooms": 1, "link_up": True},
        {"node": "worker 7", "connections": 4, "rooms": 2, "link_up": True}]


def test_a_node_leaving_takes_away_its_rate_without_a_spike():
    """The rate of the cluster is the sum of the nodes' own rates: without a node it drops
    by that node's rate, never below zero nor above the sum."""
    a = report(1, {}, [], rate=3.0)
    b = report(1, {}, [], rate=5.0)
    assert combine([("a", 0.0, a), ("b", 0.0, b)])["messages_per_second"] == 8.0
    assert combine([("a", 0.0, a)])["messages_per_second"] == 3.0


def test_a_report_counts_for_three_of_its_senders_intervals():
    """A report stays in the figures for three of its sender's intervals (plus slack)."""
    fresh = report(0, {}, [])
    assert is_fresh(fresh, 6.0)
    assert not is_fresh(fresh, 7.0)


def test_a_report_of_another_shape_is_refused():
    """A report missing a field or with a wrong type is refused, a well-formed one passes."""
    good = report(2, {"scratch": {"rooms": 1.0, "active": 1.0, "held": 1}}, [room("r", 2)])
    check_report(good)
    broken = [
        {**good, "connections": {"scratch": 2}},
        {**good, "messages_per_second": "fast"},
        {**good, "link_up": 1},
        {**good, "rooms": {"scratch": {"rooms": 1}}},
        {**good, "busiest_rooms": [{**room("r", 2), "clients": None}]},
        [good],
    ]
    for bad in broken:
        with pytest.raises((ValueError, KeyError, TypeError, AttributeError)):
            check_report(bad)


# Two real nodes


@pytest.fixture
def two_nodes(redis_server, make_redis_node):
    """Nodes "node-a" and "node-b" sharing one Redis, sampling every INTERVAL seconds."""
    return [make_redis_node(redis_server, node_timeout=NODE_TIMEOUT,
                            http={"dashboard_interval": INTERVAL}, cluster={"node_id": name})
            for name in ("node-a", "node-b")]


async def public_names(two_nodes) -> dict[str, str]:
    """How stats.json names "node-a" and "node-b" (by worker number), once both report."""
    names = {}
    for node_id, node in zip(("node-a", "node-b"), two_nodes, strict=True):
        document = await until_stats(node.port, lambda d: len(d["nodes"]["reported"]) == 2,
                                     "both nodes reporting")
        names[node_id] = document["nodes"]["this"]
    return names


def cluster_view(document: dict) -> tuple:
    """What must be alike on every node: clients, rooms, the busiest rooms' members."""
    return (document["connections"].get("scratch"), document["rooms"].get("scratch"),
            sorted((entry["id"], entry["clients"]) for entry in document["busiest_rooms"]))


async def test_every_node_shows_the_same_cluster_totals(two_nodes, room):
    """A room with members on both nodes and a room only on node B: stats.json of either node
    counts all 4 clients, 2 rooms (the shared one once), 3 members in the shared room, and
    lists both nodes."""
    a_node, b_node = two_nodes
    solo = room + "-solo"
    clients = [await joined(a_node.url, room, "alice"), await joined(b_node.url, room, "bob"),
               await joined(b_node.url, room, "bea"), await joined(b_node.url, solo, "sam")]
    expected = (4, {"rooms": 2, "active": 2}, sorted([(room, 3), (solo, 1)]))
    try:
        views = {}
        names = await public_names(two_nodes)
        assert all(re.fullmatch(r"worker \d+", name) for name in names.values())
        assert names["node-a"] != names["node-b"]
        for node in two_nodes:
            document = await until_stats(node.port, lambda d: cluster_view(d) == expected,
                                         f"the cluster's figures on {node.port}")
            per_node = {line["node"]: line for line in document["per_node"]}
            assert set(per_node) == set(names.values())
            assert per_node[names["node-a"]]["rooms"] == 1
            assert per_node[names["node-b"]]["rooms"] == 2
            assert per_node[names["node-b"]]["connections"] >= 3
            assert all(line["link_up"] for line in per_node.values())
            assert document["nodes"]["reported"] == sorted(names.values())
            # Public: the node ids (by default the host name) are not in it.
            body = call(node.port, "GET", STATS_PATH, token=None).body.decode()
            assert "node-a" not in body and "node-b" not in body
            assert document["nodes"]["missing"] == [] and "note" not in document["nodes"]
            assert document["history"]["active_rooms"][-1] == 2
            views[node.port] = cluster_view(document)
            page = (await asyncio.to_thread(http_get, node.http_url, "/"))[2].decode()
            assert re.search(r"\d+ connections, 2 active rooms, 2 rooms in memory\.", page)
        assert views[a_node.port] == views[b_node.port]
    finally:
        await close_all(*clients)


async def test_a_cl4_room_on_both_nodes_counts_once(two_nodes):
    """CL4 clients of one room on two nodes: either node counts one CL4 room with both
    clients in it."""
    a_node, b_node = two_nodes
    [alice] = await identified(a_node.url, "alice")
    [bob] = await identified(b_node.url, "bob")
    try:
        for node in two_nodes:
            await until_stats(node.port, lambda d: d["rooms"].get("cl4") == {
                "rooms": 1, "active": 1} and ("cl4", "default", 2) in [
                (r["protocol"], r["id"], r["clients"]) for r in d["busiest_rooms"]],
                "one CL4 room with two clients")
    finally:
        await close_cl4(alice, bob)


async def test_writes_on_one_node_show_in_the_other_nodes_rates(two_nodes, room):
    """Messages received and updates delivered on node B make node A's per-second rates and
    history rise, though node A has no client."""
    a_node, b_node = two_nodes
    names = await public_names(two_nodes)
    writer = await joined(b_node.url, room, "writer")
    reader = await joined(b_node.url, room, "reader")
    try:
        async def write() -> None:
            for value in range(40):
                await writer.send(set_text(SCORE, value))
                await asyncio.sleep(0.03)

        writing = asyncio.create_task(write())
        document = await until_stats(
            a_node.port,
            lambda d: d["messages_per_second"] > 0 and d["updates_per_second"] > 0,
            "node B's traffic in node A's rates")
        await writing
        assert any(value > 0 for value in document["history"]["messages_per_second"])
        per_node = {line["node"]: line for line in document["per_node"]}
        assert per_node[names["node-a"]]["connections"] <= 1  # this request, at most
    finally:
        await close_all(writer, reader)


@pytest.mark.parametrize("stop", [signal.SIGSTOP, signal.SIGKILL])
async def test_a_stopped_node_is_missing_and_stats_still_answer_at_once(two_nodes, room, stop):
    """With node B stopped or killed, node A's stats.json answers at once, lists B as missing
    and leaves its clients out within a few intervals; a killed B drops out after the node
    timeout."""
    a_node, b_node = two_nodes
    names = await public_names(two_nodes)
    a_name, b_name = names["node-a"], names["node-b"]
    clients = [await joined(b_node.url, room, "far1"), await joined(b_node.url, room, "far2")]
    await until_stats(a_node.port, lambda d: d["connections"].get("scratch") == 2,
                      "node B's clients")
    b_node.proc.send_signal(stop)
    try:
        started = time.monotonic()
        document = await until_stats(a_node.port, lambda d: d["nodes"]["missing"] == [b_name],
                                     "node B missing", timeout=NODE_TIMEOUT + 2)
        assert time.monotonic() - started < NODE_TIMEOUT + 1
        assert document["connections"].get("scratch", 0) == 0
        assert [line["node"] for line in document["per_node"]] == [a_name]
        assert b_name in document["nodes"]["note"]
        for _ in range(5):
            asked = time.monotonic()
            await asyncio.to_thread(stats, a_node.port)
            assert time.monotonic() - asked < 1.0  # never waits for node B (reply_timeout 2 s)
        if stop == signal.SIGKILL:
            await until_stats(a_node.port, lambda d: d["nodes"]["missing"] == [],
                              "node B forgotten", timeout=NODE_TIMEOUT + 5)
        else:
            b_node.proc.send_signal(signal.SIGCONT)
            await until_stats(a_node.port, lambda d: d["nodes"]["reported"] == sorted(
                names.values()) and d["connections"].get("scratch") == 2, "node B back")
    finally:
        if b_node.proc.poll() is None:
            b_node.proc.send_signal(signal.SIGCONT)
    if stop == signal.SIGSTOP:
        await close_all(*clients)


async def test_a_node_started_later_draws_the_history_of_the_others(
        redis_server, make_redis_node):
    """A node that joins a running cluster serves the older node's history from its first
    seconds, so both draw curves over the same span."""
    settings = {"node_timeout": NODE_TIMEOUT, "http": {"dashboard_interval": INTERVAL}}
    early = make_redis_node(redis_server, cluster={"node_id": "early"}, **settings)
    history = (await until_stats(early.port, lambda d: len(d["history"]["time"]) >= 10,
                                 "ten samples"))["history"]
    late = make_redis_node(redis_server, cluster={"node_id": "late"}, **settings)
    started = time.time()
    document = await until_stats(late.port, lambda d: d["history"]["time"][0] < started - 1,
                                 "the early node's history on the late node")
    assert document["history"]["time"][0] <= history["time"][0] + INTERVAL
    assert document["history"]["time"] == sorted(document["history"]["time"])
    assert "history of node early adopted" in late.log()


async def test_with_redis_down_a_node_shows_its_own_figures_and_says_why(
        redis_server, two_nodes, room):
    """With the link to Redis down, a node's stats.json soon counts only its own clients,
    marks its link down and says so in the note."""
    a_node, b_node = two_nodes
    names = await public_names(two_nodes)
    clients = [await joined(a_node.url, room, "near"), await joined(b_node.url, room, "far")]
    try:
        await until_stats(a_node.port, lambda d: d["connections"].get("scratch") == 2,
                          "both nodes' clients")
        redis_server.stop()
        document = await until_stats(
            a_node.port, lambda d: [line["node"] for line in d["per_node"]] == [names["node-a"]],
            "node A alone")
        assert document["connections"]["scratch"] == 1
        assert document["per_node"][0]["link_up"] is False
        assert "Redis down" in document["nodes"]["note"]
    finally:
        await close_all(*clients)
