"""Persistence of room variables behind one small seam.

A store loads a room's variables when the room is created in memory and receives batches of
changes (write-behind) from the rooms, and, with [history] enabled, batches of history entries
(who changed which variable, when), of which it keeps the newest `keep` per room. Two
implementations: `MemoryStore` (nothing survives a restart) and `SQLiteStore` (stdlib sqlite3
in WAL mode, one row per variable and per history entry, written by a background thread in one
transaction per batch, so the event loop never waits on the disk).

`save` returns a ticket; `committed` is the highest ticket known to be on disk. A room is only
dropped from memory once its last ticket is committed, so a re-created room never reads stale
values. A batch that cannot be written (disk full, read-only file, I/O error) is kept, merged
with later changes (the newest value of each variable wins, so memory stays bounded by the
number of distinct variables) and retried with backoff; `fault` says why while it fails.
History entries that cannot be written are kept and retried the same way, at most `keep` per
room (older ones would be trimmed once written anyway).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import count
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from .config import StoreSection

log = logging.getLogger("stratus.store")

# (namespace, room id, upserts as (key, position, value), deleted keys)
Change = tuple[str, str, list[tuple[str, int, Any]], list[str]]



class HistoryEntry(NamedTuple):
    """One change in a room's history.

    `seq` orders entries (higher is newer) and is unique in the store, so a reader can merge
    entries not written yet with stored ones without counting any twice; `time` is in
    milliseconds since the epoch; `verb` is "set", "delete" or "rename" (`key` is then the new
    key); `user` names who wrote it; `value` is the variable's value after the change (its last
    value for a delete).
    """

    seq: int
    time: int
    user: str
    verb: str
    key: str
    value: Any


# (namespace, room id, entries oldest first)
HistoryBatch = tuple[str, str, list[HistoryEntry]]


def newest_first(stored: Iterable[tuple], unsaved: Iterable[tuple], limit: int) -> list:
    """The newest `limit` of two sets of history entries (or rows: tuples with `seq` first),
    newest first. An entry in both (handed over while it was read) counts once."""
    merged = {entry[0]: entry for entry in stored}
    for entry in unsaved:
        merged[entry[0]] = entry
    return sorted(merged.values(), key=itemgetter(0), reverse=True)[:limit]

# One variable's newest unwritten state: (position, value as JSON text), or None if deleted.
_Row = tuple[int, str] | None

LOCK_FILE = "stratus.lock"
# Start-up writes this much into the lock file (then truncates it): a data dir with less room
# than that cannot hold one WAL frame plus SQLite's 32 KiB shared-memory file.
SPACE_PROBE_BYTES = 64 * 1024
FIRST_RETRY_DELAY = 0.1  # seconds; doubles per failed attempt up to retry_max_interval
RETRY_DELAY_WHILE_CLOSING = 0.2
SQLITE_HEADER = b"SQLite format 3\x00"
_DAMAGED_CODES = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}


class StoreError(Exception):
    """The store cannot be used; the message is one line for the operator."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StoreReadError(Exception):
    """`read_stored` could not read the store (the message says why, in one line)."""


class Store(Protocol):
    """What rooms need from persistence."""

    committed: int
    # Write transactions committed, and attempts that failed (each is retried), for metrics.
    writes: int
    write_errors: int
    # True when `load` waits on I/O, so rooms are loaded off the event loop.
    loads_block: bool

    @property
    def fault(self) -> str | None:
        """Why the store is failing now (for /healthz), or None while it works."""

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """Stored (key, position, value) rows of a room; empty if none."""

    def read_stored(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """Rows as `load` gives them, with the changes `save` queued here and did not write
        yet applied, and never empty for a failed read: raises `StoreReadError` when the store
        cannot be read (what must not take a failure for "nothing stored", e.g. the stored
        blocks, reads with this; blocks on I/O when `loads_block`)."""

    def save(self, changes: list[Change]) -> int:
        """Queue changes for writing; returns their ticket."""

    def history_sequence(self) -> Iterator[int]:
        """The one counter new history entries take their `seq` from (continues after the
        highest stored one)."""

    def append_history(self, batch: list[HistoryBatch], keep: int) -> int:
        """Queue history entries for writing, keeping the newest `keep` of each room; returns
        their ticket (committed like `save`'s)."""

    def read_history(self, namespace: str, room_id: str, limit: int) -> list[HistoryEntry]:
        """The newest `limit` history entries of a room, newest first, queued ones included
        (blocks on I/O when `loads_block`: call it off the event loop)."""

    def close(self) -> None:
        """Write everything queued, then release resources; StoreError if values are lost."""


class MemoryStore:
    """Keeps values for the life of the process only."""

    loads_block = False
    fault = None

    def __init__(self) -> None:
        self.rooms: dict[tuple[str, str], dict[str, tuple[int, Any]]] = {}
        self.history: dict[tuple[str, str], deque[HistoryEntry]] = {}
        self.committed = 0
        self._history_seq = count(1)
        self.writes = 0
        self.write_errors = 0

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        stored = self.rooms.get((namespace, room_id), {})
        return [(key, position, value) for key, (position, value) in stored.items()]

    def read_stored(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        return self.load(namespace, room_id)  # nothing is queued, nothing can fail

    def save(self, changes: list[Change]) -> int:
        for namespace, room_id, upserts, deletes in changes:
            stored = self.rooms.setdefault((namespace, room_id), {})
            for key, position, value in upserts:
                stored[key] = (position, value)
            for key in deletes:
                stored.pop(key, None)
        self.committed += 1
        self.writes += 1
        return self.committed

    def history_sequence(self) -> Iterator[int]:
        return self._history_seq

    def append_history(self, batch: list[HistoryBatch], keep: int) -> int:
        for namespace, room_id, entries in batch:
            kept = self.history.get((namespace, room_id))
            if kept is None or kept.maxlen != keep:
                kept = self.history[namespace, room_id] = deque(kept or (), maxlen=keep)
            kept.extend(entries)
        self.committed += 1
        return self.committed

    def read_history(self, namespace: str, room_id: str, limit: int) -> list[HistoryEntry]:
        kept = self.history.get((namespace, room_id), ())
        newest = []
        for entry in reversed(kept):
            if len(newest) >= limit:
                break
            newest.append(entry)
        return newest

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS variables (
    namespace TEXT NOT NULL,
    room TEXT NOT NULL,
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, room, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY,
    namespace TEXT NOT NULL,
    room TEXT NOT NULL,
    time INTEGER NOT NULL,
    user TEXT NOT NULL,
    verb TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_room ON history (namespace, room, seq);
"""
# A history entry as the writer stores it: the entry with its value as JSON text.
_HistoryRow = tuple[int, int, str, str, str, str]


def _column(text: str) -> str | bytes:
    """`text` as SQLite can hold it: itself, or its UTF-8 bytes if it has a lone surrogate.

    sqlite3 cannot encode lone surrogates (valid in JS strings, so in room ids and variable
    names). Such text is stored as a BLOB instead; a BLOB never equals a TEXT value, and text
    without lone surrogates is stored exactly as before, so existing files keep working.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def _text(stored: str | bytes) -> str:
    """The text a column value written by `_column` stands for."""
    return stored if type(stored) is str else stored.decode("utf-8", "surrogatepass")


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "..."


class SQLiteStore:
    """Values in an SQLite file, written behind by one thread and retried while writes fail."""

    loads_block = True

    def __init__(self, path: Path, retry_max_interval: float = 5.0,
                 check_timeout: float = 10.0, shutdown_timeout: float = 5.0,
                 lock: DataDirLock | None = None) -> None:
        self.path = path
        self.lock = lock
        self.retry_max_interval = retry_max_interval
        self.shutdown_timeout = shutdown_timeout
        self.committed = 0
        self.writes = 0  # written by the writer thread, read by metrics
        self.write_errors = 0
        self._issued = 0
        # Unwritten changes by (namespace, room, key), newest state only, and the batch the
        # writer is writing now (kept until it is on disk).
        self._pending: dict[tuple[str, str, str], _Row] = {}
        self._writing: dict[tuple[str, str, str], _Row] = {}
        # The same for history entries by (namespace, room): each deque holds at most the
        # room's `keep` newest, so a failing disk cannot make them grow without bound.
        self._pending_history: dict[tuple[str, str], deque[_HistoryRow]] = {}
        self._writing_history: dict[tuple[str, str], deque[_HistoryRow]] = {}
        self._failure: str | None = None
        self._read_failure: str | None = None
        self._closing = False
        self._stopped = False
        self._changed = threading.Condition()
        self._read_lock = threading.Lock()
        self._reader = open_checked(path, check_timeout)
        highest = self._reader.execute("SELECT max(seq) FROM history").fetchone()[0]
        self._history_seq = count((highest or 0) + 1)
        self._writer = threading.Thread(target=self._write_loop, name="stratus-store", daemon=True)
        self._writer.start()

    @property
    def fault(self) -> str | None:
        # Public (/healthz), so it names no path; the log does.
        failure = self._failure
        if failure is not None:
            with self._changed:
                waiting = self._unwritten_text()
            return f"store cannot be written ({failure}); {waiting} kept in memory, retrying"
        failure = self._read_failure
        if failure is not None:
            return f"store cannot be read ({failure})"
        return None

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """Stored rows of a room (blocks on the disk: call it off the event loop)."""
        try:
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT key, position, value FROM variables WHERE namespace=? AND room=?",
                    (namespace, _column(room_id)),
                ).fetchall()
        except sqlite3.Error as exc:
            self._read_failure = _one_line(exc)
            raise
        self._read_failure = None
        return [(_text(key), position, json.loads(value)) for key, position, value in rows]

    def read_stored(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """`load` with the unwritten changes applied; StoreReadError if the file cannot be
        read (blocks on the disk: call it off the event loop)."""
        # Taken before the file is read: a change the writer commits meanwhile is then in
        # both, with the same value.
        with self._changed:
            unwritten = {key[2]: row for key, row in (*self._writing.items(),
                                                      *self._pending.items())
                         if key[0] == namespace and key[1] == room_id}
        try:
            rows = {key: (position, value) for key, position, value in self.load(namespace,
                                                                                 room_id)}
        except (sqlite3.Error, ValueError) as exc:
            raise StoreReadError(_one_line(exc) or type(exc).__name__) from exc
        for key, row in unwritten.items():
            if row is None:
                rows.pop(key, None)
            else:
                rows[key] = (row[0], json.loads(row[1]))
        return [(key, position, value) for key, (position, value) in rows.items()]

    def save(self, changes: list[Change]) -> int:
        # Values are serialised here, in the caller's thread, so the writer never reads
        # objects the event loop may still change.
        with self._changed:
            pending = self._pending
            for namespace, room_id, upserts, deletes in changes:
                for key, position, value in upserts:
                    pending[namespace, room_id, key] = (position, json.dumps(value))
                for key in deletes:
                    pending[namespace, room_id, key] = None
            self._issued += 1
            self._changed.notify_all()
            return self._issued

    def history_sequence(self) -> Iterator[int]:
        return self._history_seq

    def append_history(self, batch: list[HistoryBatch], keep: int) -> int:
        # Serialised here, in the caller's thread, as `save` does.
        rows = [(namespace, room_id,
                 [(entry.seq, entry.time, entry.user, entry.verb, entry.key,
                   json.dumps(entry.value)) for entry in entries])
                for namespace, room_id, entries in batch]
        with self._changed:
            pending = self._pending_history
            for namespace, room_id, entries in rows:
                queued = pending.get((namespace, room_id))
                if queued is None or queued.maxlen != keep:
                    queued = pending[namespace, room_id] = deque(queued or (), maxlen=keep)
                queued.extend(entries)
            self._issued += 1
            self._changed.notify_all()
            return self._issued

    def read_history(self, namespace: str, room_id: str, limit: int) -> list[HistoryEntry]:
        """The newest `limit` entries of a room (blocks on the disk: call it off the loop)."""
        # Queued entries are copied before the disk is read: one the writer commits meanwhile
        # is then seen twice (and counted once, by `seq`) rather than not at all.
        with self._changed:
            where = (namespace, room_id)
            queued = [*self._writing_history.get(where, ()), *self._pending_history.get(where, ())]
        try:
            with self._read_lock:
                rows = self._reader.execute(
                    "SELECT seq, time, user, verb, key, value FROM history "
                    "WHERE namespace=? AND room=? ORDER BY seq DESC LIMIT ?",
                    (namespace, _column(room_id), limit),
                ).fetchall()
        except sqlite3.Error as exc:
            self._read_failure = _one_line(exc)
            raise
        self._read_failure = None
        return [HistoryEntry(seq, stamp, _text(user), verb, _text(key), json.loads(value))
                for seq, stamp, user, verb, key, value in newest_first(rows, queued, limit)]

    def _write_loop(self) -> None:
        writer: sqlite3.Connection | None = None
        failures = 0
        failed_at = first_failure = 0.0
        while True:
            with self._changed:
                while not self._stopped:
                    if self._pending or self._pending_history:
                        wait = failed_at + self._retry_delay(failures) - time.monotonic()
                        if not failures or wait <= 0:
                            break
                        self._changed.wait(wait)
                    else:
                        self._changed.wait()
                if self._stopped:
                    break
                batch, self._pending = self._pending, {}
                history, self._pending_history = self._pending_history, {}
                self._writing = batch
                self._writing_history = history
                ticket = self._issued
            try:
                if writer is None:
                    writer = _connect(self.path)
                self._write(writer, batch, history)
            except Exception as exc:  # whatever it is, the values stay and the writer lives
                # After an I/O error the connection may be unusable: the retry opens a new one.
                _close_quietly(writer)
                writer = None
                failed_at = time.monotonic()
                failures += 1
                self.write_errors += 1
                with self._changed:
                    for key, row in batch.items():
                        self._pending.setdefault(key, row)  # a newer change wins
                    for where, rows in history.items():
                        newer = self._pending_history.get(where)
                        if newer is not None:
                            rows.extend(newer)  # after the older ones; the oldest fall off
                        self._pending_history[where] = rows
                    self._writing = {}
                    self._writing_history = {}
                    self._failure = _one_line(exc) or type(exc).__name__
                    self._changed.notify_all()
                if failures == 1:
                    first_failure = failed_at
                    log.error("cannot write %s to store %s (%s); keeping them in memory and "
                              "retrying", _count_text(len(batch), _entries(history)), self.path,
                              self._failure)
                continue
            with self._changed:
                self.committed = ticket
                self.writes += 1
                self._writing = {}
                self._writing_history = {}
                self._failure = None
                self._changed.notify_all()
            if failures:
                log.warning("store %s can be written again: %s written after %d failed "
                            "attempts over %.0f s", self.path,
                            _count_text(len(batch), _entries(history)), failures,
                            time.monotonic() - first_failure)
                failures = 0
        _close_quietly(writer)

    def _unwritten(self) -> int:
        """How many variables are not on disk yet (call with `_changed` held)."""
        pending = self._pending
        return len(pending) + sum(1 for key in self._writing if key not in pending)

    def _unwritten_text(self) -> str:
        """"N values" (and history entries) not on disk yet (call with `_changed` held)."""
        return _count_text(self._unwritten(),
                           _entries(self._pending_history) + _entries(self._writing_history))

    def _retry_delay(self, failures: int) -> float:
        delay = min(self.retry_max_interval, FIRST_RETRY_DELAY * 2 ** min(failures - 1, 30))
        return min(delay, RETRY_DELAY_WHILE_CLOSING) if self._closing else delay

    @staticmethod
    def _write(writer: sqlite3.Connection, batch: dict[tuple[str, str, str], _Row],
               history: dict[tuple[str, str], deque[_HistoryRow]]) -> None:
        upserts = []
        deletes = []
        for (namespace, room_id, key), row in batch.items():
            where = (namespace, _column(room_id), _column(key))
            if row is None:
                deletes.append(where)
            else:
                upserts.append((*where, *row))
        writer.execute("BEGIN")
        try:
            if upserts:
                writer.executemany(
                    "INSERT INTO variables (namespace, room, key, position, value) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, room, key) "
                    "DO UPDATE SET value=excluded.value, position=excluded.position",
                    upserts,
                )
            if deletes:
                writer.executemany(
                    "DELETE FROM variables WHERE namespace=? AND room=? AND key=?", deletes
                )
            if history:
                _write_history(writer, history)
            writer.execute("COMMIT")
        except BaseException:
            if writer.in_transaction:
                writer.execute("ROLLBACK")
            raise

    def wait_committed(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until `ticket` is on disk (used at shutdown and in tests)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.committed >= ticket, timeout)

    def close(self) -> None:
        """Write what is queued, retrying for up to `shutdown_timeout` s.

        Raises StoreError (one line, saying how many values) if some could not be written.
        """
        with self._changed:
            self._closing = True
            self._changed.notify_all()
            self._changed.wait_for(lambda: self.committed >= self._issued, self.shutdown_timeout)
            lost = self._unwritten() + _entries(self._pending_history) + _entries(
                self._writing_history)
            lost_text = self._unwritten_text()
            failure = self._failure
            self._stopped = True
            self._changed.notify_all()
        self._writer.join(timeout=1.0)
        _close_quietly(self._reader)
        if self.lock is not None:
            self.lock.release()
        if lost:
            raise StoreError(f"{lost_text} could not be written to store {self.path} and are "
                             f"lost ({failure or 'still writing'})")


def _write_history(writer: sqlite3.Connection,
                   history: dict[tuple[str, str], deque[_HistoryRow]]) -> None:
    """Insert the entries, then trim each room to its newest `keep` (the deque's maxlen)."""
    rows = []
    trims = []
    for (namespace, room_id), entries in history.items():
        room = _column(room_id)
        rows.extend((seq, namespace, room, time_ms, _column(user), verb, _column(key), value)
                    for seq, time_ms, user, verb, key, value in entries)
        trims.append((namespace, room, namespace, room, entries.maxlen))
    writer.executemany(
        "INSERT OR REPLACE INTO history (seq, namespace, room, time, user, verb, key, value) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    # Everything at or below the (keep+1)-th newest seq of the room goes.
    writer.executemany(
        "DELETE FROM history WHERE namespace=? AND room=? AND seq <= (SELECT seq FROM history "
        "WHERE namespace=? AND room=? ORDER BY seq DESC LIMIT 1 OFFSET ?)", trims)


def _entries(history: dict[Any, deque]) -> int:
    return sum(len(entries) for entries in history.values())


def _count_text(values: int, entries: int) -> str:
    """"N values", or "N values and M history entries" when there are entries."""
    return f"{values} values and {entries} history entries" if entries else f"{values} values"


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA busy_timeout=5000")
    return connection


def _close_quietly(connection: sqlite3.Connection | None) -> None:
    if connection is not None:
        try:
            connection.close()
        except sqlite3.Error:
            pass


def _damaged(path: Path, why: str) -> StoreError:
    return StoreError(f"store {path} is damaged: {_one_line(why)}; restore it from a backup or "
                      "move it away", exit_code=2)


def open_checked(path: Path, check_timeout: float) -> sqlite3.Connection:
    """A connection to the store at `path`, refused (StoreError) if the file is damaged.

    The integrity check (`PRAGMA quick_check`) stops after `check_timeout` seconds with a
    warning, so a huge store cannot hold up start-up; 0 skips it.
    """
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        header = None
    except OSError as exc:
        raise StoreError(f"store {path} cannot be read: {exc.strerror or exc}") from None
    if header == b"":
        log.warning("store file %s is empty (0 bytes): starting with no stored values; if it "
                    "held values, stop the server and restore it from a backup", path)
    elif header is not None and header != SQLITE_HEADER:
        raise _damaged(path, "it does not start with an SQLite header")
    connection = None
    try:
        connection = _connect(path)
        connection.executescript(_SCHEMA)
        problems = _quick_check(connection, path, check_timeout)
    except sqlite3.Error as exc:
        _close_quietly(connection)
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code in _DAMAGED_CODES:
            raise _damaged(path, str(exc)) from None
        if code == sqlite3.SQLITE_FULL:
            raise StoreError(f"store {path} cannot be opened: its disk is full") from None
        raise StoreError(f"store {path} cannot be opened: {_one_line(exc)}") from None
    if problems:
        _close_quietly(connection)
        raise _damaged(path, "; ".join(problems))
    if not os.access(path, os.W_OK):
        _close_quietly(connection)
        raise StoreError(f"store {path} is not writable; give the server's user write access")
    return connection


def _quick_check(connection: sqlite3.Connection, path: Path, timeout: float) -> list[str]:
    """What `PRAGMA quick_check` finds wrong (empty if nothing or out of time)."""
    if timeout <= 0:
        return []
    deadline = time.monotonic() + timeout
    connection.set_progress_handler(lambda: time.monotonic() > deadline, 1000)
    try:
        rows = connection.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorcode", 0) != sqlite3.SQLITE_INTERRUPT:
            raise
        log.warning("store %s: the integrity check did not finish within %g s "
                    "([store] startup_check_timeout); starting without it", path, timeout)
        return []
    finally:
        connection.set_progress_handler(None, 0)
    return [row[0] for row in rows if row[0] != "ok"]


class DataDirLock:
    """An exclusive lock on a data dir, so two servers never write one store."""

    def __init__(self, data_dir: Path) -> None:
        data_dir = self.data_dir = data_dir.absolute()
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _unusable(data_dir, exc) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
            os.close(self._fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise StoreError(f"data dir {data_dir} is in use by another Stratus server{who}; "
                             "stop it or give this one another [server] data_dir") from None
        try:
            os.ftruncate(self._fd, 0)
            probe = bytes(SPACE_PROBE_BYTES)
            written = 0
            while written < len(probe):  # a short write means the disk filled up
                written += os.pwrite(self._fd, probe[written:], written)
            os.fsync(self._fd)
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            self.release()
            raise _unusable(data_dir, exc) from None

    def release(self) -> None:
        """Let another server use the data dir."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _unusable(data_dir: Path, exc: OSError) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreError(f"data dir {data_dir} is full: free some space or choose another "
                          "[server] data_dir")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(f"data dir {data_dir} is not writable ({exc.strerror}); give the "
                          "server's user write access or choose another [server] data_dir")
    return StoreError(f"data dir {data_dir} cannot be used: {exc.strerror or exc}")


def open_store(settings: StoreSection, data_dir: Path) -> Store:
    """The store named by config; raises StoreError with a one-line reason if unusable."""
    if settings.backend == "memory":
        return MemoryStore()
    lock = DataDirLock(data_dir)
    try:
        return SQLiteStore(lock.data_dir / settings.sqlite_file, settings.retry_max_interval,
                           settings.startup_check_timeout, settings.shutdown_write_timeout, lock)
    except BaseException:
        lock.release()
        raise
