"""Persistence on its own (server.persistence.Persister): batches, deletes, history entries
and store tickets."""

from __future__ import annotations

from server.persistence import Persister
from server.store import HistoryEntry
from tests.server.fakes import FakeStore


class FakeRoom:
    """What the persister reads of a room: id, values and positions (hashed by identity)."""

    def __init__(self, room_id: str, values: dict) -> None:
        self.id = room_id
        self.values = dict(values)
        self.positions = {key: index for index, key in enumerate(values)}


def fake_room(room_id: str = "R", **values) -> FakeRoom:
    return FakeRoom(room_id, values)


def test_changes_go_to_the_store_in_one_batch():
    """persist hands every room's changed keys to the store in one save, newest values."""
    store = FakeStore()
    persister = Persister("ns", store)
    first, second = fake_room("A", x=1, y=2), fake_room("B", z=3)
    persister.changed(first, "x")
    persister.changed(second, "z")
    persister.changed(first, "y")
    first.values["x"] = 10
    assert persister.pending
    persister.persist()
    assert store.saved == [[("ns", "A", [("x", 0, 10), ("y", 1, 2)], []),
                            ("ns", "B", [("z", 0, 3)], [])]]
    assert not persister.pending


def test_nothing_to_persist_saves_nothing():
    """persist without changes does not call the store."""
    store = FakeStore()
    Persister("ns", store).persist()
    assert store.saved == []


def test_removed_keys_are_deleted_and_not_upserted():
    """A key changed then removed is deleted in the store, not written."""
    store = FakeStore()
    persister = Persister("ns", store)
    room = fake_room(x=1, y=2)
    persister.changed(room, "x")
    persister.changed(room, "y")
    del room.values["x"]
    persister.removed(room, "x")
    persister.persist()
    assert store.saved == [[("ns", "R", [("y", 1, 2)], ["x"])]]


def test_a_removed_key_written_again_is_not_deleted():
    """A key removed and then set again in the same batch is written, not deleted."""
    store = FakeStore()
    persister = Persister("ns", store)
    room = fake_room(x=1)
    persister.removed(room, "x")
    persister.changed(room, "x")
    persister.persist()
    assert store.saved == [[("ns", "R", [("x", 0, 1)], [])]]


def test_is_stored_waits_for_the_rooms_ticket():
    """A room counts as stored only once the ticket of its last batch is committed."""
    store = FakeStore()
    persister = Persister("ns", store)
    room, other = fake_room("A", x=1), fake_room("B", y=1)
    assert persister.is_stored(room, store.committed)  # never changed
    persister.changed(room, "x")
    assert not persister.is_stored(room, store.committed)  # not handed over yet
    persister.persist()
    assert not persister.is_stored(room, store.committed)  # handed over, not committed
    store.commit()
    assert persister.is_stored(room, store.committed)
    persister.changed(other, "y")
    persister.persist()
    assert persister.is_stored(room, 1) and not persister.is_stored(other, 1)
    assert persister.is_stored(other, 2)


def test_forget_drops_the_rooms_ticket():
    """A forgotten room no longer waits on its old ticket."""
    store = FakeStore()
    persister = Persister("ns", store)
    room = fake_room(x=1)
    persister.changed(room, "x")
    persister.persist()
    persister.forget(room)
    assert persister.is_stored(room, 0)


def entry(seq: int, value: str = "1") -> HistoryEntry:
    return HistoryEntry(seq, 1_700_000_000_000 + seq, "alice", "set", "x", value)


def test_history_goes_to_the_store_with_the_batch_newest_keep_per_room():
    """Recorded entries are handed over at the next persist, at most history_keep per room."""
    store = FakeStore()
    persister = Persister("ns", store, history_keep=2)
    room = fake_room(x=1)
    for seq in (1, 2, 3):
        persister.changed(room, "x")
        persister.recorded(room, entry(seq))
    assert persister.unsaved_history(room) == [entry(2), entry(3)]
    persister.persist()
    assert store.appended == [([("ns", "R", [entry(2), entry(3)])], 2)]
    assert persister.unsaved_history(room) == []
    assert not persister.pending


def test_is_stored_waits_for_history_entries():
    """A room whose history entries are not committed yet may not leave memory."""
    store = FakeStore()
    persister = Persister("ns", store, history_keep=5)
    room = fake_room(x=1)
    persister.recorded(room, entry(1))
    assert persister.pending and not persister.is_stored(room, store.committed)
    persister.persist()
    assert not persister.is_stored(room, store.committed)
    store.commit()
    assert persister.is_stored(room, store.committed)
