"""The plugin API: classes whose decorated methods add commands and behaviour.

A plugin is a subclass of `Plugin`. Its methods are registered with decorators:

- `@on_connect` / `@on_disconnect` (client): a WebSocket connection opened / ended.
- `@on_handshake` (client): a client identified itself (Scratch handshake, CL4 handshake).
  Raise `Refuse` to turn it away; for Scratch clients an `async def` hook may take its time
  (messages that arrive meanwhile are queued and replayed in order). CL4 hooks must decide
  synchronously (an awaitable returned for a CL4 client is discarded and logged).
- `@on_variable(pattern)` (write): a Scratch variable write whose name matches the glob.
  Return None to keep the value or a new value to replace it; raise `Refuse` (or return
  `DROP`) to refuse the write.
- `@on_command(name, schema=...)` (request): a CL4 command. `schema` is a cerberus schema for
  the message; invalid messages are answered with E:101 and details. `replace=True` replaces
  a built-in command of that name. The handler may be `async def`.
- `@before_command(*names)` (client, message): runs before any CL4 command (or only the named
  ones). Raise `Refuse(status)` to veto, return a dict to rewrite the message.

Hooks of one kind run in a defined order: plugins in the order they were loaded (config order,
then code registration order: `server.plugins.add(...)` after `Server(config)`, before
`start()`), and within a plugin in definition order. An exception in a hook is logged with the
plugin's name and answered as an error (E:105 for CL4; a refused write for variables; an
ignored hook for connect/handshake), never killing the connection or the server. The guide is
docs/plugins.md.

This module is the core's plugin registry: it knows hook kinds, not protocols. Each protocol
wires the hooks it serves (`protocols.cl4.plugins` registers `on_command` handlers with the CL4
engine; the Scratch engine runs `on_handshake` and `on_variable`). Plugins act on the server
through `self.host`, the facade (`server.facade.Facade`). The names a plugin imports are all
in `plugins.api`.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .codes import CloseCode, State
from .globs import compile_glob

# Re-exported for plugins: client text in their log lines goes through it too.
from .logsafe import printable as printable

log = logging.getLogger("stratus.plugins")

_HOOKS = "__stratus_hooks__"


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()
"""Returned by an `on_variable` hook to refuse a write (not stored, not relayed)."""


class Refuse(Exception):
    """Raised by a hook to turn a client, a message or a write away: the one way to refuse
    (in on_handshake, on_variable, on_command and before_command hooks).

    For CL4, `status` is the statuscode the sender gets (default E:108 Refused) with optional
    `details`. For a Scratch handshake, the connection is closed with `close_code` (4002 by
    default, which makes TurboWarp ask for another username). From an `on_variable` hook, the
    write is dropped (not stored, not relayed), as returning `DROP` does.
    """

    def __init__(self, status: Any = None, *, details: Any = None,
                 close_code: int = CloseCode.SCRATCH_USERNAME):
        super().__init__(details or status or "refused")
        self.status = status
        self.details = details
        self.close_code = close_code


@dataclass(frozen=True)
class _Hook:
    kind: str
    target: Any = None
    schema: Mapping | None = None
    replace: bool = False
    requires_username: bool = False


def _tag(kind: str, **options: Any) -> Callable[[Callable], Callable]:
    def decorate(method: Callable) -> Callable:
        hooks = list(getattr(method, _HOOKS, ()))
        hooks.append(_Hook(kind, **options))
        setattr(method, _HOOKS, hooks)
        return method

    return decorate


def on_connect(method: Callable) -> Callable:
    """Call `method(client)` when a WebSocket connection opens."""
    return _tag("connect")(method)


def on_disconnect(method: Callable) -> Callable:
    """Call `method(client)` when a connection ends."""
    return _tag("disconnect")(method)


def on_handshake(method: Callable) -> Callable:
    """Call `method(client)` when a client identifies; raise `Refuse` to turn it away."""
    return _tag("handshake")(method)


def on_variable(pattern: str = "*") -> Callable[[Callable], Callable]:
    """Call `method(write)` for Scratch variable writes whose name matches the glob `pattern`."""
    return _tag("variable", target=compile_glob(pattern))


def on_command(
    name: str, *, schema: Mapping | None = None, replace: bool = False,
    requires_username: bool = False,
) -> Callable[[Callable], Callable]:
    """Handle the CL4 command `name`: `method(request)`; cerberus `schema` validates it."""
    return _tag("command", target=name, schema=schema, replace=replace,
                requires_username=requires_username)


def before_command(*names: str) -> Callable[[Callable], Callable]:
    """Call `method(client, message)` before CL4 commands (all, or the named ones)."""
    return _tag("before_command", target=frozenset(names))


@dataclass(slots=True)
class VariableWrite:
    """A Scratch variable write on its way into a room."""

    client: Client | None
    room: str
    name: Any
    value: Any


class Client:
    """What plugins see of one connection, whatever protocol it speaks."""

    __slots__ = ("_connection", "data")

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.data: dict[str, Any] = {}  # free for plugins' per-client state

    @property
    def id(self) -> int:
        """A number unique to this connection while the server runs (admin API, kicks)."""
        return self._connection.id

    @property
    def protocol(self) -> str | None:
        """"scratch", "cl4", or None before the first message."""
        session = self._connection.session
        return session.protocol_name if session is not None else None

    @property
    def address(self) -> str:
        """The client's IP address (after trusted-proxy processing)."""
        return self._connection.peer

    @property
    def connected_at(self) -> float:
        """When the client connected (Unix time)."""
        return self._connection.connected_at

    @property
    def username(self) -> str | None:
        """The Scratch handshake username or CL4 username, if any (unauthenticated)."""
        session = self._connection.session
        return session.username if session is not None else None

    @property
    def room(self) -> str | None:
        """The Scratch room (project id) this client joined, if any (None for CL4 clients)."""
        session = self._connection.session
        return session.room_id if session is not None else None

    @property
    def open(self) -> bool:
        """True while messages can be sent to the client."""
        return self._connection.state == State.OPEN

    def header(self, name: str) -> str:
        """A request header of the WebSocket upgrade, or ""."""
        return self._connection.header(name)

    def send_variable(self, name: str, value: Any) -> None:
        """Send this client alone a Scratch `set`, at once: not stored, not seen by others."""
        send = getattr(self._connection.session, "send_variable", None)
        if send is None:
            raise TypeError("send_variable() is for Scratch clients; use send() for CL4")
        send(name, value)

    def send(self, message: dict) -> None:
        """Send a CL4 client one message."""
        send = getattr(self._connection.session, "send_message", None)
        if send is None:
            raise TypeError("send() is for CL4 clients; use send_variable() for Scratch")
        send(message)

    def close(self, code: int = CloseCode.NORMAL) -> None:
        """Close the connection with `code`."""
        self._connection.close(code)

    def __repr__(self) -> str:
        return f"<Client {self.protocol} {printable(self.username, 40)} {printable(self.address)}>"


class Plugin:
    """Base class of plugins. `settings` holds the plugin's own keys from config.toml;
    `host` is the facade (`server.facade.Facade`) through which a plugin acts on the server."""

    name: str = ""

    def __init__(self, host: Any, settings: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.settings: dict[str, Any] = dict(settings or {})
        self.log = logging.getLogger(f"stratus.plugin.{self.name or type(self).__name__}")

    async def start(self) -> None:
        """Called once the server listens."""

    async def stop(self) -> None:
        """Called when the server shuts down."""


@dataclass
class _Loaded:
    plugin: Plugin
    rooms: tuple[re.Pattern, ...]

    def serves(self, room_id: str) -> bool:
        return any(pattern.fullmatch(room_id) for pattern in self.rooms)


def _room_patterns(rooms: Iterable[str] | None) -> tuple[re.Pattern, ...]:
    return tuple(compile_glob(p) for p in (rooms or ["*"]))


def import_object(spec: str) -> Any:
    """The object named by a "module:Attr" string."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{spec!r} is not a 'module:Class' string")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for {spec!r}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no {attribute!r} (from {spec!r})") from None


HookEntry = tuple["_Loaded", Callable, _Hook]


class PluginManager:
    """Loaded plugins and their hooks, in order; the core and protocols call into it."""

    def __init__(self, host: Any) -> None:
        self.host = host
        self.loaded: list[_Loaded] = []
        self._hooks: dict[str, list[HookEntry]] = {}
        # Called with the hooks of each plugin added, e.g. to register its CL4 commands.
        self.added_listeners: list[Callable[[list[HookEntry]], None]] = []
        self._clients: dict[Any, Client] = {}
        self._started = False

    # Registration

    def add(self, plugin: type[Plugin] | Plugin, settings: Mapping[str, Any] | None = None,
            rooms: Iterable[str] | None = None) -> Plugin:
        """Register a plugin class (instantiated with `settings`) or instance.

        Call it before `Server.start()`; its CL4 commands are checked at once (a built-in name
        without replace=True raises ValueError).
        """
        if self._started:
            raise RuntimeError("plugins must be added before Server.start()")
        instance = plugin(self.host, settings) if isinstance(plugin, type) else plugin
        if not isinstance(instance, Plugin):
            raise TypeError(f"{plugin!r} is not a stratus Plugin")
        loaded = _Loaded(instance, _room_patterns(rooms))
        # Plugins are added one after another and each one's methods are visited in definition
        # order, so every hook list ends up in the documented order without sorting.
        found = []
        for name in _definition_order(type(instance)):
            for hook in getattr(getattr(type(instance), name, None), _HOOKS, ()):
                found.append((loaded, getattr(instance, name), hook))
        for listener in self.added_listeners:
            listener(found)  # may refuse the plugin (raises) before anything is registered
        self.loaded.append(loaded)
        for entry in found:
            self._hooks.setdefault(entry[2].kind, []).append(entry)
        return instance

    def load_config(self, entries: list[dict[str, Any]]) -> None:
        """Load `[[plugins]]` tables: `use = "module:Class"`, optional `rooms`, settings."""
        for index, entry in enumerate(entries):
            where = f"[[plugins]] #{index + 1}"
            spec = entry.get("use")
            if not isinstance(spec, str):
                raise ValueError(f"{where} needs use = \"module:Class\"")
            rooms = entry.get("rooms", ["*"])
            if not (isinstance(rooms, list) and all(isinstance(r, str) for r in rooms)):
                raise ValueError(f"{where} ({spec}): rooms must be a list of strings")
            settings = {k: v for k, v in entry.items() if k not in ("use", "rooms")}
            try:
                cls = import_object(spec)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                raise ValueError(f"{where}: {spec} is not a Plugin subclass")
            try:
                self.add(cls, settings, rooms)
            except Exception as exc:  # a plugin's __init__ may raise anything; start-up says why
                raise ValueError(f"{where} ({spec}): {type(exc).__name__}: {exc}") from None

    def hooks(self, kind: str) -> list[tuple[_Loaded, Callable, _Hook]]:
        """Registered hooks of one kind, in order."""
        return self._hooks.get(kind, [])

    # Lifecycle

    async def start(self) -> None:
        """Start every plugin in order; a failure stops start-up with the plugin's name."""
        self._started = True
        for loaded in self.loaded:
            try:
                await loaded.plugin.start()
            except Exception as exc:
                raise ValueError(
                    f"plugin {plugin_name(loaded)} failed to start: {type(exc).__name__}: {exc}"
                ) from exc

    async def stop(self) -> None:
        for loaded in reversed(self.loaded):
            try:
                await loaded.plugin.stop()
            except Exception:
                log.exception("plugin %s failed to stop", plugin_name(loaded))

    # Dispatch

    def client(self, connection: Any) -> Client:
        """The plugin-facing view of a connection (one per connection while it is open)."""
        view = self._clients.get(connection)
        if view is None:
            view = Client(connection)
            if connection.state != State.CLOSED:
                self._clients[connection] = view
        return view

    def find_client(self, client_id: int) -> Client | None:
        """The view of the open connection with this id, if any."""
        for connection, view in self._clients.items():
            if connection.id == client_id:
                return view
        return None

    def forget(self, connection: Any) -> None:
        """The connection ended: drop its view."""
        self._clients.pop(connection, None)

    def connected(self, connection: Any) -> None:
        for loaded, method, _ in self.hooks("connect"):
            self._call(loaded, method, self.client(connection))

    def disconnected(self, connection: Any) -> None:
        """Run on_disconnect hooks, then forget the connection's view."""
        # Like on_connect, not filtered by `rooms`: every on_connect gets its on_disconnect.
        for loaded, method, _ in self.hooks("disconnect"):
            self._call(loaded, method, self.client(connection))
        self._clients.pop(connection, None)

    def handshake(self, connection: Any, room_id: str | None = None) -> Any:
        """Run handshake hooks: None (accepted), a `Refuse`, or a future of either (when a hook
        is `async`)."""
        client = self.client(connection)
        pending = []
        for loaded, method, _ in self.hooks("handshake"):
            if room_id is not None and not loaded.serves(room_id):
                continue
            try:
                outcome = method(client)
            except Refuse as refusal:
                return refusal
            except Exception:
                log.exception("plugin %s failed in %s", plugin_name(loaded), method.__name__)
                continue
            if inspect.isawaitable(outcome):
                pending.append((loaded, method, outcome))
        if pending:
            return asyncio.ensure_future(self._await_handshakes(pending))
        return None

    @staticmethod
    async def _await_handshakes(pending: list) -> Refuse | None:
        for loaded, method, outcome in pending:
            try:
                await outcome
            except Refuse as refusal:
                return refusal
            except Exception:
                log.exception("plugin %s failed in %s", plugin_name(loaded), method.__name__)
        return None

    def variable_hooks(self, room_id: str) -> list[Callable[[VariableWrite], Any]]:
        """Variable-write hooks that apply to one room, in order (computed once per room)."""
        selected = []
        for loaded, method, hook in self.hooks("variable"):
            if loaded.serves(room_id):
                selected.append(_VariableHook(loaded, method, hook.target))
        return selected

    @staticmethod
    def _call(loaded: _Loaded, method: Callable, *args: Any) -> Any:
        try:
            outcome = method(*args)
            if inspect.isawaitable(outcome):
                return asyncio.ensure_future(_logged(loaded, method, outcome))
            return outcome
        except Exception:
            log.exception("plugin %s failed in %s", plugin_name(loaded), method.__name__)
            return None


class _VariableHook:
    """One `on_variable` hook bound to a room: returns the new value, or DROP."""

    __slots__ = ("loaded", "method", "pattern")

    def __init__(self, loaded: _Loaded, method: Callable, pattern: re.Pattern) -> None:
        self.loaded = loaded
        self.method = method
        self.pattern = pattern

    def __call__(self, write: VariableWrite) -> Any:
        name = write.name
        if not (isinstance(name, str) and self.pattern.fullmatch(name)):
            return write.value
        try:
            outcome = self.method(write)
        except Refuse:
            return DROP
        except Exception:
            log.exception("plugin %s failed in %s; write refused", plugin_name(self.loaded),
                          self.method.__name__)
            return DROP
        return write.value if outcome is None else outcome


def discard(awaitable: Any) -> None:
    """Close an awaitable that will never run (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # a coroutine that will never run: no "never awaited" warning


async def _logged(loaded: _Loaded, method: Callable, awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception:
        log.exception("plugin %s failed in %s", plugin_name(loaded), method.__name__)
        return None


def plugin_name(loaded: _Loaded) -> str:
    """A loaded plugin's name for log lines."""
    plugin = loaded.plugin
    return plugin.name or type(plugin).__qualname__


def _definition_order(cls: type) -> list[str]:
    names: list[str] = []
    for klass in reversed(cls.__mro__):
        for name in vars(klass):
            if name in names:
                names.remove(name)
            names.append(name)
    return names
