"""The SQLite store on real files: write-behind, retries while the disk fails, key encoding,
history entries (and the memory store's) and the start-up checks (damaged, empty, read-only,
full or shared data dirs)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from server.config import StoreSection
from server.store import (
    HistoryEntry,
    MemoryStore,
    SQLiteStore,
    StoreError,
    StoreReadError,
    open_store,
)
from tests.server.disks import fill, free, remount, small_tmpfs

NS = "scratch"
PAGE = 4096


@pytest.fixture
def disk(tmp_path):
    """A 600 KiB tmpfs, unmounted after the test."""
    with small_tmpfs(tmp_path / "disk") as mount:
        yield mount


def open_sqlite(data_dir: Path, **settings) -> SQLiteStore:
    defaults = {"retry_max_interval": 0.1, "shutdown_write_timeout": 1.0}
    store = open_store(StoreSection(**{**defaults, **settings}), data_dir)
    assert isinstance(store, SQLiteStore)
    return store


def stored(data_dir: Path, room: str) -> dict[str, tuple[int, object]]:
    """A room's stored values as {key: (position, value)}, read by a fresh store."""
    store = open_sqlite(data_dir)
    try:
        return {key: (position, value) for key, position, value in store.load(NS, room)}
    finally:
        store.close()


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def write_rooms(data_dir: Path, rooms: int = 300, variables: int = 20) -> None:
    """A store with enough rows to span many pages."""
    store = open_sqlite(data_dir)
    for number in range(rooms):
        upserts = [(f'"☁ v{i}"', i, str(i * 1000)) for i in range(variables)]
        store.save([(NS, f"room{number}", upserts, [])])
    store.close()


# Write-behind


def test_values_survive_close_and_reopen(tmp_path):
    """Saved values, positions and deletions are on disk after close."""
    store = open_sqlite(tmp_path)
    store.save([(NS, "r", [('"a"', 0, "1"), ('"b"', 1, 2.5)], [])])
    store.save([(NS, "r", [('"c"', 2, "3")], ['"a"'])])
    store.close()
    assert stored(tmp_path, "r") == {'"b"': (1, 2.5), '"c"': (2, "3")}


def test_failed_batch_is_kept_and_written_once_space_is_freed(disk, caplog):
    """A full disk keeps changes in memory, reports it once, and writes the newest values later."""
    store = open_sqlite(disk)
    first = store.save([(NS, "r", [('"x"', 0, "1")], [])])
    assert store.wait_committed(first, 5)
    fill(disk)
    store.save([(NS, "r", [('"x"', 0, "2"), ('"y"', 1, "9" * 5000)], [])])
    wait_until(lambda: store.fault is not None)
    last = store.save([(NS, "r", [('"x"', 0, "3")], [])])
    assert "cannot be written" in store.fault and "full" in store.fault
    time.sleep(0.5)  # several retries fail
    assert store.committed < last
    free(disk)
    assert store.wait_committed(last, 10)
    assert store.fault is None
    store.close()
    assert stored(disk, "r") == {'"x"': (0, "3"), '"y"': (1, "9" * 5000)}
    lines = [r.getMessage() for r in caplog.records if r.name == "stratus.store"]
    assert len([line for line in lines if line.startswith("cannot write")]) == 1
    assert len([line for line in lines if "can be written again" in line]) == 1


def test_writes_and_failed_attempts_are_counted(disk):
    """`writes` counts committed transactions and `write_errors` each failed attempt (metrics)."""
    store = open_sqlite(disk)
    assert store.wait_committed(store.save([(NS, "r", [('"x"', 0, "1")], [])]), 5)
    assert (store.writes, store.write_errors) == (1, 0)
    fill(disk)
    last = store.save([(NS, "r", [('"y"', 1, "9" * 5000)], [])])
    wait_until(lambda: store.write_errors >= 2)  # the first attempt and a retry
    assert store.writes == 1
    free(disk)
    assert store.wait_committed(last, 10)
    assert store.writes == 2
    store.close()


def test_pending_changes_keep_one_entry_per_variable(disk):
    """While writes fail, many writes of one variable wait as one value, and a delete wins."""
    store = open_sqlite(disk)
    store.wait_committed(store.save([(NS, "r", [('"gone"', 0, "1")], [])]), 5)
    fill(disk)
    for number in range(2000):
        store.save([(NS, "r", [('"x"', 1, str(number) * 100)], [])])
    store.save([(NS, "r", [], ['"gone"'])])
    wait_until(lambda: store.fault is not None)
    assert "2 values kept in memory" in store.fault
    free(disk)
    store.close()
    assert stored(disk, "r") == {'"x"': (1, "1999" * 100)}


def test_read_stored_includes_changes_not_written_yet(disk):
    """While writes fail, `read_stored` answers with the queued upserts and deletes applied
    (what the store will hold), where `load` still answers what is on disk."""
    store = open_sqlite(disk)
    store.wait_committed(store.save([(NS, "r", [('"kept"', 0, 1), ('"gone"', 1, 2)], [])]), 5)
    fill(disk)
    store.save([(NS, "r", [('"new"', 2, "9" * 5000)], ['"gone"'])])
    wait_until(lambda: store.fault is not None)
    assert sorted(store.read_stored(NS, "r")) == [('"kept"', 0, 1), ('"new"', 2, "9" * 5000)]
    assert sorted(store.load(NS, "r")) == [('"gone"', 1, 2), ('"kept"', 0, 1)]
    assert store.read_stored(NS, "other") == []
    free(disk)
    store.close()


def test_read_stored_raises_when_the_file_cannot_be_read(tmp_path):
    """A read that fails raises StoreReadError naming the cause, never an empty answer."""
    store = open_sqlite(tmp_path)
    store.wait_committed(store.save([(NS, "r", [('"a"', 0, 1)], [])]), 5)
    assert store.read_stored(NS, "r") == [('"a"', 0, 1)]
    with sqlite3.connect(store.path) as other:
        other.execute("DROP TABLE variables")
    with pytest.raises(StoreReadError, match="no such table"):
        store.read_stored(NS, "r")
    store.close()


def test_memory_store_reads_what_was_saved():
    """The memory store's `read_stored` is its `load`: saved changes, at once."""
    store = MemoryStore()
    store.save([(NS, "r", [('"a"', 0, 1), ('"b"', 1, 2)], ['"b"'])])
    assert store.read_stored(NS, "r") == store.load(NS, "r") == [('"a"', 0, 1)]


def test_close_reports_values_that_could_not_be_written(disk):
    """Closing while the disk stays full gives up after the shutdown timeout, naming the count."""
    store = open_sqlite(disk, shutdown_write_timeout=0.3)
    fill(disk)
    store.save([(NS, "r", [('"a"', 0, "1" * 3000), ('"b"', 1, "2" * 3000)], [])])
    store.save([(NS, "s", [('"c"', 0, "3" * 3000)], [])])
    with pytest.raises(StoreError) as refused:
        store.close()
    message = str(refused.value)
    assert message.startswith("3 values could not be written to store ")
    assert "full" in message and "\n" not in message


def test_close_keeps_retrying_until_the_disk_recovers(disk):
    """A disk that frees up during shutdown still gets every value."""
    store = open_sqlite(disk, shutdown_write_timeout=5.0)
    fill(disk)
    store.save([(NS, "r", [('"a"', 0, "7" * 3000)], [])])
    wait_until(lambda: store.fault is not None)
    threading.Timer(0.3, free, (disk,)).start()
    store.close()
    assert stored(disk, "r") == {'"a"': (0, "7" * 3000)}


# Keys


def test_keys_with_lone_surrogates_round_trip(tmp_path):
    """Room ids and keys holding lone surrogates (valid JS strings) are stored and read back."""
    odd_rooms = ["\ud800", "a\udfffb", "\ufffd", "😀\udc00"]
    store = open_sqlite(tmp_path)
    for number, room in enumerate(odd_rooms):
        store.save([(NS, room, [("\udc00", 0, str(number)), ('"☁ \ud83d"', 1, "x")], [])])
    store.close()
    for number, room in enumerate(odd_rooms):
        assert stored(tmp_path, room) == {"\udc00": (0, str(number)), '"☁ \ud83d"': (1, "x")}


def test_rows_written_by_earlier_versions_load_and_update_in_place(tmp_path):
    """A store file written before the key encoding existed loads, and updates replace its rows."""
    path = tmp_path / "stratus.sqlite3"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE variables (namespace TEXT NOT NULL, room TEXT NOT NULL, "
            "key TEXT NOT NULL, position INTEGER NOT NULL, value TEXT NOT NULL, "
            "PRIMARY KEY (namespace, room, key)) WITHOUT ROWID"
        )
        old.executemany("INSERT INTO variables VALUES (?, ?, ?, ?, ?)",
                        [(NS, "projét", '"☁ score"', 0, '"12"'), (NS, "projét", '"n"', 1, "3")])
    old.close()
    assert stored(tmp_path, "projét") == {'"☁ score"': (0, "12"), '"n"': (1, 3)}
    store = open_sqlite(tmp_path)
    store.save([(NS, "projét", [('"☁ score"', 0, "13")], [])])
    store.close()
    assert stored(tmp_path, "projét") == {'"☁ score"': (0, "13"), '"n"': (1, 3)}
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT count(*) FROM variables").fetchone() == (2,)
    check.close()


# History


def entries(store, count: int, start: int = 0, user: str = "alice") -> list[HistoryEntry]:
    """`count` set entries with values "start".."start+count-1", seqs from `store`."""
    seq = store.history_sequence()
    return [HistoryEntry(next(seq), 1_700_000_000_000 + number, user, "set", '"☁ n"',
                         str(number)) for number in range(start, start + count)]


@pytest.fixture(params=["memory", "sqlite"])
def any_store(request, tmp_path):
    """Each store backend, closed after the test."""
    store = MemoryStore() if request.param == "memory" else open_sqlite(tmp_path)
    yield store
    store.close()


def test_history_reads_newest_first_within_keep(any_store):
    """Entries come back newest first, at most `limit`, and only the newest `keep` are kept."""
    store = any_store
    store.append_history([(NS, "r", entries(store, 3))], keep=5)
    store.append_history([(NS, "r", entries(store, 4, start=3))], keep=5)
    store.append_history([(NS, "other", entries(store, 2, user="bob"))], keep=5)
    if isinstance(store, SQLiteStore):
        store.wait_committed(store.save([]), 5)
    assert [entry.value for entry in store.read_history(NS, "r", 100)] == ["6", "5", "4", "3", "2"]
    assert [entry.value for entry in store.read_history(NS, "r", 2)] == ["6", "5"]
    assert {entry.user for entry in store.read_history(NS, "other", 100)} == {"bob"}
    assert store.read_history(NS, "nobody", 100) == []


def test_history_survives_reopen_and_numbering_continues(tmp_path):
    """Written entries are read back by a new store, whose new entries sort after them."""
    store = open_sqlite(tmp_path)
    first = entries(store, 3)
    store.append_history([(NS, "r", first)], keep=10)
    store.close()
    store = open_sqlite(tmp_path)
    assert store.read_history(NS, "r", 10) == first[::-1]
    later = entries(store, 1, start=3)
    assert later[0].seq > first[-1].seq
    store.append_history([(NS, "r", later)], keep=10)
    store.close()
    store = open_sqlite(tmp_path)
    assert [entry.value for entry in store.read_history(NS, "r", 10)] == ["3", "2", "1", "0"]
    store.close()


def test_history_on_disk_is_trimmed_to_keep(tmp_path):
    """Each batch leaves at most `keep` rows of a room in the file, the newest ones."""
    store = open_sqlite(tmp_path)
    for batch in range(5):
        store.append_history([(NS, "r", entries(store, 4, start=batch * 4))], keep=6)
    store.close()
    with sqlite3.connect(tmp_path / "stratus.sqlite3") as check:
        values = [row[0] for row in check.execute("SELECT value FROM history ORDER BY seq")]
    check.close()
    assert values == ['"14"', '"15"', '"16"', '"17"', '"18"', '"19"']


def test_queued_history_is_read_and_kept_bounded_while_writes_fail(disk):
    """While the disk is full, entries wait (newest `keep` per room), are readable, are counted
    in the fault, and are written once space is back."""
    store = open_sqlite(disk)
    store.wait_committed(store.append_history([(NS, "r", entries(store, 2))], keep=50), 5)
    fill(disk)
    for batch in range(20):
        store.append_history([(NS, "r", entries(store, 10, start=2 + batch * 10))], keep=50)
    wait_until(lambda: store.fault is not None)
    assert "50 history entries kept in memory" in store.fault
    newest = store.read_history(NS, "r", 3)
    assert [entry.value for entry in newest] == ["201", "200", "199"]
    free(disk)
    store.close()
    store = open_sqlite(disk)
    kept = store.read_history(NS, "r", 100)
    store.close()
    assert [entry.value for entry in kept] == [str(n) for n in range(201, 151, -1)]


def test_close_counts_history_entries_that_could_not_be_written(disk):
    """Closing while the disk stays full names the lost history entries with the values."""
    store = open_sqlite(disk, shutdown_write_timeout=0.3)
    fill(disk)
    store.save([(NS, "r", [('"a"', 0, "1" * 3000)], [])])
    store.append_history([(NS, "r", entries(store, 7))], keep=100)
    with pytest.raises(StoreError) as refused:
        store.close()
    assert str(refused.value).startswith(
        "1 values and 7 history entries could not be written to store ")


# Start-up checks


def test_damaged_page_is_refused_with_one_line(tmp_path):
    """One overwritten 4 KiB page makes opening fail with exit code 2 and a one-line reason."""
    write_rooms(tmp_path)
    with open(tmp_path / "stratus.sqlite3", "r+b") as handle:
        handle.seek(5 * PAGE)
        handle.write(b"\xab" * PAGE)
    with pytest.raises(StoreError) as refused:
        open_sqlite(tmp_path)
    message = str(refused.value)
    assert refused.value.exit_code == 2
    assert message.startswith(f"store {tmp_path / 'stratus.sqlite3'} is damaged: ")
    assert message.endswith("; restore it from a backup or move it away")
    assert "\n" not in message


def test_file_that_is_not_sqlite_is_refused(tmp_path):
    """A store file with foreign content is refused as damaged (exit code 2)."""
    (tmp_path / "stratus.sqlite3").write_bytes(b"not a database at all\n" * 200)
    with pytest.raises(StoreError, match="is damaged: it does not start with an SQLite header") \
            as refused:
        open_sqlite(tmp_path)
    assert refused.value.exit_code == 2


def test_empty_file_is_reported_and_used(tmp_path, caplog):
    """A zero-byte store file is named in a warning, then used as a new store."""
    path = tmp_path / "stratus.sqlite3"
    path.touch()
    store = open_sqlite(tmp_path)
    store.wait_committed(store.save([(NS, "r", [('"a"', 0, "1")], [])]), 5)
    store.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in line and "empty (0 bytes)" in line for line in warnings), warnings
    assert stored(tmp_path, "r") == {'"a"': (0, "1")}


def test_integrity_check_is_bounded_in_time(tmp_path, caplog):
    """A check that runs out of time lets the store open, with a warning naming the setting."""
    write_rooms(tmp_path)
    store = open_sqlite(tmp_path, startup_check_timeout=1e-9)
    assert store.load(NS, "room7")
    store.close()
    assert any("startup_check_timeout" in r.getMessage() for r in caplog.records)


def test_second_store_on_one_data_dir_is_refused(tmp_path):
    """Only one store may use a data dir at a time; the refusal names the dir."""
    first = open_sqlite(tmp_path)
    with pytest.raises(StoreError, match=f"data dir {tmp_path} is in use by another Stratus "
                                         r"server \(pid \d+\)"):
        open_sqlite(tmp_path)
    first.close()
    open_sqlite(tmp_path).close()


def test_read_only_data_dir_is_refused(disk):
    """A data dir on a read-only file system is refused, saying so."""
    open_sqlite(disk).close()
    remount(disk, "ro")
    try:
        with pytest.raises(StoreError, match=f"data dir {disk} is not writable"):
            open_sqlite(disk)
    finally:
        remount(disk, "rw")


def test_full_data_dir_is_refused(disk):
    """A data dir without room for a write is refused, saying it is full."""
    open_sqlite(disk).close()
    fill(disk)
    with pytest.raises(StoreError, match=f"data dir {disk} is full"):
        open_sqlite(disk)
