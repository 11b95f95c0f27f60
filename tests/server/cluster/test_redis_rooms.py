"""Scratch rooms on the Redis backend (server/cluster/redis_rooms.py), over real processes:
two Stratus nodes on one real redis-server, clients on different nodes."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.request
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    handshake_text,
    http_get,
    joined,
    latest_values,
    recv,
    recv_until,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import RedisServer, ServerProcess, redis_settings
from tests.server.plugin_fixtures import append_plugins

SETTLE = 0.3  # long enough for a join or a member count to reach the other node


def dump_values(frame: str) -> dict:
    """The variables of a join dump (one frame of `set` lines)."""
    return latest_values(frame.split("\n"))


async def test_write_on_one_node_reaches_a_member_on_the_other(redis_server, make_redis_node,
                                                               room):
    """A set on node A reaches a member on node B, and B's answer reaches A."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "alice")
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    await a.send(set_text("☁ score", 7))
    assert await recv(b) == set_line("☁ score", 7)
    await b.send(set_text("☁ score", 8))
    assert await recv(a) == set_line("☁ score", 8)
    await close_all(a, b)


async def test_join_dump_comes_from_redis(redis_server, make_redis_node, room):
    """A client joining on a node that never had the room gets the values written elsewhere."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "alice")
    await a.send(set_text("☁ one", 1))
    await a.send(set_text("☁ two", "2"))
    await asyncio.sleep(SETTLE)
    b = await joined(b_node.url, room, "bob")
    assert dump_values(await recv(b)) == {"☁ one": 1, "☁ two": "2"}
    await close_all(a, b)


async def test_concurrent_writers_on_two_nodes_converge(redis_server, make_redis_node, room):
    """Writers racing on both nodes leave every member of every node with the same values."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    writers = [await joined(node.url, room, f"w{i}") for i, node in
               enumerate([a_node, b_node, a_node, b_node])]
    watchers = [await joined(node.url, room, f"watch{i}") for i, node in
                enumerate([a_node, b_node])]
    await asyncio.sleep(SETTLE)
    for step in range(60):
        for index, writer in enumerate(writers):
            await writer.send(set_text(f"☁ v{step % 3}", index * 1000 + step))
    await asyncio.sleep(1.0)
    late = [await joined(a_node.url, room, "late-a"), await joined(b_node.url, room, "late-b")]
    dumps = [dump_values(await recv(client)) for client in late]
    assert dumps[0] == dumps[1] and len(dumps[0]) == 3
    await close_all(*writers, *watchers, *late)


async def test_watchers_on_both_nodes_end_on_the_stored_value(redis_server, make_redis_node,
                                                             room):
    """What each node's members saw last is what Redis stored last."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "a")
    b = await joined(b_node.url, room, "b")
    watch_a = await joined(a_node.url, room, "watch-a")
    watch_b = await joined(b_node.url, room, "watch-b")
    await asyncio.sleep(SETTLE)
    for step in range(100):
        await a.send(set_text("☁ x", step))
        await b.send(set_text("☁ x", 1000 + step))
    await asyncio.sleep(1.0)
    seen = []
    for watcher in (watch_a, watch_b):
        lines: list[str] = []
        try:
            async with asyncio.timeout(0.3):
                while True:
                    lines.extend(str(await watcher.recv()).split("\n"))
        except TimeoutError:
            pass
        seen.append(latest_values(lines)["☁ x"])
    stored = redis_server.client().hget(f"stratus:v:scratch:{room}", '"☁ x"')
    assert seen[0] == seen[1]
    assert json.loads(stored.split(b" ", 2)[2]) == seen[0]
    await close_all(a, b, watch_a, watch_b)


async def test_max_clients_per_room_counts_the_whole_cluster(redis_server, make_redis_node,
                                                            room):
    """With max_clients_per_room = 2, one member on each node fills the room for both."""
    settings = {"scratch": {"max_clients_per_room": 2}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    a = await joined(a_node.url, room, "alice")
    await asyncio.sleep(SETTLE)
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    third = await joined(a_node.url, room, "carol")
    await expect_close(third, 4000)
    await b.close()
    await asyncio.sleep(SETTLE)
    again = await joined(a_node.url, room, "dave")
    await a.send(set_text("☁ x", 1))
    assert await recv(again) == set_line("☁ x", 1)
    await close_all(a, again)


async def close_code_within(ws, wait: float) -> int | None:
    """The code the server closes `ws` with within `wait` s (empty reason), else None."""
    try:
        async with asyncio.timeout(wait):
            while True:
                await ws.recv()
    except TimeoutError:
        return None
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.reason == ""
        return exc.rcvd.code


async def test_the_last_place_taken_on_two_nodes_at_once_goes_to_one(redis_server,
                                                                     make_redis_node):
    """Two clients joining a room with one free place on two nodes at the same moment (many
    times over): the room never ends with more than max_clients_per_room members, and the
    other one is closed with 4000, the code of a join refused for a full room."""
    settings = {"scratch": {"max_clients_per_room": 2}}
    nodes = [make_redis_node(redis_server, **settings), make_redis_node(redis_server, **settings)]
    counts = redis_server.client()
    for attempt in range(20):
        room = f"race-{attempt}-{uuid.uuid4().hex[:8]}"
        first = await joined(nodes[attempt % 2].url, room, "first")
        await first.send(set_text("☁ x", attempt))
        await asyncio.sleep(SETTLE)
        racers = [await ws_connect(node.url) for node in nodes]
        await asyncio.gather(*(racer.send(handshake_text(room, f"racer{index}"))
                               for index, racer in enumerate(racers)))
        codes = await asyncio.gather(*(close_code_within(racer, 2 * SETTLE)
                                       for racer in racers))
        assert sorted(codes, key=str) == [4000, None], codes
        await asyncio.sleep(SETTLE)
        members = {node: int(count) for node, count in
                   counts.hgetall(f"stratus:n:scratch:{room}").items()}
        assert sum(members.values()) == 2, members
        await close_all(first, *racers)


async def test_a_room_grown_past_its_limit_during_an_outage_shrinks_back(redis_server,
                                                                        make_redis_node, room):
    """Joins each node admitted from its own view while Redis was down that put the room over
    max_clients_per_room: once Redis is back, one newest member is closed with 4000 and the
    room holds its limit again."""
    settings = {"scratch": {"max_clients_per_room": 2}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    first = await joined(a_node.url, room, "first")
    await asyncio.sleep(SETTLE)
    redis_server.stop()
    await asyncio.sleep(0.5)
    on_a, on_b = await joined(a_node.url, room, "on_a"), await joined(b_node.url, room, "on_b")
    redis_server.start()
    codes = await asyncio.gather(*(close_code_within(ws, 5.0) for ws in (first, on_a, on_b)))
    assert codes[0] is None and sorted(codes[1:], key=str) == [4000, None], codes
    assert "is full across the cluster" in a_node.log() + b_node.log()
    await close_all(first, on_a, on_b)


async def test_max_variables_per_room_counts_the_whole_cluster(redis_server, make_redis_node,
                                                              room):
    """With max_variables_per_room = 2, variables made on two nodes fill the room for both."""
    settings = {"scratch": {"max_variables_per_room": 2}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    a = await joined(a_node.url, room, "alice")
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    await a.send(set_text("☁ one", 1))
    await b.send(set_text("☁ two", 2))
    await asyncio.sleep(SETTLE)
    await a.send(set_text("☁ three", 3))
    await expect_close(a, 4000, messages=1)
    await close_all(b)


async def test_a_killed_node_members_expire_and_others_carry_on(redis_server, make_redis_node,
                                                               room):
    """A node killed with SIGKILL stops counting against the room limit within node_timeout;
    the other node's clients keep working."""
    settings = {"scratch": {"max_clients_per_room": 2}}
    a_node = make_redis_node(redis_server, node_timeout=1.0, **settings)
    b_node = make_redis_node(redis_server, node_timeout=1.0, **settings)
    a = await joined(a_node.url, room, "alice")
    doomed = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    b_node.proc.send_signal(signal.SIGKILL)
    b_node.proc.wait()
    await asyncio.sleep(2.0)
    newcomer = await joined(a_node.url, room, "carol")
    await a.send(set_text("☁ x", 5))
    assert await recv(newcomer) == set_line("☁ x", 5)
    assert "stopped answering" in a_node.log()
    await close_all(a, newcomer, doomed)


async def test_delete_and_rename_reach_the_other_node_quietly(redis_server, make_redis_node,
                                                             room):
    """A delete and a rename on one node change the room on the other without a broadcast."""
    settings = {"scratch": {"allow_delete": True, "allow_rename": True}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    a = await joined(a_node.url, room, "alice")
    await a.send(set_text("☁ keep", 1))
    await a.send(set_text("☁ gone", 2))
    await asyncio.sleep(SETTLE)
    b = await joined(b_node.url, room, "bob")
    assert dump_values(await recv(b)) == {"☁ keep": 1, "☁ gone": 2}
    await a.send(json.dumps({"method": "delete", "name": "☁ gone"}))
    await a.send(json.dumps({"method": "rename", "name": "☁ keep", "new_name": "☁ kept"}))
    await asyncio.sleep(SETTLE)
    late = await joined(b_node.url, room, "carol")
    assert dump_values(await recv(late)) == {"☁ kept": 1}
    await close_all(a, b, late)


def health(node) -> tuple[int, str]:
    with urllib.request.urlopen(node.http_url + "/healthz", timeout=2) as reply:
        return reply.status, reply.read().decode()


async def test_outage_serves_locally_then_resyncs(redis_server, make_redis_node, room):
    """With Redis stopped, each node serves its own clients and /healthz answers 200 with a
    note; once Redis is back, writes made on both nodes meanwhile reach everyone."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "alice")
    a2 = await joined(a_node.url, room, "alice2")
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    redis_server.stop()
    await asyncio.sleep(0.5)
    await a.send(set_text("☁ from_a", 1))
    assert await recv(a2) == set_line("☁ from_a", 1)  # local delivery goes on
    await b.send(set_text("☁ from_b", 2))
    status, text = health(a_node)
    assert status == 200 and "cluster link to Redis down" in text
    redis_server.start()
    got_a = await recv_until(a, lambda lines: "☁ from_b" in latest_values(lines), 10)
    got_b = await recv_until(b, lambda lines: "☁ from_a" in latest_values(lines), 10)
    assert latest_values(got_a)["☁ from_b"] == 2 and latest_values(got_b)["☁ from_a"] == 1
    assert health(a_node) == (200, "ok\n")
    assert a_node.log().count("lost the link to Redis") == 1
    late = await joined(b_node.url, room, "carol")
    assert dump_values(await recv(late)) == {"☁ from_a": 1, "☁ from_b": 2}
    await close_all(a, a2, b, late)


async def test_redis_that_lost_its_data_is_refilled_from_memory(redis_server, make_redis_node,
                                                               room):
    """A Redis restarted empty gets every room back from the nodes' memory."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "alice")
    b = await joined(b_node.url, room, "bob")
    await a.send(set_text("☁ x", 1))
    assert await recv(b) == set_line("☁ x", 1)
    redis_server.stop()
    redis_server.start(fresh=True)
    await asyncio.sleep(1.5)
    assert redis_server.client().hexists(f"stratus:v:scratch:{room}", '"☁ x"')
    await a.send(set_text("☁ y", 2))
    assert await recv(b) == set_line("☁ y", 2)
    await close_all(a, b)


async def test_unreachable_redis_at_start_starts_degraded(tmp_path, make_redis_node, room):
    """Without Redis, a node starts anyway, says so, and serves its own clients."""
    absent = RedisServer(tmp_path / "absent")  # never started: nothing listens on its port
    node = make_redis_node(absent)
    status, text = health(node)
    assert status == 200 and "cluster link to Redis down" in text
    assert "starting degraded" in node.log()
    a = await joined(node.url, room, "alice")
    b = await joined(node.url, room, "bob")
    await a.send(set_text("☁ x", 1))
    assert await recv(b) == set_line("☁ x", 1)
    await close_all(a, b)


async def test_unreachable_redis_at_start_refused_when_required(tmp_path):
    """With require_redis_at_start = true and no Redis, start-up stops with a clear message."""
    absent = RedisServer(tmp_path / "absent")
    settings = redis_settings(absent)
    settings["cluster"]["require_redis_at_start"] = True
    (tmp_path / "node").mkdir()
    node = ServerProcess(tmp_path / "node", settings)
    with pytest.raises(RuntimeError, match="exited early"):
        node.start()
    assert node.proc.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:" in node.log()
    assert "require_redis_at_start = true" in node.log()


async def test_variable_hooks_run_once_on_the_receiving_node(redis_server, tmp_path, room):
    """A plugin that doubles a value runs once, on the node that received the set: members
    of both nodes see it doubled once."""
    nodes = []
    for index in range(2):
        workdir = tmp_path / f"hooked{index}"
        workdir.mkdir()
        node = ServerProcess(workdir, redis_settings(redis_server))
        append_plugins(node.config_path, [{"use": "tests.server.plugin_fixtures:Rules"}])
        nodes.append(node.start())
    try:
        a = await joined(nodes[0].url, room, "alice")
        a2 = await joined(nodes[0].url, room, "alice2")
        b = await joined(nodes[1].url, room, "bob")
        await asyncio.sleep(SETTLE)
        await a.send(set_text("☁ tdouble", 21))
        assert await recv(b) == set_line("☁ tdouble", 42)
        assert await recv(a2) == set_line("☁ tdouble", 42)
        await asyncio.sleep(SETTLE)
        late = await joined(nodes[1].url, room, "carol")
        assert dump_values(await recv(late)) == {"☁ tdouble": 42}
        await close_all(a, a2, b, late)
    finally:
        for node in nodes:
            node.stop()


async def test_lost_publishes_are_recovered(redis_server, make_redis_node, room):
    """A node that sees the room's version jump (publishes it never got) re-reads the room."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "alice")
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    await a.send(set_text("☁ x", 1))
    assert await recv(b) == set_line("☁ x", 1)
    # A write whose publish was lost: stored and versioned in Redis (atomically, as the nodes'
    # script does), never announced.
    redis_server.client().eval(
        "redis.call('HSET', KEYS[1], ARGV[1], redis.call('HINCRBY', KEYS[2], 'version', 1)"
        " .. ' 5 7')", 2, f"stratus:v:scratch:{room}", f"stratus:m:scratch:{room}", '"☁ lost"')
    await a.send(set_text("☁ x", 2))
    got = await recv_until(b, lambda lines: "☁ lost" in latest_values(lines), 5)
    assert latest_values(got) == {"☁ x": 2, "☁ lost": 7}
    assert "missed 1 changes" in b_node.log()
    await close_all(a, b)


async def test_failing_replies_are_logged_and_converge_once_redis_accepts(redis_server,
                                                                         make_redis_node, room):
    """Redis refusing writes (out of memory) is logged, each node keeps serving its clients,
    and the writes reach the other node once Redis accepts them again."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    a = await joined(a_node.url, room, "alice")
    a2 = await joined(a_node.url, room, "alice2")
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    client = redis_server.client()
    client.config_set("maxmemory", "1")
    try:
        await a.send(set_text("☁ x", 1))
        assert await recv(a2) == set_line("☁ x", 1)
        await asyncio.sleep(1.5)
        assert "Redis refused 1 room writes" in a_node.log() and "maxmemory" in a_node.log()
    finally:
        client.config_set("maxmemory", "0")
    got = await recv_until(b, lambda lines: "☁ x" in latest_values(lines), 10)
    assert latest_values(got) == {"☁ x": 1}
    assert "Traceback" not in a_node.log() + b_node.log()
    await close_all(a, a2, b)


async def test_a_node_restarted_under_its_id_leaves_no_phantom_members(redis_server,
                                                                      make_redis_node, room):
    """A node with a fixed node_id, killed and restarted at once, does not keep counting the
    members it had: another node can fill the room."""
    settings = {"scratch": {"max_clients_per_room": 1}, "cluster": {"node_id": "fixed"}}
    first = make_redis_node(redis_server, **settings)
    gone = await joined(first.url, room, "alice")
    await asyncio.sleep(SETTLE)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    make_redis_node(redis_server, **settings)  # the same id, within node_timeout
    other = make_redis_node(redis_server, scratch={"max_clients_per_room": 1})
    b = await joined(other.url, room, "bob")
    await expect_nothing(b)  # admitted: not closed with 4000 for a full room
    c = await joined(other.url, room, "carol")
    await expect_close(c, 4000)  # and bob fills it
    await close_all(gone, b)


async def test_the_first_join_on_a_node_counts_the_other_nodes_members(redis_server,
                                                                      make_redis_node, room):
    """A node that has never had the room refuses a join into a room full on another node."""
    settings = {"scratch": {"max_clients_per_room": 1}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    alice = await joined(a_node.url, room, "alice")
    await asyncio.sleep(SETTLE)
    bob = await joined(b_node.url, room, "bob")
    await expect_close(bob, 4000)
    await close_all(alice)


async def test_a_persisted_block_is_kept_in_redis_for_every_node(redis_server, make_redis_node,
                                                                 room):
    """A project blocked through the admin API on one node is blocked on a node started later
    (the block list lives in Redis, not in a node's data dir)."""
    token = {"admin": {"token": "secret-token-for-tests"}}
    first = make_redis_node(redis_server, **token)
    status, _headers, _body = http_get(
        first.http_url, f"/api/v1/blocked-projects/{room}", method="PUT",
        headers={"Authorization": "Bearer secret-token-for-tests"})
    assert status == 200
    await asyncio.sleep(SETTLE)
    later = make_redis_node(redis_server, **token)
    client = await joined(later.url, room, "alice")
    await expect_close(client, 4004)


# History ([history] enabled) on the Redis backend: one list per room, shared by every node

HISTORY = {"history": {"enabled": True, "keep": 5}}


async def logs_of(node: ServerProcess, room: str, count: int, timeout: float = 5.0) -> list:
    """(user, name, value) of a room's /logs on `node`, once it lists `count` entries."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, _, body = await asyncio.to_thread(http_get, node.http_url,
                                               f"/logs?projectid={room}&limit=100")
        assert status == 200, body
        entries = [(e["user"], e["name"], e["value"]) for e in json.loads(body)]
        if len(entries) >= count or asyncio.get_running_loop().time() > deadline:
            return entries
        await asyncio.sleep(0.05)


async def test_history_of_writes_on_two_nodes_is_one_log_on_both(redis_server, make_redis_node,
                                                                 room):
    """Writes made on two nodes make one history, newest first, served alike by either node,
    trimmed to [history] keep in Redis, and kept when every node restarts."""
    a_node = make_redis_node(redis_server, **HISTORY)
    b_node = make_redis_node(redis_server, **HISTORY)
    a = await joined(a_node.url, room, "alice")
    b = await joined(b_node.url, room, "bob")
    await asyncio.sleep(SETTLE)
    await a.send(set_text("☁ v", "1"))
    assert await recv(b) == set_line("☁ v", "1")
    await b.send(set_text("☁ v", "2"))
    assert await recv(a) == set_line("☁ v", "2")
    await a.send(set_text("☁ v", "3"))
    expected = [("alice", "☁ v", "3"), ("bob", "☁ v", "2"), ("alice", "☁ v", "1")]
    assert await logs_of(a_node, room, 3) == expected
    assert await logs_of(b_node, room, 3) == expected
    for value in range(4, 9):
        await b.send(set_text("☁ v", str(value)))
    newest = [("bob", "☁ v", str(value)) for value in range(8, 3, -1)]
    assert await logs_of(a_node, room, 5) == newest
    await close_all(a, b)
    client = redis_server.client()
    key = f"stratus:h:scratch:{room}".encode()
    try:
        assert client.llen(key) == 5
    finally:
        client.close()
    a_node.restart()
    b_node.restart()
    assert await logs_of(b_node, room, 5) == newest


async def test_history_written_during_an_outage_reaches_redis_afterwards(redis_server,
                                                                        make_redis_node, room):
    """A write accepted while Redis is down is in the node's /logs at once and in every node's
    once Redis is back."""
    a_node = make_redis_node(redis_server, **HISTORY)
    b_node = make_redis_node(redis_server, **HISTORY)
    a = await joined(a_node.url, room, "alice")
    await a.send(set_text("☁ v", "1"))
    assert await logs_of(b_node, room, 1) == [("alice", "☁ v", "1")]
    redis_server.stop()
    await asyncio.sleep(0.5)
    await a.send(set_text("☁ v", "2"))
    assert (await logs_of(a_node, room, 1))[0] == ("alice", "☁ v", "2")
    redis_server.start()
    assert await logs_of(b_node, room, 2, timeout=10) == [("alice", "☁ v", "2"),
                                                         ("alice", "☁ v", "1")]
    await close_all(a)
