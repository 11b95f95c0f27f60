"""Rooms on their own (server.rooms): values in order, versions, limits, loading and eviction.

Members are fakes and the codec is no protocol's (`key=value` lines), so these tests show the
core keeps rooms without knowing any wire format.
"""

from __future__ import annotations

import asyncio

from server.rooms import BlockOrigin, RoomLimits
from tests.server.fakes import FakeMember, FakeStore, make_registry

FLUSH = 0.05


async def test_join_sends_the_dump_before_registering_the_member():
    """A joining member gets every variable in one frame, before it can receive batches."""
    registry = make_registry()
    room = registry.open("R")
    room.set("a", 1, None)
    room.set("b", 2, None)
    member = FakeMember()
    registered_at_dump = []
    send_frame = member.send_frame

    def recording_send_frame(frame: bytes) -> None:
        registered_at_dump.append(member in room.members)
        send_frame(frame)

    member.send_frame = recording_send_frame
    assert room.join(member)
    assert registered_at_dump == [False]
    assert member.frames() == ["a=1\nb=2"]
    assert member in room.members


async def test_joining_an_empty_room_sends_nothing():
    """A room with no variables sends a joining member nothing."""
    registry = make_registry()
    member = FakeMember()
    assert registry.open("R").join(member)
    assert member.frames() == []


async def test_update_pending_at_join_follows_the_dump():
    """A write pending when a member joins reaches it after the dump, never before."""
    registry = make_registry()
    room = registry.open("R")
    writer = FakeMember()
    room.join(FakeMember())
    room.join(writer)
    room.set("x", 1, writer)
    late = FakeMember()
    room.join(late)
    await asyncio.sleep(FLUSH)
    assert late.frames() == ["x=1", "x=1"]


async def test_version_counts_accepted_changes():
    """Every set, delete and rename bumps the room's version; refused ones do not."""
    registry = make_registry(limits=RoomLimits(max_variables=2))
    room = registry.open("R")
    assert room.version == 0
    room.set("a", 1, None)
    room.set("a", 2, None)
    room.set("b", 1, None)
    assert room.version == 3
    assert not room.set("c", 1, None)
    assert not room.delete("missing")
    assert not room.rename("a", "b")
    assert room.version == 3
    assert room.rename("a", "z")
    assert room.delete("b")
    assert room.version == 5


async def test_values_keep_insertion_order_and_positions():
    """Variables keep the order they were created in, with increasing positions."""
    registry = make_registry()
    room = registry.open("R")
    for key in ("c", "a", "b"):
        room.set(key, 0, None)
    room.set("a", 9, None)
    assert list(room.values) == ["c", "a", "b"]
    assert room.positions == {"c": 0, "a": 1, "b": 2}
    assert room.updates["a"] == "a=9"


async def test_max_variables_refuses_new_names_only():
    """At max_variables a new name is refused while existing variables still change."""
    registry = make_registry(limits=RoomLimits(max_variables=2))
    room = registry.open("R")
    assert room.set("a", 1, None) and room.set("b", 1, None)
    assert not room.set("c", 1, None)
    assert "c" not in room.values
    assert room.set("a", 5, None)
    assert room.values == {"a": 5, "b": 1}


async def test_max_clients_refuses_joins_until_one_leaves():
    """A full room refuses a join; after a member leaves the next one fits."""
    registry = make_registry(limits=RoomLimits(max_clients=2))
    room = registry.open("R")
    first, second, third = FakeMember(), FakeMember(), FakeMember()
    assert room.join(first) and room.join(second)
    assert not room.join(third)
    assert third not in room.members
    room.leave(first)
    assert room.join(third)


async def test_leave_clears_the_members_backlog_and_starts_idle_clock():
    """Leaving forgets the member's backlog; the last one out puts the room on the idle list."""
    registry = make_registry()
    room = registry.open("R")
    member = FakeMember()
    room.join(member)
    assert room not in registry.idle
    member.backlog, member.catch_up = {"x": None}, object()
    room.leave(member)
    assert member.backlog is None and member.catch_up is None
    assert room in registry.idle
    room.leave(member)  # a second leave is harmless
    assert not room.members


async def test_delete_updates_positions_and_persistence():
    """A deleted variable is gone from values, updates and positions, and the store deletes it."""
    store = FakeStore()
    registry = make_registry(store=store)
    room = registry.open("R")
    room.set("a", 1, None)
    room.set("b", 2, None)
    registry.persist()
    assert room.delete("a")
    assert "a" not in room.values and "a" not in room.updates and "a" not in room.positions
    registry.persist()
    assert store.saved[-1] == [("test", "R", [], ["a"])]


async def test_rename_keeps_value_and_position_and_persists_both_keys():
    """A rename keeps the value in its place; the store gets the new key and drops the old."""
    store = FakeStore()
    registry = make_registry(store=store)
    room = registry.open("R")
    room.set("a", 1, None)
    room.set("b", 2, None)
    registry.persist()
    assert room.rename("a", "z")
    assert list(room.values.items()) == [("z", 1), ("b", 2)]
    assert list(room.updates.values()) == ["z=1", "b=2"]
    assert room.positions == {"z": 0, "b": 1}
    registry.persist()
    assert store.saved[-1] == [("test", "R", [("z", 0, 1)], ["a"])]


async def test_delete_and_rename_are_not_broadcast():
    """Deleting or renaming a pending variable drops it from the next batch."""
    registry = make_registry()
    room = registry.open("R")
    author, other = FakeMember(), FakeMember()
    room.join(author)
    room.join(other)
    room.set("a", 1, author)
    room.set("b", 2, author)
    room.set("c", 3, author)
    room.delete("a")
    room.rename("b", "z")
    await asyncio.sleep(FLUSH)
    assert other.frames() == ["c=3"]


async def test_load_restores_stored_order_and_next_position():
    """A room read from the store keeps the stored order and appends after the last position."""
    store = FakeStore({"R": [("b", 5, 2), ("a", 1, 1)]})
    registry = make_registry(store=store)
    room = registry.open("R")
    assert list(room.values) == ["a", "b"]
    assert room.updates == {"a": "a=1", "b": "b=2"}
    room.set("c", 3, None)
    assert room.positions["c"] == 6


async def test_write_observers_see_every_stored_write():
    """Write observers are called with (room, key, value, author) after each stored write."""
    registry = make_registry()
    seen = []
    registry.write_observers.append(
        lambda room, key, value, author: seen.append((room.id, key, value, author)))
    room = registry.open("R")
    member = FakeMember()
    room.set("a", 1, None)
    room.set("a", 2, member)
    assert seen == [("R", "a", 1, None), ("R", "a", 2, member)]


async def test_max_rooms_refuses_new_rooms_but_not_existing_ones():
    """At max_rooms a new room cannot open; existing rooms still can."""
    registry = make_registry(limits=RoomLimits(max_rooms=1))
    room = registry.opening("R")
    assert room is registry.get("R")
    assert registry.opening("S") is None
    assert registry.open("S") is None
    assert registry.opening("R") is room


async def test_opening_a_blocking_store_returns_one_shared_future():
    """With a store that blocks, joins share one future that resolves to the loaded room."""
    store = FakeStore({"R": [("a", 0, 1)]})
    store.loads_block = True
    registry = make_registry(store=store)
    first = registry.opening("R")
    assert isinstance(first, asyncio.Future)
    assert registry.opening("R") is first
    room = await first
    assert room is registry.get("R") and room.values == {"a": 1}
    registry.close()


async def test_block_closes_members_and_unblock_allows_again():
    """Blocking a room closes its members with the given code; unblock reports if it was."""
    registry = make_registry()
    room = registry.open("R")
    members = [FakeMember(), FakeMember()]
    for member in members:
        room.join(member)
    assert registry.block("R", 4004) == 2
    assert [member.close_code for member in members] == [4004, 4004]
    assert not room.members
    assert "R" in registry.blocked
    assert registry.block("S", 4004) == 0
    assert registry.unblock("R") and not registry.unblock("R")


async def test_a_stored_block_stays_stored_when_blocked_again_locally():
    """A block that came from the store keeps that origin when the room is blocked again
    without it (so a re-read of the store can still lift it); a local block becomes stored
    when the store has it too."""
    registry = make_registry()
    registry.block("R", 4004, BlockOrigin.STORED)
    registry.block("R", 4004)
    registry.block("S", 4004)
    registry.block("S", 4004, BlockOrigin.STORED)
    assert registry.blocked == {"R": BlockOrigin.STORED, "S": BlockOrigin.STORED}
    changes = registry.block_changes
    registry.unblock("R")
    assert registry.block_changes == changes + 1 and "R" not in registry.blocked


async def test_evict_closes_members_with_the_full_room_code_and_keeps_the_rest():
    """Members a cluster counted past max_clients are closed with the namespace's room-full
    code and leave; the others stay."""
    registry = make_registry(limits=RoomLimits(full_close_code=4000))
    room = registry.open("R")
    kept, late = FakeMember(), FakeMember()
    room.join(kept)
    room.join(late)
    registry.evict(room, [late])
    assert (kept.close_code, late.close_code) == (None, 4000)
    assert list(room.members) == [kept]


# Eviction


def used(registry, room_id: str) -> None:
    """Join, write and leave a room, leaving it idle with one unsaved change."""
    room = registry.open(room_id)
    member = FakeMember()
    room.join(member)
    room.set("x", 1, member)
    room.leave(member)


async def test_only_stored_rooms_are_evicted_past_max_idle_rooms():
    """Past max_idle_rooms, an empty room leaves memory only once its changes are committed."""
    store = FakeStore()
    registry = make_registry(store=store, limits=RoomLimits(max_idle_rooms=1))
    used(registry, "A")
    used(registry, "B")
    assert set(registry.rooms) == {"A", "B"}  # A has unsaved changes
    registry.persist()
    assert registry.sweep_idle(registry.loop.time(), store.committed) == 0  # not committed
    store.commit()
    assert registry.sweep_idle(registry.loop.time(), store.committed) == 1
    assert set(registry.rooms) == {"B"}


async def test_evicted_room_is_read_back_from_the_store():
    """A room dropped from memory reads its values back when reopened."""
    registry = make_registry(limits=RoomLimits(max_idle_rooms=0))
    room = registry.open("A")
    room.set("x", 7, None)
    registry.persist()  # the memory store commits at once
    registry.sweep_idle(registry.loop.time(), registry.store.committed)
    assert registry.get("A") is None
    assert registry.open("A").values == {"x": 7}


async def test_idle_timeout_drops_old_empty_rooms():
    """Empty rooms older than idle_timeout are dropped by the sweep; younger ones stay."""
    registry = make_registry(limits=RoomLimits(idle_timeout=10.0))
    old, young = registry.open("old"), registry.open("young")
    now = registry.loop.time()
    old.empty_since = now - 20
    young.empty_since = now - 1
    registry.idle = {old: None, young: None}
    assert registry.sweep_idle(now, registry.store.committed) == 1
    assert set(registry.rooms) == {"young"}


async def test_rooms_with_members_are_never_evicted():
    """A room with members is not idle, so no sweep drops it."""
    registry = make_registry(limits=RoomLimits(idle_timeout=0.0, max_idle_rooms=0))
    room = registry.open("R")
    room.join(FakeMember())
    assert registry.sweep_idle(registry.loop.time() + 100, registry.store.committed) == 0
    assert registry.get("R") is room


async def test_eviction_cancels_the_pending_flush():
    """A dropped room's pending flush is cancelled, so nothing is sent for it."""
    registry = make_registry(limits=RoomLimits(max_idle_rooms=1))
    room = registry.open("R0")
    room.set("x", 1, None)
    assert room.outbound.flush_handle is not None
    registry.persist()  # the memory store commits at once
    registry.open("R1")  # one empty room too many: the stored R0 goes
    assert registry.get("R0") is None
    assert room.outbound.flush_handle is None


async def test_a_change_applied_from_another_node_reaches_members_but_not_observers():
    """Room.apply stores a value another node accepted and delivers it to every member here,
    without running write observers (they ran on the node that accepted it)."""
    registry = make_registry()
    observed = []
    registry.write_observers.append(lambda room, key, value, author: observed.append(key))
    room = registry.open("R")
    member = FakeMember()
    room.join(member)
    room.apply("x", 5)
    await asyncio.sleep(FLUSH)
    assert member.frames() == ["x=5"]
    assert room.values == {"x": 5} and observed == []


async def test_a_quiet_apply_and_a_discard_are_not_broadcast():
    """A rename's new key (quiet) and a variable deleted elsewhere change the room silently."""
    registry = make_registry()
    room = registry.open("R")
    member = FakeMember()
    room.join(member)
    room.apply("renamed", 1, quiet=True)
    room.apply("gone", 2, quiet=True)
    room.discard("gone")
    room.discard("never there")
    await asyncio.sleep(FLUSH)
    assert member.frames() == []
    late = FakeMember()
    room.join(late)
    assert late.frames() == ["renamed=1"]


async def test_members_on_other_nodes_count_against_the_client_limit():
    """remote_members (kept by a cluster backplane) fills the room like local members do."""
    registry = make_registry(limits=RoomLimits(max_clients=2))
    room = registry.open("R")
    room.remote_members = 1
    assert room.join(FakeMember())
    assert not room.join(FakeMember())
    room.remote_members = 0
    assert room.join(FakeMember())
