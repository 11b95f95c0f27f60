"""Persistence of room variables behind one small seam.

A store loads a room's variables when the room is created in memory and receives batches of
changes (write-behind) from the rooms. Two implementations: `MemoryStore` (nothing survives a
restart) and `SQLiteStore` (stdlib sqlite3 in WAL mode, one row per variable, written by a
background thread in one transaction per batch, so the event loop never waits on the disk).

`save` returns a ticket; `committed` is the highest ticket known to be on disk. A room is only
dropped from memory once its last ticket is committed, so a re-created room never reads stale
values.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("stratus.store")

# (namespace, room id, upserts as (key, position, value), deleted keys)
Change = tuple[str, str, list[tuple[str, int, Any]], list[str]]


class Store(Protocol):
    """What rooms need from persistence."""

    committed: int

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        """Stored (key, position, value) rows of a room; empty if none."""

    def save(self, changes: list[Change]) -> int:
        """Queue changes for writing; returns their ticket."""

    def close(self) -> None:
        """Write everything queued, then release resources."""


class MemoryStore:
    """Keeps values for the life of the process only."""

    def __init__(self) -> None:
        self.rooms: dict[tuple[str, str], dict[str, tuple[int, Any]]] = {}
        self.committed = 0

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        stored = self.rooms.get((namespace, room_id), {})
        return [(key, position, value) for key, (position, value) in stored.items()]

    def save(self, changes: list[Change]) -> int:
        for namespace, room_id, upserts, deletes in changes:
            stored = self.rooms.setdefault((namespace, room_id), {})
            for key, position, value in upserts:
                stored[key] = (position, value)
            for key in deletes:
                stored.pop(key, None)
        self.committed += 1
        return self.committed

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
"""


class SQLiteStore:
    """Values in an SQLite file, written behind by one thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.committed = 0
        self._issued = 0
        self._reader = self._connect()
        self._reader.executescript(_SCHEMA)
        self._queue: queue.SimpleQueue[tuple[int, list[Change]] | None] = queue.SimpleQueue()
        self._drained = threading.Condition()
        self._writer = threading.Thread(target=self._write_loop, name="stratus-store", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    def load(self, namespace: str, room_id: str) -> list[tuple[str, int, Any]]:
        rows = self._reader.execute(
            "SELECT key, position, value FROM variables WHERE namespace=? AND room=?",
            (namespace, room_id),
        ).fetchall()
        return [(key, position, json.loads(value)) for key, position, value in rows]

    def save(self, changes: list[Change]) -> int:
        # Values are serialised here, in the caller's thread, so the writer never reads
        # objects the event loop may still change.
        encoded = [
            (namespace, room_id, [(key, pos, json.dumps(value)) for key, pos, value in ups], dels)
            for namespace, room_id, ups, dels in changes
        ]
        self._issued += 1
        self._queue.put((self._issued, encoded))
        return self._issued

    def _write_loop(self) -> None:
        writer = self._connect()
        while True:
            item = self._queue.get()
            if item is None:
                break
            ticket, changes = item
            try:
                self._write(writer, changes)
            except sqlite3.Error:
                log.exception("could not write %d room changes; they are lost", len(changes))
            with self._drained:
                self.committed = ticket
                self._drained.notify_all()
        writer.close()

    @staticmethod
    def _write(writer: sqlite3.Connection, changes: list[Change]) -> None:
        writer.execute("BEGIN")
        try:
            for namespace, room_id, upserts, deletes in changes:
                if upserts:
                    writer.executemany(
                        "INSERT INTO variables (namespace, room, key, position, value) "
                        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, room, key) "
                        "DO UPDATE SET value=excluded.value, position=excluded.position",
                        [(namespace, room_id, k, p, v) for k, p, v in upserts],
                    )
                if deletes:
                    writer.executemany(
                        "DELETE FROM variables WHERE namespace=? AND room=? AND key=?",
                        [(namespace, room_id, key) for key in deletes],
                    )
            writer.execute("COMMIT")
        except BaseException:
            writer.execute("ROLLBACK")
            raise

    def wait_committed(self, ticket: int, timeout: float | None = None) -> bool:
        """Block until `ticket` is on disk (used at shutdown and in tests)."""
        with self._drained:
            return self._drained.wait_for(lambda: self.committed >= ticket, timeout)

    def close(self) -> None:
        self.wait_committed(self._issued, timeout=30)
        self._queue.put(None)
        self._writer.join(timeout=30)
        self._reader.close()


def open_store(backend: str, data_dir: Path, sqlite_file: str) -> Store:
    """The store named by config."""
    if backend == "memory":
        return MemoryStore()
    return SQLiteStore(data_dir / sqlite_file)
