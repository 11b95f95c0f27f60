"""The change history of a room namespace (server.history.RoomHistory) without sockets."""

from __future__ import annotations

from server.config import StoreSection
from server.history import SERVER_USER, RoomHistory
from server.rooms import NamedWriter
from server.store import open_store
from tests.server.fakes import FakeMember, make_registry

CLOCK = 1_700_000_000.25  # seconds; entries carry it in milliseconds


def with_history(keep: int = 100, **registry_options):
    registry = make_registry(**registry_options)
    RoomHistory(registry, keep, clock=lambda: CLOCK).attach()
    return registry


def member(name: str) -> FakeMember:
    peer = FakeMember(name)
    peer.username = name
    return peer


def summary(entries) -> list[tuple]:
    return [(entry.user, entry.verb, entry.key, entry.value) for entry in entries]


async def test_sets_deletes_and_renames_are_recorded_newest_first_with_their_authors():
    """Each change is one entry naming its author, verb, key and value, newest first."""
    registry = with_history()
    room = registry.open("R")
    alice, bob = member("alice"), member("bob")
    room.set("a", "1", alice)
    room.set("a", "2", bob)
    room.set("b", "7", None)
    room.set("b", "8", NamedWriter("(bridge)"))
    room.rename("a", "c", alice)
    room.delete("b", bob)
    entries = await registry.history.read("R", 100)
    assert summary(entries) == [
        ("bob", "delete", "b", "8"),
        ("alice", "rename", "c", "2"),
        ("(bridge)", "set", "b", "8"),
        (SERVER_USER, "set", "b", "7"),
        ("bob", "set", "a", "2"),
        ("alice", "set", "a", "1"),
    ]
    assert {entry.time for entry in entries} == {1_700_000_000_250}


async def test_limit_offset_and_keep_bound_what_is_read():
    """Reads page through the newest `keep` entries; older ones are gone."""
    registry = with_history(keep=5)
    room = registry.open("R")
    for number in range(8):
        room.set("n", str(number), None)
    read = registry.history.read
    assert [e.value for e in await read("R", 100)] == ["7", "6", "5", "4", "3"]
    assert [e.value for e in await read("R", 2, 1)] == ["6", "5"]
    assert await read("R", 10, 5) == []
    registry.persist()
    room.set("n", "8", None)
    assert [e.value for e in await read("R", 100)] == ["8", "7", "6", "5", "4"]


async def test_entries_read_the_same_before_and_after_they_are_persisted(tmp_path):
    """Unsaved entries and stored ones merge without loss or doubles, on a real SQLite file."""
    store = open_store(StoreSection(backend="sqlite"), tmp_path)
    try:
        registry = with_history(store=store)
        room = registry.open("R")
        room.set("x", "1", member("alice"))
        registry.persist()
        room.set("x", "2", member("bob"))
        before = await registry.history.read("R", 10)
        registry.persist()
        assert await registry.history.read("R", 10) == before
        assert summary(before) == [("bob", "set", "x", "2"), ("alice", "set", "x", "1")]
        registry.close()
    finally:
        store.close()


async def test_reading_a_room_not_in_memory_does_not_load_it(tmp_path):
    """History is read from the store for a room that left memory, and it stays out."""
    store = open_store(StoreSection(backend="sqlite"), tmp_path)
    try:
        registry = with_history(store=store)
        registry.open("R").set("x", "5", member("alice"))
        registry.persist()
        store.wait_committed(store.save([]), 5)
        registry._drop(registry.rooms["R"])
        assert summary(await registry.history.read("R", 10)) == [("alice", "set", "x", "5")]
        assert registry.get("R") is None and not registry.loading
        assert await registry.history.read("never-used", 10) == []
        registry.close()
    finally:
        store.close()


async def test_without_history_writes_record_nothing():
    """A registry without history has no observers and hands the store no entries."""
    registry = make_registry()
    room = registry.open("R")
    room.set("x", "1", member("alice"))
    room.rename("x", "y")
    room.delete("y")
    assert registry.history is None
    assert not (registry.write_observers or registry.delete_observers
                or registry.rename_observers)
    assert registry.persister.unsaved_history(room) == []
