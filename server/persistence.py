"""Persistence of rooms: consumes their change stream and hands it to the store in batches.

Rooms report each changed or removed key; every `[store] flush_interval` the changes so far go
to the store (which may write them later, retrying failures). A room may only leave memory once
the store has committed everything it was handed for that room (`is_stored`). History entries
(`recorded`, with [history] enabled) travel in the same batches and count the same way.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .store import HistoryEntry, Store

# A `server.rooms.Room`: persistence reads its `id`, `values` and `positions`.
Room = Any


class Persister:
    """Unsaved keys per room of one namespace, and the store ticket that covers each room."""

    def __init__(self, namespace: str, store: Store, history_keep: int = 0) -> None:
        self.namespace = namespace
        self.store = store
        self.history_keep = history_keep  # entries kept per room (0: no history recorded)
        # History entries not handed to the store yet, newest `history_keep` per room.
        self._history: dict[Room, deque[HistoryEntry]] = {}
        self._changed: dict[Room, dict[str, None]] = {}  # rooms in first-change order
        self._removed: dict[Room, set[str]] = {}
        self._tickets: dict[Room, int] = {}  # the ticket of the last batch that held the room

    def changed(self, room: Room, key: str) -> None:
        """`key` of `room` has a new value."""
        keys = self._changed.get(room)
        if keys is None:
            keys = self._changed[room] = {}
        keys[key] = None

    def removed(self, room: Room, key: str) -> None:
        """`key` of `room` no longer exists."""
        keys = self._changed.get(room)
        if keys is not None:
            keys.pop(key, None)
        else:
            self._changed[room] = {}
        self._removed.setdefault(room, set()).add(key)

    def recorded(self, room: Room, entry: HistoryEntry) -> None:
        """A new history entry of `room` (O(1); it goes to the store with the next batch)."""
        entries = self._history.get(room)
        if entries is None:
            entries = self._history[room] = deque(maxlen=self.history_keep)
        entries.append(entry)

    def unsaved_history(self, room: Room) -> list[HistoryEntry]:
        """`room`'s history entries not handed to the store yet, oldest first."""
        return list(self._history.get(room, ()))

    @property
    def pending(self) -> bool:
        """True while some change was not handed to the store."""
        return bool(self._changed or self._history)

    def persist(self) -> None:
        """Hand every room's unsaved changes (and history entries) to the store."""
        if self._history:
            self._persist_history()
        if not self._changed:
            return
        changed, removed = self._changed, self._removed
        self._changed, self._removed = {}, {}
        batch: list[tuple[str, str, list[tuple[str, int, Any]], list[str]]] = []
        for room, keys in changed.items():
            values, positions = room.values, room.positions
            upserts = [(key, positions[key], values[key]) for key in keys if key in values]
            deletes = [key for key in removed.get(room, ()) if key not in values]
            batch.append((self.namespace, room.id, upserts, deletes))
        ticket = self.store.save(batch)
        for room in changed:
            self._tickets[room] = ticket

    def _persist_history(self) -> None:
        history, self._history = self._history, {}
        ticket = self.store.append_history(
            [(self.namespace, room.id, list(entries)) for room, entries in history.items()],
            self.history_keep)
        for room in history:
            self._tickets[room] = ticket

    def is_stored(self, room: Room, committed_ticket: int) -> bool:
        """True when everything `room` changed is committed (it may leave memory)."""
        return (room not in self._changed and room not in self._history
                and self._tickets.get(room, 0) <= committed_ticket)

    def forget(self, room: Room) -> None:
        """`room` left memory."""
        self._tickets.pop(room, None)
