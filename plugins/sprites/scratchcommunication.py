"""In-server plugins for the scratchcommunication sprite: cloud sockets and cloud requests.

`CloudSockets` serves the unmodified sprite (docs/specs/cloud-sockets.md Part A) on the rooms
it is configured for. It claims ``☁ FROM_CLIENT`` (writes are consumed, never stored, counted
or relayed), feeds them to the sending connection's `SocketSessions`, and writes
``☁ TO_CLIENT_1..4`` to that connection only, paced by one loop timer per connection. Client
ids are bound to the websocket that connected them (Part C §13).

Subclass it and override `on_message` (and optionally `on_connect` / `on_session_end`) for your
own protocol, replying with `await self.send(client, session_id, text)`. `CloudRequests` is
such a subclass: it answers the sprite's cloud requests with `@request` handler methods.

Configuration (config.toml)::

    [[plugins]]
    use = "plugins.sprites.scratchcommunication:CloudRequests"
    rooms = ["123456"]
    handlers = "examples.sprite_handlers:Handlers"
    ec_key_file = "data/keys/ec.key"      # python -m server keygen --scheme ec --out ...
    # rsa_key_file = "data/keys/rsa.key"  # only for old projects set to RSA
    packet_interval = 0.1                  # seconds between sets to one client (>= 0.05)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from plugins.api import (
    DROP,
    Client,
    Plugin,
    VariableWrite,
    on_disconnect,
    on_variable,
    printable,
)

from .cloud_socket import (
    CONNECTED,
    DROPPED,
    EXPIRED,
    FROM_CLIENT,
    MESSAGE,
    SAFE_CONNECT_DIGITS,
    TYPE_DATA,
    ClientIdRegistry,
    HandshakeReplayCache,
    MessageTooLong,
    SocketEvent,
    SocketLimits,
    SocketSessions,
    UnknownClient,
    parse_client_packet,
)
from .request_api import (
    DEFAULT_TIMEOUT,
    HANDLER_ERROR_REPLY,
    RequestContext,
    RequestTimeout,
    collect_handlers,
    handle_text_request,
)
from .runtime import (
    ConnectionState,
    PacedWriter,
    load_handler_object,
    packet_interval,
    read_key_file,
    setting_float,
    setting_int,
)

__all__ = ["CloudRequests", "CloudSockets", "MessageTooLong", "UnknownClient"]

_NOTEWORTHY_DROPS = (
    "client id bound to another connection",
    "replayed handshake",
    "too many recent secure connects",
)


class PerMinuteLimit:
    """At most `per_minute` events in any 60 seconds (a sliding window of their times)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Count one event at `now` if the limit allows it; False (not counted) otherwise."""
        while self._times and self._times[0] <= now - 60:
            self._times.popleft()
        if len(self._times) >= self.per_minute:
            return False
        self._times.append(now)
        return True


class _SocketConnection(ConnectionState):
    def __init__(self, client: Any, writer: PacedWriter, sessions: SocketSessions,
                 secure_connects_per_minute: int) -> None:
        super().__init__(client, writer)
        self.sessions = sessions
        # An RSA key recovery costs tens of ms of CPU: one connection may not ask for many.
        self.secure_connects = PerMinuteLimit(secure_connects_per_minute)

    def close(self) -> None:
        super().close()
        self.sessions.close()


class CloudSockets(Plugin):
    """scratchcommunication cloud sockets, served by the server itself (one session per CID).

    Settings: `ec_key_file`, `rsa_key_file` (paths of private keys; without either, only
    insecure connects work), `packet_interval` (0.1), `max_value_length` (100000; keep it at
    or below the server's [scratch] max_value_length), `session_idle_timeout` (1800),
    `max_sessions` (4 per connection), `max_message_chars` (500000), `max_fragments` (16),
    `fragment_ttl` (60), `connect_max_age` (300), `clock_skew_allowance` (0),
    `expiry_interval` (30), `max_pending_messages` (8 handler tasks per connection),
    `secure_connects_per_minute` (12 per connection), `total_secure_connects_per_minute` (600
    for the whole plugin: every connection and room together).
    """

    name = "cloud-sockets"
    known_settings = frozenset({
        "ec_key_file", "rsa_key_file", "packet_interval", "max_value_length",
        "session_idle_timeout", "max_sessions", "max_message_chars", "max_fragments",
        "fragment_ttl", "connect_max_age", "clock_skew_allowance", "expiry_interval",
        "max_pending_messages", "secure_connects_per_minute", "total_secure_connects_per_minute",
    })

    def __init__(self, host: Any, settings: Any = None) -> None:
        super().__init__(host, settings)
        unknown = set(self.settings) - self.known_settings
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        settings = self.settings
        interval = packet_interval(settings)
        self.limits = SocketLimits(
            max_sessions=setting_int(settings, "max_sessions", 4),
            max_message_chars=setting_int(settings, "max_message_chars", 500_000),
            max_fragments=setting_int(settings, "max_fragments", 16),
            fragment_ttl=setting_float(settings, "fragment_ttl", 60.0, minimum=1.0),
            session_idle_timeout=setting_float(
                settings, "session_idle_timeout", 1800.0, minimum=1.0
            ),
            connect_max_age=setting_float(settings, "connect_max_age", 300.0, minimum=1.0),
            clock_skew_allowance=setting_float(
                settings, "clock_skew_allowance", 0.0, minimum=0.0
            ),
            max_value_length=setting_int(settings, "max_value_length", 100_000, minimum=256),
            min_interval=interval,
        )
        self.expiry_interval = setting_float(settings, "expiry_interval", 30.0, minimum=0.05)
        self.max_pending_messages = setting_int(settings, "max_pending_messages", 8)
        self.secure_connects_per_minute = setting_int(settings, "secure_connects_per_minute", 12)
        self.ec_key = self.rsa_key = None
        if settings.get("ec_key_file"):
            self.ec_key = read_key_file(str(settings["ec_key_file"]), "EC", self.log)
        if settings.get("rsa_key_file"):
            self.rsa_key = read_key_file(str(settings["rsa_key_file"]), "RSA", self.log)
        self.total_secure_connects_per_minute = setting_int(
            settings, "total_secure_connects_per_minute", 600
        )
        self._all_secure_connects = PerMinuteLimit(self.total_secure_connects_per_minute)
        self._refusals_logged_at = -math.inf
        # Every handshake is remembered for its whole replay window, never evicted early; no
        # more can complete in that window than the global limit lets start, so the cache can
        # be sized to hold them all (3,600 blobs of 32 bytes by default).
        window = self.limits.replay_window
        self.replay_cache = HandshakeReplayCache(
            window, capacity=self.total_secure_connects_per_minute * math.ceil(window / 60)
        )
        self._registries: dict[str, ClientIdRegistry] = {}
        self._connections: dict[Client, _SocketConnection] = {}
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._stopping = False

    # ------------------------------------------------------------------ overridable API
    async def on_connect(self, client: Client, session_id: str, scheme: str) -> None:
        """A sprite connected (scheme "insecure", "EC" or "RSA"); nothing is sent back."""

    async def on_message(self, client: Client, session_id: str, text: str) -> None:
        """A complete message from session `session_id` of `client`; override to handle it."""
        self.log.debug("message of %d characters from session %s (no handler)", len(text),
                       session_id)

    async def on_session_end(self, client: Client, session_id: str, reason: str) -> None:
        """A session ended: "idle" (expired) or "closed" (the websocket closed)."""

    async def send(self, client: Client, session_id: str, text: str) -> bool:
        """Send one message to a session; True once its last packet is written.

        Raises `UnknownClient` if the session does not exist on this connection and
        `MessageTooLong` if it cannot be sent intact (insecure messages: two packets at most).
        """
        connection = self._connections.get(client)
        if connection is None:
            raise UnknownClient(session_id)
        planned = connection.sessions.send(session_id, text, time.time())
        return await connection.writer.enqueue(planned)

    def session_ids(self, client: Client) -> list[str]:
        """The client ids with a session on this connection."""
        connection = self._connections.get(client)
        return connection.sessions.client_ids if connection else []

    def session_scheme(self, client: Client, session_id: str) -> str | None:
        """"insecure", "EC" or "RSA" for a live session; None if there is none."""
        connection = self._connections.get(client)
        session = connection.sessions.session(session_id) if connection else None
        return session.scheme if session else None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._expiry_timer = self.host.loop.call_later(self.expiry_interval, self._expire_all)

    async def stop(self) -> None:
        self._stopping = True
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        for client in list(self._connections):
            self._forget(client)

    def _expire_all(self) -> None:
        now = time.time()
        try:
            for connection in list(self._connections.values()):
                for event in connection.sessions.expire(now):
                    self._handle_event(connection, event)
        finally:
            self._expiry_timer = self.host.loop.call_later(self.expiry_interval,
                                                           self._expire_all)

    # ------------------------------------------------------------------ hooks
    @on_variable(FROM_CLIENT)
    def _claim_from_client(self, write: VariableWrite) -> Any:
        """Consume a FROM_CLIENT write: never stored, counted or relayed (spec §13.3)."""
        client = write.client
        if client is None or write.room is None:
            return DROP
        connection = self._connection(client, write.room)
        now = time.time()
        packet = parse_client_packet(write.value)
        if (
            packet is not None
            and packet.packet_type == TYPE_DATA
            and packet.payload.startswith(SAFE_CONNECT_DIGITS)
            and not self._allow_secure_connect(connection, now)
        ):
            return DROP
        for event in connection.sessions.receive(write.value, now):
            self._handle_event(connection, event)
        return DROP

    @on_variable("☁ TO_CLIENT_*")
    def _refuse_to_client(self, write: VariableWrite) -> Any:
        """Clients may not write the server's reply variables in a served room."""
        return DROP

    @on_disconnect
    def _disconnected(self, client: Client) -> None:
        self._forget(client)

    # ------------------------------------------------------------------ internals
    def _allow_secure_connect(self, connection: _SocketConnection, now: float) -> bool:
        """The per-connection, then the global secure-connect rate limit; logs a refusal."""
        client = connection.client
        if not connection.secure_connects.allow(now):
            self.log.info("%s: too many secure connects; one dropped", printable(client.address))
            return False
        if not self._all_secure_connects.allow(now):
            if now - self._refusals_logged_at >= 60:  # once a minute, however many come
                self._refusals_logged_at = now
                self.log.warning("more than %d secure connects a minute in total; refusing "
                                 "them (last from %s)", self.total_secure_connects_per_minute,
                                 printable(client.address))
            return False
        return True

    def _connection(self, client: Client, room: str) -> _SocketConnection:
        connection = self._connections.get(client)
        if connection is None:
            registry = self._registries.setdefault(room, ClientIdRegistry())
            sessions = SocketSessions(
                ec_key=self.ec_key,
                rsa_key=self.rsa_key,
                registry=registry,
                replay_cache=self.replay_cache,
                limits=self.limits,
            )
            writer = PacedWriter(self.host.loop, client, self.limits.min_interval)
            connection = self._connections[client] = _SocketConnection(
                client, writer, sessions, self.secure_connects_per_minute
            )
        return connection

    def _forget(self, client: Client) -> None:
        connection = self._connections.pop(client, None)
        if connection is None:
            return
        ended = [] if self._stopping else connection.sessions.client_ids
        connection.close()
        for session_id in ended:
            self._spawn_detached(self.on_session_end(client, session_id, "closed"))
        room = connection.room
        if room is not None and not any(c.room == room for c in self._connections.values()):
            self._registries.pop(room, None)

    def _handle_event(self, connection: _SocketConnection, event: SocketEvent) -> None:
        client = connection.client
        if event.kind == MESSAGE:
            if len(connection.tasks) >= self.max_pending_messages:
                self.log.info("%s: too many unanswered messages; one dropped",
                              printable(client.address))
                return
            self._spawn(connection, self.on_message(client, event.client_id, event.detail))
        elif event.kind == CONNECTED:
            self.log.debug("%s connected session %s (%s)", printable(client.address),
                           event.client_id, event.detail)
            self._spawn_detached(self.on_connect(client, event.client_id, event.detail))
        elif event.kind == EXPIRED:
            self._spawn_detached(self.on_session_end(client, event.client_id, event.detail))
        elif event.kind == DROPPED:
            level = 20 if event.detail in _NOTEWORTHY_DROPS else 10  # INFO / DEBUG
            self.log.log(level, "%s: packet for session %s dropped: %s",
                         printable(client.address), event.client_id or "-", event.detail)

    def _spawn(self, connection: ConnectionState, coroutine: Any) -> None:
        task = asyncio.ensure_future(self._guarded(coroutine))
        connection.tasks.add(task)
        task.add_done_callback(connection.tasks.discard)

    def _spawn_detached(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(self._guarded(coroutine))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _guarded(self, coroutine: Any) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            self.log.exception("plugin code failed")


_BACKGROUND: set[asyncio.Task] = set()


class CloudRequests(CloudSockets):
    """scratchcommunication cloud requests: each request message gets exactly one reply.

    Extra settings: `handlers` ("module:Class" whose `@request` methods answer requests;
    `@request` methods of a subclass of this plugin count too) and `handler_timeout`
    (seconds, default 10; a handler that takes longer is answered `Something went wrong.`).
    """

    name = "cloud-requests"
    known_settings = CloudSockets.known_settings | {"handlers", "handler_timeout"}

    def __init__(self, host: Any, settings: Any = None) -> None:
        super().__init__(host, settings)
        self.handler_timeout = setting_float(
            self.settings, "handler_timeout", DEFAULT_TIMEOUT, minimum=0.001
        )
        self.handler_object = load_handler_object(self.settings.get("handlers"), self)
        self.handlers: dict[str, Callable] = collect_handlers(self.handler_object, self)
        if not self.handlers:
            self.log.warning("no @request handlers configured; every request gets a "
                             "syntax-error reply")

    async def on_message(self, client: Client, session_id: str, text: str) -> None:
        """Run the request and send its one reply over the same session."""
        context = RequestContext(client, client.room, client.username, session_id=session_id)
        reply = await handle_text_request(
            text, self.handlers, timeout=self.handler_timeout, context=context,
            on_error=self._handler_failed,
        )
        try:
            await self.send(client, session_id, reply)
        except MessageTooLong:
            self.log.warning("reply of %d characters does not fit an insecure message; "
                             "answered with an error", len(reply))
            await self.send(client, session_id, HANDLER_ERROR_REPLY)
        except UnknownClient:
            self.log.debug("session %s ended before its reply", session_id)

    def _handler_failed(self, error: BaseException, name: str) -> None:
        if isinstance(error, RequestTimeout):
            self.log.warning("request %s timed out after %s s", printable(name),
                             self.handler_timeout)
        else:
            self.log.error("request %s failed", printable(name), exc_info=error)
