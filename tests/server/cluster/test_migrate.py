"""`python -m server migrate-store --to redis://...` (server/cluster/migrate.py): a single
node's SQLite store copied into Redis, then served by a Redis-backed node."""

from __future__ import annotations

import subprocess
import sys

from tests.conformance.helpers import close_all, joined, latest_values, recv, set_line, set_text
from tests.conftest import ROOT
from tests.server.cluster.test_redis_rooms import logs_of


def migrate(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", "migrate-store", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def fill_store(make_server, room: str):
    """A stopped single-node server whose SQLite store holds two variables of `room`."""
    node = make_server()
    a = await joined(node.url, room, "alice")
    b = await joined(node.url, room, "bob")
    await a.send(set_text("☁ score", 12))
    await a.send(set_text("☁ name", "345"))
    assert await recv(b) == "\n".join([set_line("☁ score", 12), set_line("☁ name", "345")])
    await close_all(a, b)
    assert node.stop() == 0  # writes the store
    return node


async def test_migrated_rooms_are_served_by_a_redis_node(make_server, redis_server,
                                                         make_redis_node, room):
    """After migrate-store, a client of a Redis-backed node gets the stored values."""
    node = await fill_store(make_server, room)
    result = migrate("--to", redis_server.url, "--config", str(node.config_path))
    assert result.returncode == 0, result.stderr
    assert "copied 2 variables in 1 rooms" in result.stdout
    served = make_redis_node(redis_server)
    client = await joined(served.url, room, "carol")
    dump = str(await recv(client))
    assert latest_values(dump.split("\n")) == {"☁ score": 12, "☁ name": "345"}
    await close_all(client)


async def test_rooms_already_in_redis_are_kept_unless_replace(make_server, redis_server,
                                                              make_redis_node, room):
    """A second run skips rooms Redis already has (and says so); --replace overwrites them."""
    node = await fill_store(make_server, room)
    assert migrate("--to", redis_server.url, "--config", str(node.config_path)).returncode == 0
    redis_server.client().delete(f"stratus:v:scratch:{room}")
    redis_server.client().hset(f"stratus:v:scratch:{room}", '"☁ score"', "9 0 99")
    again = migrate("--to", redis_server.url, "--config", str(node.config_path))
    assert again.returncode == 0
    assert "skipped 1 rooms" in again.stdout and f"scratch/{room}" in again.stdout
    assert redis_server.client().hget(f"stratus:v:scratch:{room}", '"☁ score"') == b"9 0 99"
    replaced = migrate("--to", redis_server.url, "--config", str(node.config_path), "--replace")
    assert "copied 2 variables in 1 rooms" in replaced.stdout
    assert redis_server.client().hget(f"stratus:v:scratch:{room}", '"☁ score"') == b"1 0 12.0"


async def test_a_running_server_or_unreachable_redis_is_refused(make_server, tmp_path, room):
    """migrate-store refuses while a server uses the store, and names an unreachable Redis."""
    node = await fill_store(make_server, room)
    node.start()
    busy = migrate("--to", "redis://127.0.0.1:1/0", "--config", str(node.config_path))
    assert busy.returncode == 1 and "in use by another Stratus server" in busy.stderr
    node.stop()
    unreachable = migrate("--to", "redis://127.0.0.1:1/0", "--config", str(node.config_path))
    assert unreachable.returncode == 1
    assert "cannot write to Redis at redis://127.0.0.1:1/0" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr


async def test_history_moves_with_the_rooms(make_server, redis_server, make_redis_node, room):
    """With [history] on, the SQLite store's log moves too: a Redis node serves it, newest
    first, and logs new writes above it."""
    node = make_server(history={"enabled": True})
    a = await joined(node.url, room, "alice")
    await a.send(set_text("☁ score", 1))
    await a.send(set_text("☁ score", 2))
    await close_all(a)
    assert node.stop() == 0
    result = migrate("--to", redis_server.url, "--config", str(node.config_path))
    assert result.returncode == 0, result.stderr
    assert "copied 1 variables in 1 rooms" in result.stdout
    assert "with 2 history entries" in result.stdout
    served = make_redis_node(redis_server, history={"enabled": True})
    b = await joined(served.url, room, "bob")
    await recv(b)  # the dump
    await b.send(set_text("☁ score", 3))
    entries = await logs_of(served, room, 3)
    await close_all(b)
    assert entries == [("bob", "☁ score", "3"), ("alice", "☁ score", "2"),
                       ("alice", "☁ score", "1")]
