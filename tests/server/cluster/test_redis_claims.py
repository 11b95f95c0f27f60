"""Names unique across the nodes (server/cluster/redis_claims.py), as CL4 clients with
unique_usernames see them: two Stratus nodes on one real redis-server."""

from __future__ import annotations

import asyncio
import signal

from websockets.exceptions import ConnectionClosed

from tests.conformance.cl4_client import Cl4, close_all, identified
from tests.protocols.cl4.test_cluster import setid_outcome

UNIQUE = {"cl4": {"unique_usernames": True}}
CONFLICT = "E:112 | ID conflict"
OK_CODE = "I:100 | OK"


async def test_names_of_a_killed_node_expire_with_it(redis_server, make_redis_node):
    """Names held on a node killed with SIGKILL are refused only until it counts as dead
    (node_timeout); then they can be taken on the other node, and Redis forgets them."""
    a_node = make_redis_node(redis_server, node_timeout=1.0, **UNIQUE)
    b_node = make_redis_node(redis_server, node_timeout=1.0, **UNIQUE)
    bob, ben = await identified(b_node.url, "bob", "ben")
    (other,) = await identified(a_node.url, "x", named=False)
    await asyncio.sleep(0.3)
    assert await setid_outcome(other, "bob") == CONFLICT
    b_node.proc.send_signal(signal.SIGKILL)
    b_node.proc.wait()
    await asyncio.sleep(2.5)
    assert await setid_outcome(other, "bob") == OK_CODE
    assert set(redis_server.client().hgetall("stratus:u:cl4")) == {b"bob"}
    await close_all(other, bob, ben)


async def test_a_node_restarted_under_its_id_holds_no_old_names(redis_server, make_redis_node):
    """A node with a fixed node_id killed and started again at once does not keep the names
    its earlier process held (they would otherwise look alive)."""
    first = make_redis_node(redis_server, cluster={"node_id": "fixed"}, **UNIQUE)
    (sam,) = await identified(first.url, "sam")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    restarted = make_redis_node(redis_server, cluster={"node_id": "fixed"}, **UNIQUE)
    (again,) = await identified(restarted.url, "x", named=False)
    assert await setid_outcome(again, "sam") == OK_CODE
    await close_all(sam, again)


async def closed_after_conflict(client: Cl4, timeout: float) -> bool:
    """True if the server sends E:112 and then closes with 1000 "Username conflict"."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await client.recv(timeout + 1)  # the block's timeout comes first
                if message.get("cmd") == "statuscode":
                    assert message["code"] == CONFLICT and "listener" not in message
    except TimeoutError:
        return False
    except ConnectionClosed as exc:
        assert (exc.rcvd.code, exc.rcvd.reason) == (1000, "Username conflict")
        return True


async def test_a_name_given_twice_during_an_outage_stays_with_one_client(redis_server,
                                                                        make_redis_node):
    """With Redis down, each node names its own client alike (nobody waits on the broken
    link); once Redis is back, the claim that reaches it first keeps the name and the other
    client gets E:112 and is closed, so it reconnects and picks another name."""
    a_node = make_redis_node(redis_server, **UNIQUE)
    b_node = make_redis_node(redis_server, **UNIQUE)
    (a,), (b,) = await asyncio.gather(identified(a_node.url, "a", named=False),
                                      identified(b_node.url, "b", named=False))
    redis_server.stop()
    await asyncio.sleep(0.5)
    assert await setid_outcome(a, "sam") == OK_CODE
    assert await setid_outcome(b, "sam") == OK_CODE
    redis_server.start()
    closed = await asyncio.gather(closed_after_conflict(a, 5.0), closed_after_conflict(b, 5.0))
    assert sorted(closed) == [False, True]
    assert "is held by another node's client" in a_node.log() + b_node.log()
    (late,) = await identified(a_node.url, "late", named=False)
    assert await setid_outcome(late, "sam") == CONFLICT
    await close_all(a, b, late)
