"""Variable history: who set, deleted or renamed which variable of a room, and when.

Opt-in ([history] enabled). A `RoomHistory` watches one room namespace through its registry's
observers, so with history off no write pays anything for it. Each change becomes a
`HistoryEntry` (O(1)) that the room's persister hands to the store with the room's next batch;
the store keeps the newest [history] keep of each room and survives a restart like the values.
Reading merges the entries not handed over yet with the store's, newest first, reads the store
off the event loop, and never creates a room in memory.

Authors are named by `Peer.username` (the name a client gave), a `NamedWriter`'s name (the
bridge writes as "(bridge)"), or `SERVER_USER` for writes without an author (the facade: admin
API, plugins). The parenthesised names cannot be client usernames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .store import HistoryEntry, newest_first

if TYPE_CHECKING:
    from .rooms import Room, RoomRegistry

SET, DELETE, RENAME = "set", "delete", "rename"
SERVER_USER = "(server)"  # writes with no author: the admin API, plugins through the facade
UNNAMED_USER = "(unnamed)"  # a client that gave no name


def author_name(author: Any) -> str:
    """How the history names the author of a write (see the module docstring)."""
    if author is None:
        return SERVER_USER
    return author.username or UNNAMED_USER


class RoomHistory:
    """The history of one room namespace: records its changes and reads them back."""

    def __init__(self, registry: RoomRegistry, keep: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.keep = keep
        self.clock = clock
        self._seq = registry.store.history_sequence()
        self._reader: ThreadPoolExecutor | None = None

    def attach(self) -> None:
        """Start recording the registry's changes."""
        registry = self.registry
        registry.persister.history_keep = self.keep
        registry.write_observers.append(self.written)
        registry.delete_observers.append(self.deleted)
        registry.rename_observers.append(self.renamed)
        registry.history = self

    def _record(self, room: Room, verb: str, key: str, value: Any, author: Any) -> None:
        entry = HistoryEntry(next(self._seq), int(self.clock() * 1000), author_name(author),
                             verb, key, value)
        self.registry.persister.recorded(room, entry)

    def written(self, room: Room, key: str, value: Any, author: Any) -> None:
        """A write observer: `key` was set to `value`."""
        self._record(room, SET, key, value, author)

    def deleted(self, room: Room, key: str, value: Any, author: Any) -> None:
        """A delete observer: `key` (last `value`) was removed."""
        self._record(room, DELETE, key, value, author)

    def renamed(self, room: Room, key: str, new_key: str, author: Any) -> None:
        """A rename observer: `key` is now `new_key` (recorded with its value)."""
        self._record(room, RENAME, new_key, room.values[new_key], author)

    async def read(self, room_id: str, limit: int, offset: int = 0) -> list[HistoryEntry]:
        """Entries `offset` to `offset + limit` of a room's history, newest first (empty for
        a room without history). The store is read off the event loop; the room is not
        created in memory."""
        count = min(offset + limit, self.keep)
        if offset >= count:
            return []
        registry = self.registry
        room = registry.get(room_id)
        # Taken before the store is read: an entry handed to the store meanwhile is then found
        # twice (and kept once, by seq) instead of not at all.
        unsaved = registry.persister.unsaved_history(room) if room is not None else []
        store = registry.store
        if store.loads_block:
            if self._reader is None:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix="stratus-history-read")
            stored = await asyncio.get_running_loop().run_in_executor(
                self._reader, store.read_history, registry.namespace, room_id, count)
        else:
            stored = store.read_history(registry.namespace, room_id, count)
        return newest_first(stored, unsaved, count)[offset:]

    def close(self) -> None:
        """Stop the reader thread (waits for a read in progress)."""
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
