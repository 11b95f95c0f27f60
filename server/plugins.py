"""The plugin API: classes whose decorated methods add commands and behaviour.

A plugin is a subclass of `Plugin`. Its methods are registered with decorators:

- `@on_connect` / `@on_disconnect` (client): a WebSocket connection opened / ended.
- `@on_handshake` (client): a client identified itself (Scratch handshake, CL4 handshake).
  Raise `Refuse` to turn it away; for Scratch clients an `async def` hook may take its time
  (messages that arrive meanwhile are queued and replayed in order). CL4 hooks must decide
  synchronously (an awaitable returned for a CL4 client is discarded and logged).
- `@on_variable(pattern)` (write): a Scratch variable write whose name matches the glob.
  Return None to keep the value, a new value to replace it, or `DROP` to refuse the write.
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
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocols.cl4.codes import Status, StatusCode

# Re-exported for plugins: client text in their log lines goes through it too.
from .logsafe import printable as printable

if TYPE_CHECKING:
    from protocols.cl4.engine import Cl4Engine

    from .app import Server
    from .connection import Connection

log = logging.getLogger("stratus.plugins")

_HOOKS = "__stratus_hooks__"


class _Drop:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DROP"


DROP: Any = _Drop()
"""Returned by an `on_variable` hook to refuse a write (not stored, not relayed)."""


class Refuse(Exception):
    """Raised by a hook to turn a client or message away.

    For CL4, `status` is the statuscode the sender gets (default E:108 Refused) with optional
    `details`. For a Scratch handshake, the connection is closed with `close_code` (4002 by
    default, which makes TurboWarp ask for another username).
    """

    def __init__(self, status: Any = None, *, details: Any = None, close_code: int = 4002):
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
    return _tag("variable", target=re.compile(fnmatch.translate(pattern), re.DOTALL))


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


class CommandRequest:
    """A CL4 command being handled by a plugin: the message, its sender, and replies."""

    __slots__ = ("_request", "client")

    def __init__(self, request: Any, client: Client) -> None:
        self._request = request
        self.client = client

    @property
    def message(self) -> dict:
        """The validated message (a dict; treat it as read-only)."""
        return self._request.message

    @property
    def listener(self) -> Any:
        """The request's listener, or MISSING."""
        return self._request.listener

    @property
    def rooms(self) -> list[str]:
        """The rooms the message targets: its `rooms`, or every room the sender is in."""
        from protocols.cl4 import target_rooms

        return target_rooms(self._request)

    def reply(self, status: Status = None, *, details: Any = None, val: Any = None) -> None:
        """Answer the sender with a statuscode (default I:100 | OK) carrying its listener."""
        self._request.reply(status or StatusCode.OK, details=details, val=val)

    def send_room(self, room: str, message: dict) -> int:
        """Send a CL4 message to every member of `room`."""
        return self.client._connection.server.cl4.send_room(room, message)


def custom_status(kind: str, number: int, text: str) -> Status:
    """A server-defined CL4 status code, e.g. custom_status("E", 120, "Cooldown")."""
    if kind not in ("I", "E"):
        raise ValueError("kind must be 'I' (information) or 'E' (error)")
    if number < 116 or 200 <= number <= 204:
        raise ValueError("custom status numbers must be >= 116 and not 200-204 (CL4 spec §7)")
    return Status(kind, number, text)


@dataclass(slots=True)
class VariableWrite:
    """A Scratch variable write on its way into a room."""

    client: Client | None
    room: str
    name: Any
    value: Any


class Client:
    """What plugins see of one connection."""

    __slots__ = ("_connection", "data")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.data: dict[str, Any] = {}  # free for plugins' per-client state

    @property
    def protocol(self) -> str | None:
        """"scratch", "cl4", or None before the first message."""
        session = self._connection.session
        return getattr(session, "protocol_name", None)

    @property
    def address(self) -> str:
        """The client's IP address (after trusted-proxy processing)."""
        return self._connection.peer

    @property
    def username(self) -> str | None:
        """The Scratch handshake username or CL4 username, if any (unauthenticated)."""
        return getattr(self._connection.session, "username", None)

    @property
    def room(self) -> str | None:
        """The Scratch room (project id) this client joined, if any."""
        room = self._connection.room
        return room.id if room is not None else None

    @property
    def open(self) -> bool:
        """True while messages can be sent to the client."""
        from .connection import OPEN

        return self._connection.state == OPEN

    def header(self, name: str) -> str:
        """A request header of the WebSocket upgrade, or ""."""
        return self._connection.header(name)

    def send_variable(self, name: str, value: Any) -> None:
        """Send this client alone a Scratch `set`, at once: not stored, not seen by others."""
        from protocols.scratch import encode_set, variable_key

        key = variable_key(name)
        self._connection.send_text(encode_set(key, value))

    def send(self, message: dict) -> None:
        """Send a CL4 client one message."""
        send = getattr(self._connection.session, "send_message", None)
        if send is None:
            raise TypeError("send() is for CL4 clients; use send_variable() for Scratch")
        send(message)

    def close(self, code: int = 1000) -> None:
        """Close the connection with `code`."""
        session = self._connection.session
        if session is not None and hasattr(session, "close"):
            session.close(code)
        else:
            self._connection.close(code)

    def __repr__(self) -> str:
        return f"<Client {self.protocol} {printable(self.username, 40)} {printable(self.address)}>"


class Plugin:
    """Base class of plugins. `settings` holds the plugin's own keys from config.toml."""

    name: str = ""

    def __init__(self, host: PluginHost, settings: Mapping[str, Any] | None = None) -> None:
        self.host = host
        self.settings: dict[str, Any] = dict(settings or {})
        self.log = logging.getLogger(f"stratus.plugin.{self.name or type(self).__name__}")

    async def start(self) -> None:
        """Called once the server listens."""

    async def stop(self) -> None:
        """Called when the server shuts down."""


class PluginHost:
    """What plugins can do with the server: read rooms, write variables, send messages."""

    def __init__(self, server: Server) -> None:
        self._server = server

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._server.loop

    def clients(self) -> list[Client]:
        """Every connected client."""
        return [self._server.plugins.client(c) for c in self._server.connections]

    def scratch_rooms(self) -> list[str]:
        """Ids of the Scratch rooms in memory."""
        return list(self._server.scratch_rooms.rooms)

    def scratch_variables(self, room_id: str) -> dict[Any, Any]:
        """A copy of a Scratch room's variables by name, in order (loaded if stored)."""
        from protocols.scratch import key_to_name

        room = self._server.scratch_rooms.open(room_id)
        if room is None:
            return {}
        return {key_to_name(key): value for key, value in room.values.items()}

    def scratch_members(self, room_id: str) -> list[Client]:
        """The clients in a Scratch room."""
        room = self._server.scratch_rooms.get(room_id)
        if room is None:
            return []
        return [self._server.plugins.client(member) for member in room.members]

    def set_scratch_variable(self, room_id: str, name: str, value: Any) -> bool:
        """Write a variable as the server: stored, and sent to every member of the room."""
        from protocols.scratch import variable_key

        room = self._server.scratch_rooms.open(room_id)
        if room is None:
            return False
        return room.set(variable_key(name), value, None)

    def cl4_send_room(self, room: str, message: dict) -> int:
        """Send a CL4 message to every member of a CL4 room; returns how many got it."""
        return self._server.cl4.send_room(room, message)

    def cl4_broadcast(self, message: dict) -> int:
        """Send a CL4 message to every CL4 client."""
        return self._server.cl4.broadcast(message)

    def cl4_rooms(self) -> dict[str, list[Client]]:
        """CL4 rooms and their members."""
        engine = self._server.cl4.engine
        client = self._server.plugins.client
        return {room: [client(m.connection) for m in engine.room_members(room)]
                for room in engine.rooms()}


@dataclass
class _Loaded:
    plugin: Plugin
    rooms: tuple[re.Pattern, ...]

    def serves(self, room_id: str) -> bool:
        return any(pattern.fullmatch(room_id) for pattern in self.rooms)


def _room_patterns(rooms: Iterable[str] | None) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(fnmatch.translate(p), re.DOTALL) for p in (rooms or ["*"]))


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


class PluginManager:
    """Loaded plugins and their hooks, in order; the core and protocols call into it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.host = PluginHost(server)
        self.loaded: list[_Loaded] = []
        self._hooks: dict[str, list[tuple[_Loaded, Callable, _Hook]]] = {}
        self._engine: Cl4Engine | None = None
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
        if self._engine is not None:
            self._register_commands(self._engine, [f for f in found if f[2].kind == "command"])
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

    def attach_cl4(self, engine: Cl4Engine) -> None:
        """Register plugin CL4 commands and pre-dispatch hooks with the engine.

        Plugins added later (from code, before start) are registered as they are added.
        """
        self._register_commands(engine, self.hooks("command"))
        self._engine = engine
        engine.pre_dispatch_hooks.append(self._pre_dispatch)

    def _register_commands(self, engine: Cl4Engine, hooks: list) -> None:
        for loaded, method, hook in hooks:
            name = hook.target
            if engine.command(name) is not None and not hook.replace:
                raise ValueError(
                    f"plugin {_name(loaded)}: CL4 command {name!r} exists; use "
                    f"@on_command({name!r}, replace=True) to replace it"
                )
            engine.register_command(name, self._command_handler(loaded, method), hook.schema,
                                    requires_username=hook.requires_username, replace=True)

    def _pre_dispatch(self, session: Any, message: dict) -> Any:
        """CL4: on_handshake hooks (first handshake only), then before_command hooks."""
        before = self.hooks("before_command")
        handshakes = self.hooks("handshake")
        if not before and not handshakes:
            return message
        command = message.get("cmd")
        client = self.client(session.connection)
        try:
            if handshakes and command == "handshake" and not session.handshake_done:
                for loaded, method, _ in handshakes:
                    try:
                        outcome = method(client)
                    except Refuse:
                        raise
                    except Exception:  # as for Scratch: logged, the hook is skipped
                        log.exception("plugin %s failed in %s", _name(loaded), method.__name__)
                        continue
                    if inspect.isawaitable(outcome):
                        _discard(outcome)
                        log.error("plugin %s: async on_handshake hooks run for Scratch clients "
                                  "only; %s was skipped for a CL4 client", _name(loaded),
                                  method.__name__)
            for loaded, method, hook in before:
                if hook.target and command not in hook.target:
                    continue
                rewritten = method(client, message)
                if inspect.isawaitable(rewritten):
                    _discard(rewritten)
                    raise TypeError(f"plugin {_name(loaded)}: before_command hook "
                                    f"{method.__name__} must not be async")
                if isinstance(rewritten, dict):
                    message = rewritten
        except Refuse as refusal:
            return _reject(refusal)
        return message

    def _command_handler(self, loaded: _Loaded, method: Callable) -> Callable:
        def handle(request: Any) -> None:
            try:
                outcome = method(CommandRequest(request, self.client(request.session.connection)))
            except Refuse as refusal:
                reject = _reject(refusal)
                request.reply(reject.status, details=reject.details)
                return
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                task.add_done_callback(lambda done: _command_done(loaded, method, request, done))

        return handle

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
                    f"plugin {_name(loaded)} failed to start: {type(exc).__name__}: {exc}"
                ) from exc

    async def stop(self) -> None:
        for loaded in reversed(self.loaded):
            try:
                await loaded.plugin.stop()
            except Exception:
                log.exception("plugin %s failed to stop", _name(loaded))

    # Dispatch

    def client(self, connection: Connection) -> Client:
        """The plugin-facing view of a connection (one per connection)."""
        view = connection.plugin_client
        if view is None:
            view = connection.plugin_client = Client(connection)
        return view

    def connected(self, connection: Connection) -> None:
        for loaded, method, _ in self.hooks("connect"):
            self._call(loaded, method, self.client(connection))

    def disconnected(self, connection: Connection) -> None:
        # Like on_connect, not filtered by `rooms`: every on_connect gets its on_disconnect.
        for loaded, method, _ in self.hooks("disconnect"):
            self._call(loaded, method, self.client(connection))

    def handshake(self, connection: Connection, room_id: str | None = None) -> Any:
        """Run handshake hooks: None (accepted), a `Refuse`, or an awaitable of either."""
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
                log.exception("plugin %s failed in %s", _name(loaded), method.__name__)
                continue
            if inspect.isawaitable(outcome):
                pending.append((loaded, method, outcome))
        if pending:
            return self._await_handshakes(pending)
        return None

    @staticmethod
    async def _await_handshakes(pending: list) -> Refuse | None:
        for loaded, method, outcome in pending:
            try:
                await outcome
            except Refuse as refusal:
                return refusal
            except Exception:
                log.exception("plugin %s failed in %s", _name(loaded), method.__name__)
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
            log.exception("plugin %s failed in %s", _name(loaded), method.__name__)
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
        except Exception:
            log.exception("plugin %s failed in %s; write refused", _name(self.loaded),
                          self.method.__name__)
            return DROP
        return write.value if outcome is None else outcome


def _reject(refusal: Refuse) -> Any:
    """The engine's Reject for a Refuse; a non-Status `status` becomes E:108 details."""
    from protocols.cl4.engine import Reject

    status, details = refusal.status, refusal.details
    if not isinstance(status, Status):
        if status is not None and details is None:
            details = status
        status = StatusCode.REFUSED
    return Reject(status, details)


def _discard(awaitable: Any) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()  # a coroutine that will never run: no "never awaited" warning


def _command_done(loaded: _Loaded, method: Callable, request: Any, done: asyncio.Future) -> None:
    """An async on_command handler finished: answer a Refuse or an exception like a sync one."""
    if done.cancelled():
        return
    error = done.exception()
    if error is None:
        return
    if isinstance(error, Refuse):
        reject = _reject(error)
        request.reply(reject.status, details=reject.details)
        return
    log.error("plugin %s failed in %s", _name(loaded), method.__name__, exc_info=error)
    request.reply(StatusCode.INTERNAL_SERVER_ERROR)


async def _logged(loaded: _Loaded, method: Callable, awaitable: Any) -> Any:
    try:
        return await awaitable
    except Exception:
        log.exception("plugin %s failed in %s", _name(loaded), method.__name__)
        return None


def _name(loaded: _Loaded) -> str:
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
