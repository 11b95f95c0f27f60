"""The admin API (ops/admin.py) across the nodes of a cluster: two real Stratus nodes on one
real redis-server, clients on both, the API asked through either node."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from types import SimpleNamespace

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conformance.cl4_client import close_all as close_cl4
from tests.conformance.cl4_client import identified
from tests.conformance.helpers import close_all, expect_close, http_get, joined, set_text
from tests.conftest import RoundRobinProxy, ServerProcess, redis_settings
from tests.ops.api import TOKEN, call
from tests.server.plugin_fixtures import append_plugins

SETTLE = 0.3  # long enough for a join or a member count to reach the other node
REPLY_TIMEOUT = 1.0
# The Redis hash of the stored blocks of Scratch projects (`server.facade.BLOCKLIST`).
BLOCKLIST_KEY = b"stratus:v:stratus.blocked-rooms:scratch"


@pytest.fixture
def two_nodes(redis_server, make_redis_node):
    """Nodes "node-a" and "node-b" with the admin API on, sharing one Redis."""
    return [make_redis_node(redis_server, admin={"token": TOKEN},
                            cluster={"node_id": name, "reply_timeout": REPLY_TIMEOUT})
            for name in ("node-a", "node-b")]


async def until_listed(port: int, room: str, count: int) -> dict:
    """GET /rooms/scratch/{room} once it lists `count` members (joins take a moment)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        reply = call(port, "GET", f"/api/v1/rooms/scratch/{room}")
        if reply.status == 200 and len(reply.json["members"]) == count:
            return reply.json
        await asyncio.sleep(0.05)
    raise AssertionError(f"{room} never listed {count} members")


async def test_members_of_both_nodes_are_listed_through_either(two_nodes, room):
    """A room with clients on two nodes lists them all, each with its node, through either
    node; GET /rooms counts them all."""
    a_node, b_node = two_nodes
    clients = [await joined(a_node.url, room, "alice"), await joined(b_node.url, room, "bob"),
               await joined(b_node.url, room, "bea")]
    for node in two_nodes:
        detail = await until_listed(node.port, room, 3)
        where = {member["username"]: member["node"] for member in detail["members"]}
        assert where == {"alice": "node-a", "bob": "node-b", "bea": "node-b"}
        assert detail["nodes"]["answered"] == ["node-a", "node-b"]
        assert detail["nodes"]["missing"] == []
        listed = call(node.port, "GET", "/api/v1/rooms?protocol=scratch").json
        [entry] = [entry for entry in listed["rooms"] if entry["id"] == room]
        assert entry["clients"] == 3
    await close_all(*clients)


async def test_client_ids_differ_across_nodes(two_nodes, room):
    """Clients of two nodes never share an id, for the admin API and for CL4 snowflakes."""
    a_node, b_node = two_nodes
    clients = [await joined(node.url, room, f"p{index}")
               for index in range(3) for node in two_nodes]
    detail = await until_listed(a_node.port, room, 6)
    ids = [member["client_id"] for member in detail["members"]]
    assert len(set(ids)) == 6 and all(0 < client_id < 2 ** 53 for client_id in ids)
    cl4 = [(await identified(node.url, f"user{index}"))[0]
           for index, node in enumerate(two_nodes)]
    snowflakes = [client.user["id"] for client in cl4]
    instances = {(int(snowflake) >> 12) & 0x3FF for snowflake in snowflakes}
    assert len(instances) == 2
    await close_all(*clients)
    await close_cl4(*cl4)


async def test_kick_through_one_node_closes_a_client_of_the_other(two_nodes, room):
    """POST /clients/{id}/kick on node A closes a client connected to node B, with the code
    asked for, and says which node held it."""
    a_node, b_node = two_nodes
    target = await joined(b_node.url, room, "target")
    detail = await until_listed(a_node.port, room, 1)
    client_id = detail["members"][0]["client_id"]
    reply = call(a_node.port, "POST", f"/api/v1/clients/{client_id}/kick", {"code": 4100})
    assert reply.status == 200, reply
    assert reply.json["node"] == "node-b" and reply.json["close_code"] == 4100
    await expect_close(target, 4100)
    gone = call(a_node.port, "POST", f"/api/v1/clients/{client_id}/kick")
    assert gone.status == 404 and gone.json["nodes"]["missing"] == []


async def test_delete_room_closes_members_on_both_nodes_and_deletes_the_variables(
        two_nodes, room):
    """DELETE /rooms/scratch/{id} on node A closes the members of both nodes with 4000 and
    the room's variables are gone on both."""
    a_node, b_node = two_nodes
    a = await joined(a_node.url, room, "alice")
    b = await joined(b_node.url, room, "bob")
    await a.send(set_text("☁ score", 12))
    await until_listed(a_node.port, room, 2)
    await asyncio.sleep(SETTLE)
    reply = call(a_node.port, "DELETE", f"/api/v1/rooms/scratch/{room}")
    assert reply.status == 200, reply
    assert reply.json["clients_closed"] == 2 and reply.json["variables_deleted"] == 1
    await expect_close(a, 4000)
    await expect_close(b, 4000, messages=1)  # the set made on node A
    await asyncio.sleep(SETTLE)
    for node in two_nodes:
        detail = call(node.port, "GET", f"/api/v1/rooms/scratch/{room}").json
        assert detail["variables"] == {} and detail["members"] == []
    late = await joined(b_node.url, room, "late")
    assert await expect_no_dump(late)
    await close_all(late)


async def expect_no_dump(ws) -> bool:
    """True when a fresh member gets no variables (the room is empty)."""
    try:
        async with asyncio.timeout(0.5):
            await ws.recv()
    except TimeoutError:
        return True
    return False


async def test_block_holds_on_every_node_and_for_nodes_started_later(
        redis_server, make_redis_node, two_nodes, room):
    """PUT /blocked-projects/{id} on node A refuses joins on node B (closing B's members),
    a node started afterwards refuses them too, and DELETE lifts it everywhere."""
    a_node, b_node = two_nodes
    member = await joined(b_node.url, room, "inside")
    await until_listed(a_node.port, room, 1)
    reply = call(a_node.port, "PUT", f"/api/v1/blocked-projects/{room}")
    assert reply.status == 200 and reply.json["clients_closed"] == 1, reply
    await expect_close(member, 4004)
    await expect_close(await joined(b_node.url, room), 4004)
    assert call(b_node.port, "GET", f"/api/v1/blocked-projects/{room}").status == 200
    await asyncio.sleep(SETTLE)  # the stored block reaches Redis
    later = make_redis_node(redis_server, admin={"token": TOKEN}, cluster={"node_id": "node-c"})
    await expect_close(await joined(later.url, room), 4004)
    assert call(b_node.port, "DELETE", f"/api/v1/blocked-projects/{room}").status == 200
    for node in (a_node, b_node, later):
        welcome = await joined(node.url, room, "welcome")
        assert await expect_no_dump(welcome)  # joined and served, not closed
        await close_all(welcome)
    assert call(a_node.port, "DELETE", f"/api/v1/blocked-projects/{room}").status == 404


@pytest.mark.parametrize("stop", [signal.SIGSTOP, signal.SIGKILL])
async def test_a_stopped_node_is_named_within_the_timeout(two_nodes, room, stop):
    """With node B stopped (SIGSTOP) or killed, node A's answers come within [cluster]
    reply_timeout and name B as missing (until B's heartbeat expires), instead of hanging."""
    a_node, b_node = two_nodes
    ws = await joined(a_node.url, room, "alice")
    await until_listed(a_node.port, room, 1)
    b_node.proc.send_signal(stop)
    try:
        for method, path in (("GET", "/api/v1/rooms"), ("GET", f"/api/v1/rooms/scratch/{room}"),
                             ("GET", "/api/v1/stats"), ("POST", "/api/v1/clients/12345/kick")):
            started = time.monotonic()
            reply = call(a_node.port, method, path)
            assert time.monotonic() - started < REPLY_TIMEOUT + 1.0
            assert reply.status in (200, 404), reply
            assert reply.json["nodes"]["missing"] == ["node-b"]
            assert "node-b" in reply.json["nodes"]["note"]
    finally:
        b_node.proc.send_signal(signal.SIGCONT)
    await close_all(ws)


async def test_stats_have_a_line_per_node(two_nodes, room):
    """GET /stats adds every node's clients, rooms, link state and worker number (the name the
    public dashboard gives it) to this node's figures."""
    a_node, b_node = two_nodes
    clients = [await joined(a_node.url, room, "a"), await joined(b_node.url, room, "b1"),
               await joined(b_node.url, room, "b2")]
    await until_listed(a_node.port, room, 3)
    stats = call(a_node.port, "GET", "/api/v1/stats").json
    per_node = {line["node"]: line for line in stats["per_node"]}
    assert per_node["node-a"]["clients"] == 1 and per_node["node-b"]["clients"] == 2
    assert all(line["link_up"] and line["rooms"] == 1 for line in per_node.values())
    assert stats["connections"]["scratch"] == 1  # this node's own figures stay its own
    workers = {line["node"]: line["worker"] for line in stats["per_node"]}
    assert len(set(workers.values())) == 2
    public = call(b_node.port, "GET", "/dashboard/stats.json", token=None).json
    assert public["nodes"]["this"] == f"worker {workers['node-b']}"
    await close_all(*clients)


async def test_with_redis_down_a_node_answers_for_itself(redis_server, two_nodes, room):
    """With the cluster link down, a node still answers with its own members and says so."""
    a_node, _ = two_nodes
    ws = await joined(a_node.url, room, "alice")
    await until_listed(a_node.port, room, 1)
    redis_server.stop()
    deadline = time.monotonic() + 5
    while True:
        reply = call(a_node.port, "GET", f"/api/v1/rooms/scratch/{room}")
        if "note" in reply.json.get("nodes", {}) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert reply.status == 200
    assert [member["username"] for member in reply.json["members"]] == ["alice"]
    assert reply.json["nodes"]["answered"] == ["node-a"]
    assert "Redis down" in reply.json["nodes"]["note"]
    await close_all(ws)


def test_requests_from_other_nodes_are_logged(two_nodes, room):
    """An action asked by another node is logged by the node that carried it out."""
    a_node, b_node = two_nodes
    assert call(a_node.port, "PUT", f"/api/v1/blocked-projects/{room}").status == 200
    deadline = time.monotonic() + 3
    while f"blocked project {room}, asked by node node-a" not in b_node.log():
        assert time.monotonic() < deadline, b_node.log()
        time.sleep(0.05)
    assert json.loads(call(a_node.port, "GET", "/api/v1/blocked-projects").body) == {
        "blocked": [room]}


async def test_cl4_room_members_of_both_nodes_are_listed_and_kickable(two_nodes):
    """CL4 clients of two nodes are listed in their room through either node, and a kick via
    node A closes node B's client with 1008."""
    a_node, b_node = two_nodes
    [alice] = await identified(a_node.url, "alice")
    [bob] = await identified(b_node.url, "bob")
    deadline = time.monotonic() + 5
    while True:
        detail = call(a_node.port, "GET", "/api/v1/rooms/cl4/default").json
        where = {member["username"]: member["node"] for member in detail.get("members", [])}
        if where == {"alice": "node-a", "bob": "node-b"} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert where == {"alice": "node-a", "bob": "node-b"}
    [remote] = [member for member in detail["members"] if member["username"] == "bob"]
    reply = call(a_node.port, "POST", f"/api/v1/clients/{remote['client_id']}/kick")
    assert reply.status == 200 and reply.json["close_code"] == 1008, reply
    await expect_close(bob.ws, 1008)
    await close_cl4(alice)


async def test_a_node_that_missed_a_block_applies_it_when_its_link_is_back(
        redis_server, make_redis_node, room):
    """A block made while node B's link to Redis was cut reaches B when the link is back: B
    closes its member in the room with 4004 and refuses joins (the block is stored in Redis)."""
    a_node = make_redis_node(redis_server, admin={"token": TOKEN},
                             cluster={"node_id": "node-a", "reply_timeout": REPLY_TIMEOUT})
    link = RoundRobinProxy([redis_server.port])  # node B reaches Redis through it
    try:
        through_link = SimpleNamespace(url=f"redis://127.0.0.1:{link.port}/0")
        b_node = make_redis_node(through_link, admin={"token": TOKEN},
                                 cluster={"node_id": "node-b"})
        member = await joined(b_node.url, room, "inside")
        await until_listed(a_node.port, room, 1)
        link.cut()
        await until_health(b_node, "cluster link to Redis down")
        reply = call(a_node.port, "PUT", f"/api/v1/blocked-projects/{room}")
        assert reply.status == 200 and reply.json["nodes"]["missing"] == ["node-b"], reply
        assert call(b_node.port, "GET", f"/api/v1/blocked-projects/{room}").status == 404
        link.restore()
        await expect_close(member, 4004, timeout=5)
        await expect_close(await joined(b_node.url, room), 4004)
        assert call(b_node.port, "GET", f"/api/v1/blocked-projects/{room}").status == 200
    finally:
        link.stop()


async def until_health(node, text: str) -> None:
    """Wait until the node's /healthz mentions `text`."""
    deadline = time.monotonic() + 5
    while text not in http_get(node.http_url, "/healthz")[2].decode():
        assert time.monotonic() < deadline, f"/healthz never said {text!r}"
        await asyncio.sleep(0.05)


async def until_health_clear(node, text: str) -> None:
    """Wait until the node's /healthz no longer mentions `text`."""
    deadline = time.monotonic() + 5
    while text in http_get(node.http_url, "/healthz")[2].decode():
        assert time.monotonic() < deadline, f"/healthz kept saying {text!r}"
        await asyncio.sleep(0.05)


async def until_logged(node, text: str, timeout: float = 5) -> None:
    """Wait until the node's log has `text`."""
    deadline = time.monotonic() + timeout
    while text not in node.log():
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{node.log()}"
        await asyncio.sleep(0.05)


async def refused(url: str, room: str) -> bool:
    """Whether the node closes a join of `room` with 4004 (else it keeps the client)."""
    ws = await joined(url, room, "probe")
    try:
        async with asyncio.timeout(0.5):
            await ws.recv()
    except TimeoutError:
        pass
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 4004, exc
        return True
    await close_all(ws)
    return False


async def until_accepted(url: str, room: str, timeout: float = 5) -> None:
    """Wait until the node accepts joins of `room` again."""
    deadline = time.monotonic() + timeout
    while await refused(url, room):
        assert time.monotonic() < deadline, f"joins of {room} still refused"
        await asyncio.sleep(0.1)


@pytest.fixture
def cuttable(redis_server, make_redis_node, tmp_path):
    """Node A on Redis, and `node_b(plugins=None, **settings)` starting node B, which reaches
    Redis through `link` (a proxy the test can `cut()` and `restore()`)."""
    a_node = make_redis_node(redis_server, admin={"token": TOKEN},
                             cluster={"node_id": "node-a", "reply_timeout": REPLY_TIMEOUT})
    link = RoundRobinProxy([redis_server.port])
    started: list[ServerProcess] = []

    def node_b(plugins: list | None = None, **settings) -> ServerProcess:
        workdir = tmp_path / "node-b"
        workdir.mkdir()
        through_link = SimpleNamespace(url=f"redis://127.0.0.1:{link.port}/0")
        node = ServerProcess(workdir, redis_settings(
            through_link, admin={"token": TOKEN}, cluster={"node_id": "node-b"}, **settings))
        if plugins:
            append_plugins(node.config_path, plugins)
        started.append(node)
        return node.start()

    yield SimpleNamespace(a=a_node, link=link, node_b=node_b)
    for node in started:
        node.stop()
    link.stop()


async def block_then_unblock_while_b_is_cut(cuttable, b_node, room: str) -> None:
    """Block `room` through node A (B applies it), cut B's link, unblock it through A (B
    misses that) and restore the link."""
    a_node, link = cuttable.a, cuttable.link
    reply = call(a_node.port, "PUT", f"/api/v1/blocked-projects/{room}")
    assert reply.status == 200 and reply.json["nodes"]["missing"] == [], reply
    assert await refused(a_node.url, room) and await refused(b_node.url, room)
    link.cut()
    await until_health(b_node, "cluster link to Redis down")
    reply = call(a_node.port, "DELETE", f"/api/v1/blocked-projects/{room}")
    assert reply.status == 200 and reply.json["nodes"]["missing"] == ["node-b"], reply
    assert not await refused(a_node.url, room)
    assert await refused(b_node.url, room)  # B did not hear the unblock
    link.restore()


async def test_a_node_that_missed_an_unblock_lifts_it_when_its_link_is_back(cuttable, room):
    """An unblock made through node A while node B's link to Redis was cut reaches B when
    the link is back: B accepts joins of the project again within seconds, and logs it."""
    b_node = cuttable.node_b()
    await block_then_unblock_while_b_is_cut(cuttable, b_node, room)
    await until_accepted(b_node.url, room)
    assert call(b_node.port, "GET", f"/api/v1/blocked-projects/{room}").status == 404
    assert (f"unblocked scratch room {room}: no longer stored as blocked, and this node had "
            "missed it") in b_node.log()


async def test_blocks_that_are_not_stored_survive_a_relink(cuttable, room):
    """A plugin's block without persist and a [scratch] blocked_rooms entry of node B still
    refuse joins on B after its relink lifted a stored block it had missed the unblock of."""
    local_room, config_room = f"{room}-plugin", f"{room}-config"
    b_node = cuttable.node_b(plugins=[{"use": "tests.server.plugin_fixtures:LocalBlocks",
                                       "block": [local_room]}],
                             scratch={"blocked_rooms": [config_room]})
    assert not await refused(cuttable.a.url, local_room)  # B's own block, stored nowhere
    await block_then_unblock_while_b_is_cut(cuttable, b_node, room)
    await until_accepted(b_node.url, room)
    assert await refused(b_node.url, local_room) and await refused(b_node.url, config_room)
    assert call(b_node.port, "GET", f"/api/v1/blocked-projects/{local_room}").status == 200


async def test_a_failed_read_of_the_stored_blocks_lifts_nothing(cuttable, redis_server, room):
    """When node B cannot read the stored blocks once its link is back (their Redis key
    holds something that is not a hash), B keeps refusing joins of the project it holds
    blocked and says why; it lifts the block once the read works again."""
    b_node = cuttable.node_b()
    redis = redis_server.client()
    try:
        reply = call(cuttable.a.port, "PUT", f"/api/v1/blocked-projects/{room}")
        assert reply.status == 200 and await refused(b_node.url, room), reply
        cuttable.link.cut()
        await until_health(b_node, "cluster link to Redis down")
        assert call(cuttable.a.port, "DELETE", f"/api/v1/blocked-projects/{room}").status == 200
        redis.set(BLOCKLIST_KEY, b"not a hash")
        cuttable.link.restore()
        await until_logged(b_node, "cannot read the stored blocked rooms")
        assert "WRONGTYPE" in b_node.log()
        assert await refused(b_node.url, room)
        await asyncio.sleep(1.0)
        assert await refused(b_node.url, room)
        redis.delete(BLOCKLIST_KEY)
        await until_accepted(b_node.url, room, timeout=10)  # read again every 5 s
        assert "the stored blocked rooms could be read again" in b_node.log()
    finally:
        redis.close()


async def test_a_block_made_on_a_node_while_its_link_is_down_survives_the_relink(
        cuttable, redis_server, room):
    """A project blocked through node B while B's link is cut stays blocked on B when the
    link is back (the block B stored is still on its way to Redis when B re-reads), and
    then is stored in Redis."""
    b_node = cuttable.node_b()
    cuttable.link.cut()
    await until_health(b_node, "cluster link to Redis down")
    reply = call(b_node.port, "PUT", f"/api/v1/blocked-projects/{room}")
    assert reply.status == 200 and "Redis down" in reply.json["nodes"]["note"], reply
    cuttable.link.restore()
    await until_health_clear(b_node, "cluster link to Redis down")
    redis = redis_server.client()
    try:
        deadline = time.monotonic() + 5
        while not redis.hexists(BLOCKLIST_KEY, room):
            assert time.monotonic() < deadline, "the block never reached Redis"
            await asyncio.sleep(0.05)
    finally:
        redis.close()
    await asyncio.sleep(SETTLE)
    assert await refused(b_node.url, room)
    assert "unblocked scratch room" not in b_node.log()


async def test_blocks_changed_through_a_cut_off_node_reach_the_others_when_it_is_back(
        cuttable, room):
    """A project unblocked and another blocked through node B while B's link is cut are
    unblocked and blocked on node A too once B's link is back."""
    a_node, b_node = cuttable.a, cuttable.node_b()
    other = f"{room}-later"
    assert call(a_node.port, "PUT", f"/api/v1/blocked-projects/{room}").status == 200
    assert await refused(b_node.url, room)
    cuttable.link.cut()
    await until_health(b_node, "cluster link to Redis down")
    assert call(b_node.port, "DELETE", f"/api/v1/blocked-projects/{room}").status == 200
    assert call(b_node.port, "PUT", f"/api/v1/blocked-projects/{other}").status == 200
    assert await refused(a_node.url, room) and not await refused(a_node.url, other)
    cuttable.link.restore()
    await until_accepted(a_node.url, room)
    assert await refused(a_node.url, other)
    assert f"blocked scratch room {other}: stored as blocked" in a_node.log()
