"""I/O helpers shared by the sprite plugins: paced writers, settings, keys, handler classes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from plugins.api import import_object

from .keys import ECServerKey, RSAServerKey, load_server_key
from .pacing import MIN_ALLOWED_INTERVAL, ScheduledSet


class PacedWriter:
    """Writes one connection's planned sets in order, at most one per timer tick.

    The pure state machines plan `ScheduledSet(variable, value, not_before)` (epoch seconds);
    this writer keeps them in a FIFO and runs **one** loop timer per connection for the head
    of the queue. Each write is also ≥ `min_interval` after the previous one even if the loop
    ran late, so the sprite (which polls once per frame) never gets two values at once.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: Any,
        min_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.loop = loop
        self.client = client
        self.min_interval = min_interval
        self.clock = clock
        self._queue: deque[tuple[ScheduledSet, asyncio.Future | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_write: float | None = None
        self.closed = False

    @property
    def pending(self) -> int:
        """Number of sets not yet written."""
        return len(self._queue)

    def enqueue(self, sets: Iterable[ScheduledSet]) -> asyncio.Future:
        """Queue planned sets; the future resolves True when the last is written (False if not)."""
        done: asyncio.Future = self.loop.create_future()
        items = list(sets)
        if self.closed:
            done.set_result(False)
            return done
        if not items:
            done.set_result(True)
            return done
        for index, item in enumerate(items):
            self._queue.append((item, done if index == len(items) - 1 else None))
        self._arm()
        return done

    def _arm(self) -> None:
        if self._timer is not None or not self._queue:
            return
        head, _ = self._queue[0]
        due = head.not_before
        if self._last_write is not None:
            due = max(due, self._last_write + self.min_interval)
        delay = max(0.0, due - self.clock())
        self._timer = self.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed or not self._queue:
            return
        item, done = self._queue.popleft()
        written = False
        if getattr(self.client, "open", True):
            try:
                self.client.send_variable(item.variable, item.value)
                written = True
            except Exception:  # the connection went away between the check and the send
                logging.getLogger("stratus.plugin.sprites").debug("write failed", exc_info=True)
        self._last_write = self.clock()
        if done is not None and not done.done():
            done.set_result(written)
        self._arm()

    def close(self) -> None:
        """Drop everything queued (the connection closed) and stop the timer."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            _, done = self._queue.popleft()
            if done is not None and not done.done():
                done.set_result(False)


def setting_float(
    settings: Mapping[str, Any], key: str, default: float, *, minimum: float | None = None
) -> float:
    """A numeric setting, checked: ValueError with the key's name if it is wrong."""
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be at least {minimum}")
    return float(value)


def setting_int(
    settings: Mapping[str, Any], key: str, default: int, *, minimum: int = 1
) -> int:
    """An integer setting ≥ `minimum`."""
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}")
    return value


def packet_interval(settings: Mapping[str, Any]) -> float:
    """`packet_interval` (seconds between sets to one client): default 0.1, at least 0.05."""
    return setting_float(settings, "packet_interval", 0.1, minimum=MIN_ALLOWED_INTERVAL)


def read_key_file(path_text: str, scheme: str, log: logging.Logger) -> ECServerKey | RSAServerKey:
    """Load a private key file (library string format); the key itself is never logged."""
    path = Path(path_text)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read {scheme} key file {path}: {error.__class__.__name__}") \
            from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("key file %s is readable by other users; chmod 600 it", path)
    try:
        key = load_server_key(text)
    except ValueError:
        raise ValueError(f"{path} does not hold a valid private key string") from None
    if key.scheme != scheme:
        raise ValueError(f"{path} holds an {key.scheme} key, not {scheme}")
    log.info("loaded %s server key from %s", scheme, path)
    return key


def load_handler_object(spec: Any, plugin: Any) -> Any:
    """The `handlers = "module:Class"` setting as an instance (or None if not set).

    The class is created once. If its `__init__` takes a parameter, it gets the plugin (for
    `plugin.settings`, `plugin.log`, pushes); otherwise it is created without arguments.
    """
    if spec is None or spec == "":
        return None
    if not isinstance(spec, str):
        raise ValueError('handlers must be a "module:Class" string')
    target = import_object(spec)
    if not isinstance(target, type):
        return target  # a module-level instance
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        parameters = {}
    required = [
        parameter for parameter in parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    return target(plugin) if required else target()


class ConnectionState:
    """What a sprite plugin keeps per websocket: a paced writer and the running handler tasks."""

    def __init__(self, client: Any, writer: PacedWriter) -> None:
        self.client = client
        self.room = client.room
        self.writer = writer
        self.tasks: set[asyncio.Task] = set()

    def close(self) -> None:
        """Stop writing and cancel handler tasks (the connection is gone)."""
        self.writer.close()
        for task in list(self.tasks):
            task.cancel()
        self.tasks.clear()
