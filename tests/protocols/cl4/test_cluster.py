"""CL4 across the nodes of a Redis cluster (protocols/cl4/cluster.py), over real processes:
two Stratus nodes on one real redis-server, each client on the node named."""

from __future__ import annotations

import asyncio
import signal

from tests.conformance.cl4_client import OBJ, OK, Cl4, close_all, drain, identified, status

SETTLE = 0.3  # long enough for a presence change to reach the other node


async def on_nodes(*placed: tuple[object, str]) -> list[Cl4]:
    """Named, drained clients, each on the node it is paired with, identified in order."""
    clients = []
    for node, name in placed:
        (client,) = await identified(node.url, name)
        await asyncio.sleep(SETTLE)
        clients.append(client)
    await drain(*clients)
    return clients


async def test_ulist_set_lists_clients_of_every_node(redis_server, make_redis_node):
    """A client naming itself on node B gets a user list with the client of node A."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    (alice,) = await on_nodes((a_node, "alice"))
    (bob,) = await identified(b_node.url, "bob", named=False)
    await bob.send({"cmd": "setid", "val": "bob", "listener": "s"})
    burst = await bob.recv_until(lambda m: m.get("cmd") == "statuscode")
    names = {user.get("username") for m in burst if m.get("cmd") == "ulist" and m["mode"] == "set"
             for user in m["val"]}
    assert {"alice", "bob"} <= names
    await alice.expect({"cmd": "ulist", "mode": "add", "val": OBJ("bob"), "rooms": "default"})
    await close_all(alice, bob)


async def test_gmsg_pmsg_and_direct_cross_nodes(redis_server, make_redis_node):
    """gmsg reaches members of both nodes; pmsg and direct reach a user on the other node."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    alice, bob = await on_nodes((a_node, "alice"), (b_node, "bob"))
    await alice.send({"cmd": "gmsg", "val": "hi"})
    for client in (alice, bob):
        await client.expect({"cmd": "gmsg", "val": "hi", "rooms": "default"})
    await bob.send({"cmd": "pmsg", "id": "alice", "val": "psst", "listener": "p"})
    await alice.expect({"cmd": "pmsg", "val": "psst", "origin": OBJ("bob"), "rooms": "default"})
    await bob.expect(OK("p"))
    await alice.send({"cmd": "direct", "id": bob.user["uuid"], "val": {"n": 1}})
    await bob.expect({"cmd": "direct", "val": {"n": 1}, "origin": OBJ("alice")})
    await close_all(alice, bob)


async def test_linked_rooms_span_nodes(redis_server, make_redis_node):
    """Clients that link the same room on different nodes share its gvars and user list."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    alice, bob = await on_nodes((a_node, "alice"), (b_node, "bob"))
    await alice.send({"cmd": "link", "val": ["lobby"]})
    await alice.recv_until(lambda m: m.get("cmd") == "statuscode")
    await asyncio.sleep(SETTLE)
    await drain(alice, bob)
    await bob.send({"cmd": "link", "val": ["lobby"]})
    burst = await bob.recv_until(lambda m: m.get("cmd") == "statuscode")
    lobby = [m for m in burst if m.get("cmd") == "ulist" and m.get("rooms") == "lobby"]
    assert {user["username"] for user in lobby[0]["val"]} == {"alice", "bob"}
    await alice.expect({"cmd": "ulist", "mode": "add", "val": OBJ("bob"), "rooms": "lobby"})
    await bob.send({"cmd": "gvar", "name": "score", "val": 3, "rooms": "lobby"})
    await alice.expect({"cmd": "gvar", "name": "score", "val": 3, "rooms": "lobby"})
    await close_all(alice, bob)


async def test_unique_usernames_hold_across_nodes(redis_server, make_redis_node):
    """With unique_usernames, a name taken on node A is refused on node B with E:112."""
    settings = {"cl4": {"unique_usernames": True}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    (alice,) = await on_nodes((a_node, "alice"))
    (other,) = await identified(b_node.url, "x", named=False)
    await other.send({"cmd": "setid", "val": "alice", "listener": "s"})
    await other.expect(status("E:112 | ID conflict", "s",
                              details="This username is already in use."))
    await close_all(alice, other)


async def setid_outcome(client: Cl4, name: str) -> str:
    """Send setid and return the code of its answer."""
    await client.send({"cmd": "setid", "val": name, "listener": "s"})
    burst = await client.recv_until(lambda m: m.get("cmd") == "statuscode")
    return burst[-1]["code"]


async def test_one_name_claimed_on_two_nodes_at_once_goes_to_one(redis_server, make_redis_node):
    """Two clients on two nodes setid the same name at the same moment (many times over):
    exactly one gets OK and the other E:112; once the winner leaves, the loser takes it."""
    settings = {"cl4": {"unique_usernames": True}}
    a_node = make_redis_node(redis_server, **settings)
    b_node = make_redis_node(redis_server, **settings)
    for attempt in range(15):
        name = f"racer{attempt}"
        (a,), (b,) = await asyncio.gather(identified(a_node.url, "a", named=False),
                                          identified(b_node.url, "b", named=False))
        codes = await asyncio.gather(setid_outcome(a, name), setid_outcome(b, name))
        assert sorted(codes) == ["E:112 | ID conflict", "I:100 | OK"], codes
        winner, loser = (a, b) if codes[0] == "I:100 | OK" else (b, a)
        await winner.close()
        await asyncio.sleep(SETTLE)
        assert await setid_outcome(loser, name) == "I:100 | OK"
        await loser.close()


async def test_messages_after_a_clustered_setid_keep_their_order(redis_server, make_redis_node):
    """setid followed at once by link and gmsg: the answers come in the order sent, the gmsg
    reaches the linked room, and the client is named in it."""
    settings = {"cl4": {"unique_usernames": True}}
    a_node = make_redis_node(redis_server, **settings)
    (client,) = await identified(a_node.url, "x", named=False)
    for message in ({"cmd": "setid", "val": "sam", "listener": "s"},
                    {"cmd": "link", "val": ["lobby"], "listener": "l"},
                    {"cmd": "gmsg", "val": "hi", "listener": "g"}):
        await client.send(message)
    got = await client.recv_until(lambda m: m.get("cmd") == "gmsg")
    assert [m["listener"] for m in got if m.get("cmd") == "statuscode"] == ["s", "l"]
    assert got[-1] == {"cmd": "gmsg", "val": "hi", "listener": "g", "rooms": "lobby"}
    lobby = [m["val"] for m in got
             if m.get("cmd") == "ulist" and m["mode"] == "set" and m["rooms"] == "lobby"]
    assert [user["username"] for user in lobby[0]] == ["sam"]
    await close_all(client)


async def test_disconnect_on_one_node_is_announced_on_the_other(redis_server, make_redis_node):
    """A named client leaving node B gets a ulist remove on node A."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    alice, bob = await on_nodes((a_node, "alice"), (b_node, "bob"))
    await bob.close()
    await alice.expect({"cmd": "ulist", "mode": "remove", "val": OBJ("bob"), "rooms": "default"})
    await close_all(alice)


async def test_clients_of_a_killed_node_leave_the_user_lists(redis_server, make_redis_node):
    """A node killed with SIGKILL: within node_timeout its clients get a ulist remove on the
    other node, whose clients keep messaging."""
    a_node = make_redis_node(redis_server, node_timeout=1.0)
    b_node = make_redis_node(redis_server, node_timeout=1.0)
    alice, carol, bob = await on_nodes((a_node, "alice"), (a_node, "carol"), (b_node, "bob"))
    b_node.proc.send_signal(signal.SIGKILL)
    b_node.proc.wait()
    await alice.expect({"cmd": "ulist", "mode": "remove", "val": OBJ("bob"), "rooms": "default"},
                       timeout=5)
    await carol.send({"cmd": "gmsg", "val": "still here"})
    await carol.recv_until(lambda m: m.get("cmd") == "gmsg")
    await alice.recv_until(lambda m: m.get("cmd") == "gmsg")
    await close_all(alice, carol, bob)


async def test_a_room_message_is_one_redis_message_per_node(redis_server, make_redis_node):
    """A gmsg to 12 members of another node costs one Redis publish, not one per member."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    (sender,) = await on_nodes((a_node, "sender"))
    listeners = await identified(b_node.url, *[f"l{i}" for i in range(12)])
    await asyncio.sleep(SETTLE)
    await drain(sender, *listeners)
    client = redis_server.client()

    def publishes() -> int:
        return int(client.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))

    before = publishes()
    await sender.send({"cmd": "gmsg", "val": "all"})
    for listener in listeners:
        await listener.expect({"cmd": "gmsg", "val": "all", "rooms": "default"})
    # Heartbeats publish too (two nodes, one a second each).
    assert publishes() - before <= 5
    await close_all(sender, *listeners)


async def test_user_lists_reconcile_after_an_outage(redis_server, make_redis_node):
    """Who left or came on another node while Redis was down is announced once it is back."""
    a_node, b_node = make_redis_node(redis_server), make_redis_node(redis_server)
    alice, bob = await on_nodes((a_node, "alice"), (b_node, "bob"))
    redis_server.stop()
    await asyncio.sleep(0.5)
    await bob.close()
    (carol,) = await identified(b_node.url, "carol")
    await alice.expect_nothing()
    redis_server.start()
    got = await alice.recv_until(
        lambda m: "carol" in alice.model.usernames() and "bob" not in alice.model.usernames(),
        timeout=10)
    assert {"cmd": "ulist", "mode": "remove", "val": bob.user, "rooms": "default"} in got
    assert {"cmd": "ulist", "mode": "add", "val": carol.user, "rooms": "default"} in got
    assert "carol" in alice.model.usernames() and "bob" not in alice.model.usernames()
    await close_all(alice, carol)

