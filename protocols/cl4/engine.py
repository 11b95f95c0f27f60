"""The Sans-I/O CL4 engine: clients, rooms, dispatch and the plugin seams.

The core owns the sockets. It calls `connect`, `receive` (one text message at a time) and
`disconnect`; the engine answers through the injected `send(connection, message)` and
`close(connection, code, reason)` callables and never blocks, sleeps or awaits.
"""

from __future__ import annotations

import logging
import time
import uuid as uuid_module
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from snowflake import SnowflakeGenerator

from protocols.cl4.codes import Status, StatusCode
from protocols.cl4.commands import BUILTIN_COMMANDS
from protocols.cl4.limits import TokenBucket
from protocols.cl4.options import Cl4Options
from protocols.cl4.request import (
    DEFAULT_ROOM,
    MISSING,
    Cl4Command,
    Cl4Request,
    CommandHandler,
    Reject,
    listener_of,
)
from protocols.cl4.schema import DEFAULT_SCHEMA, Cl4Schema
from protocols.cl4.state import Cl4ClientState
from protocols.cl4.wire import (
    JsonDepthError,
    JsonError,
    encode_message,
    parse_json,
    parse_message,
    too_deep_fields,
)
from server.codes import CloseCode
from server.logsafe import printable

__all__ = [
    "MISSING",
    "Cl4Command",
    "Cl4Engine",
    "Cl4Request",
    "Close",
    "CommandHandler",
    "GvarObserver",
    "PreDispatchHook",
    "PresenceObserver",
    "Reject",
    "Send",
]

logger = logging.getLogger("stratus.cl4")

Send = Callable[[Hashable, "dict | str"], None]
Close = Callable[[Hashable, int, str], None]
# (sender, room, name, val) of a gvar delivered in a CL4 room.
GvarObserver = Callable[[Cl4ClientState, str, str, Any], None]
# A client whose message was refused for going over its rate (E:116 or the close after it).
RateLimitedObserver = Callable[[Cl4ClientState], None]
PreDispatchHook = Callable[[Cl4ClientState, dict], "dict | Reject | None"]
# (event, client, room) when a local client's presence changes: "joined" / "left" (room),
# "named" (room None; the username is on the client), "gone" (it disconnected).
PresenceObserver = Callable[[str, Cl4ClientState, "str | None"], None]
# claim(client, username): whether a cluster lets the client take the name, now (True/False)
# or as a future of it (see `Cl4Engine.username_claim`).
UsernameClaim = Callable[[Cl4ClientState, str], Any]

SNOWFLAKE_INSTANCE = 42  # as the reference server (spec §6)
CLOSE_NORMAL = CloseCode.NORMAL
# A client that keeps sending far past its rate limit is closed instead of answered forever.
CLOSE_POLICY_VIOLATION = CloseCode.POLICY_VIOLATION
# Compact JSON turns one character into at most 12 ("\ud83d\ude00"), so a message shorter than
# max_val_bytes / 12 characters cannot carry a too-large val and skips the measurement.
_MAX_EXPANSION = 12
# Messages a client may send while one of its commands waits (one round trip to the cluster,
# at most seconds when it is slow); more is a flood, closed like one (1008).
MAX_WAITING_MESSAGES = 1024


def snowflake_after(last: int, instance: int) -> int:
    """The smallest snowflake above `last` with this instance number (bits 12 to 21), so an id
    made past the generator never borrows another instance's (another node's) numbers."""
    if (last >> 12) & 0x3FF == instance and last & 0xFFF < 0xFFF:
        return last + 1
    return ((last >> 22) + 1) << 22 | instance << 12


class Cl4Engine:
    """CL4 clients and rooms (their own namespace, apart from Scratch rooms) and dispatch."""

    def __init__(
        self,
        send: Send,
        close: Close,
        options: Cl4Options | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.options = options or Cl4Options()
        self._send = send
        self._close = close
        self._clock = clock
        self._sessions: dict[Hashable, Cl4ClientState] = {}
        # Room name -> members in join order (dict as ordered set). Identified clients only.
        self._rooms: dict[str, dict[Cl4ClientState, None]] = {}
        self._by_uuid: dict[str, Cl4ClientState] = {}
        self._by_snowflake: dict[str, Cl4ClientState] = {}
        self._by_username: dict[str, dict[Cl4ClientState, None]] = {}
        self._snowflake_instance = SNOWFLAKE_INSTANCE
        self._snowflakes = SnowflakeGenerator(SNOWFLAKE_INSTANCE)
        self._last_snowflake = 0
        self.disabled_commands: set[str] = set(self.options.disabled_commands)
        self.pre_dispatch_hooks: list[PreDispatchHook] = []
        self.gvar_observers: list[GvarObserver] = []
        self.rate_limited_observers: list[RateLimitedObserver] = []
        # Told about every presence change of a client, e.g. to mirror it on other nodes.
        self.presence_observers: list[PresenceObserver] = []
        # With unique_usernames on a cluster: asks the other nodes before setid names a
        # client (set by the cluster component; None: this engine sees every name).
        self.username_claim: UsernameClaim | None = None
        self._commands: dict[str, Cl4Command] = {}
        for command in BUILTIN_COMMANDS:
            self._commands[command.name] = command

    # -- lifecycle (called by the core) -------------------------------------------------------

    def connect(self, connection: Hashable, ip: str) -> Cl4ClientState:
        """Register a new connection (not yet identified as CL4); `ip` is the resolved address."""
        existing = self._sessions.get(connection)
        if existing is not None:
            return existing
        options = self.options
        now = self._clock()
        message_bucket = None
        if options.messages_per_second > 0:
            message_bucket = TokenBucket(options.messages_per_second, options.message_burst, now)
        setid_bucket = None
        if options.setid_per_minute > 0:
            setid_bucket = TokenBucket(options.setid_per_minute / 60.0, options.setid_burst, now)
        session = Cl4ClientState(
            connection,
            ip,
            self._next_snowflake(),
            str(uuid_module.uuid4()),
            message_bucket,
            setid_bucket,
        )
        if message_bucket is not None and options.max_rate_limited_replies > 0:
            # E:116 replies are forgiven at the allowed message rate: a client sending up to
            # twice the limit is answered forever, a flood drains this bucket within a second.
            session.rate_limited_bucket = TokenBucket(
                options.messages_per_second, options.max_rate_limited_replies, now
            )
        self._sessions[connection] = session
        return session

    def receive(self, connection: Hashable, text: str, parsed: Any = MISSING) -> None:
        """Handle one text message from `connection`; never raises.

        `parsed` is the message already parsed by `detect_cl4` (a connection's first message).
        """
        session = self._sessions.get(connection)
        if session is None or session.closed:
            logger.debug("CL4 message from an unknown or closed connection ignored")
            return
        try:
            self._receive(session, text, parsed)
        except Exception:
            # Only a failing send/close callable gets here; the handlers have their own guard.
            logger.exception("CL4 message handling failed for %r", session)

    def disconnect(self, connection: Hashable) -> None:
        """Forget `connection`: it leaves its rooms (named: `ulist remove` to those left)."""
        session = self._sessions.pop(connection, None)
        if session is None:
            return
        session.closed = True
        self._forget_identity(session)
        for room in list(session.rooms):
            self.unsubscribe(session, room)
            try:
                self.announce_leave(session, room)
            except Exception:
                # A failing send must not leave the client behind in its other rooms.
                logger.exception("CL4 ulist remove for %r failed", session)
        if self.presence_observers and session.identified:
            self._presence("gone", session, None)

    def replace_send(self, send: Send) -> None:
        """Send through `send` from now on (e.g. one that forwards to other nodes)."""
        self._send = send

    def session(self, connection: Hashable) -> Cl4ClientState | None:
        """The session of a connected connection, or None."""
        return self._sessions.get(connection)

    def close(self, session: Cl4ClientState, code: int, reason: str) -> None:
        """Close a client's connection (the core then disconnects it from the engine)."""
        self._close(session.connection, code, reason)

    def claim_username(self, session: Cl4ClientState, username: str) -> Any:
        """Whether `session` may take `username` beyond this engine's own clients: True or
        False, or a future of it when a cluster decides (see `wait_for`)."""
        if self.username_claim is None:
            return True
        return self.username_claim(session, username)

    def wait_for(self, request: Cl4Request, pending: Any, then: Callable[[Any], None]) -> None:
        """Finish `request` later: hold the client's next messages until `pending` (a future)
        is done, then call `then(result)` and handle what arrived meanwhile, in order.

        `then` is skipped if the client left meanwhile; if it raises (or `pending` failed), the
        client gets E:105 as for a failing command.
        """
        session = request.session
        session.waiting = []
        pending.add_done_callback(lambda done: self._resume(request, done, then))

    def _resume(self, request: Cl4Request, done: Any, then: Callable[[Any], None]) -> None:
        session = request.session
        waiting, session.waiting = session.waiting or [], None
        if session.closed:
            return
        try:
            if done.cancelled():
                raise RuntimeError("the wait was cancelled")
            then(done.result())
        except Exception:
            logger.exception("CL4 command %s from %r failed after waiting",
                             printable(str(request.message.get("cmd"))), session)
            self.reply(session, StatusCode.INTERNAL_SERVER_ERROR, request.listener)
        for index, (text, parsed, within_rate) in enumerate(waiting):
            if session.closed:
                return
            if session.waiting is not None:  # a message waits again: the rest wait behind it
                session.waiting[:0] = waiting[index:]
                return
            try:
                self._handle(session, text, parsed, within_rate)
            except Exception:
                logger.exception("CL4 message handling failed for %r", session)

    # -- plugin API ----------------------------------------------------------------------------

    def register_command(
        self,
        name: str,
        handler: CommandHandler,
        schema: Cl4Schema | Mapping[str, Mapping[str, Any]] | None = None,
        *,
        requires_username: bool = False,
        replace: bool = False,
    ) -> Cl4Command:
        """Add a command (or, with replace=True, replace a built-in or earlier one)."""
        if name in self._commands and not replace:
            raise ValueError(f"CL4 command {name!r} already exists; pass replace=True")
        if schema is not None and not isinstance(schema, Cl4Schema):
            schema = Cl4Schema(schema)
        command = Cl4Command(name, handler, schema, requires_username)
        self._commands[name] = command
        return command

    def unregister_command(self, name: str) -> Cl4Command | None:
        """Remove a command (built-in or not); it then answers E:109. Returns what was removed."""
        return self._commands.pop(name, None)

    def command(self, name: str) -> Cl4Command | None:
        """The command registered under `name`, e.g. to wrap a built-in handler."""
        return self._commands.get(name)

    def emit_gvar(self, room: str, name: str, value: str) -> int:
        """Bridge a Scratch `set` into CL4 room `room` as a gvar; returns the recipient count.

        JSON-string values are parsed (spec §12: "5" arrives as 5); other text stays a string.
        Observers are not called, so a bridge cannot loop.
        """
        members = self._rooms.get(room)
        if not members:
            return 0
        val: Any = value
        try:
            parsed = parse_json(value)
        except JsonError:
            pass
        else:
            # null would break the Python client, which rejects val: null (spec §9.3).
            if parsed is not None:
                val = parsed
        message = {"cmd": "gvar", "name": name, "val": val, "rooms": room}
        recipients = tuple(members)
        for member in recipients:
            self._send(member.connection, message)
        return len(recipients)

    def notify_gvar(self, sender: Cl4ClientState, room: str, name: str, val: Any) -> None:
        """Tell every gvar observer about a CL4 gvar `sender` delivered in `room`."""
        for observer in tuple(self.gvar_observers):
            try:
                observer(sender, room, name, val)
            except Exception:
                logger.exception("CL4 gvar observer %r failed", observer)

    # -- sending -------------------------------------------------------------------------------

    def send(self, session: Cl4ClientState, message: dict | str) -> None:
        """Queue one message for a client (a dict is one JSON text frame; treat it as frozen)."""
        self._send(session.connection, message)

    def reply(
        self,
        session: Cl4ClientState,
        status: Status,
        listener: Any = MISSING,
        *,
        details: Any = None,
        val: Any = None,
    ) -> None:
        """Send a statuscode; keys in the observed order cmd, code, code_id, details,
        listener, val."""
        message: dict[str, Any] = {
            "cmd": "statuscode",
            "code": status.code,
            "code_id": status.code_id,
        }
        if details is not None:
            message["details"] = details
        if listener is not MISSING:
            message["listener"] = listener
        if val is not None:
            message["val"] = val
        self._send(session.connection, message)

    # -- rooms and lookups ---------------------------------------------------------------------

    def rooms(self) -> tuple[str, ...]:
        """Names of all CL4 rooms that have members."""
        return tuple(self._rooms)

    def room_members(self, room: str) -> tuple[Cl4ClientState, ...]:
        """Members of a room in join order (a snapshot, safe to iterate while sending)."""
        return tuple(self._rooms.get(room, ()))

    def is_member(self, session: Cl4ClientState, room: str) -> bool:
        """True if `session` is subscribed to `room`."""
        return room in session.rooms

    def user_list(self, room: str) -> list[dict[str, str]]:
        """User objects of the named members of `room` (the `ulist set` payload)."""
        return [member.user_object for member in self._rooms.get(room, ()) if member.named]

    def subscribe(self, session: Cl4ClientState, room: str) -> bool:
        """Add `session` to `room` silently (creating it); False if it was already there."""
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = {}
        elif session in members:
            return False
        members[session] = None
        session.rooms[room] = None
        if self.presence_observers:
            self._presence("joined", session, room)
        return True

    def unsubscribe(self, session: Cl4ClientState, room: str) -> bool:
        """Remove `session` from `room` silently (deleting it if empty); False if not there."""
        members = self._rooms.get(room)
        if members is None or session not in members:
            return False
        del members[session]
        session.rooms.pop(room, None)
        if not members:
            del self._rooms[room]
        if self.presence_observers:
            self._presence("left", session, room)
        return True

    def announce_join(self, session: Cl4ClientState, room: str, *,
                      notify_others: bool = True) -> None:
        """`ulist add` to the other members (if notify_others), then `ulist set` to `session`."""
        if notify_others:
            added = {"cmd": "ulist", "mode": "add", "val": session.user_object, "rooms": room}
            for member in self.room_members(room):
                if member is not session:
                    self._send(member.connection, added)
        self._send(
            session.connection,
            {"cmd": "ulist", "mode": "set", "val": self.user_list(room), "rooms": room},
        )

    def announce_leave(self, session: Cl4ClientState, room: str) -> None:
        """`ulist remove` to the members of a room `session` left, if it had a username."""
        if not session.named:
            return
        removed = {"cmd": "ulist", "mode": "remove", "val": session.user_object, "rooms": room}
        for member in self.room_members(room):
            if member is not session:
                self._send(member.connection, removed)

    def find_by_username(self, username: str) -> tuple[Cl4ClientState, ...]:
        """Every identified client with this username (any room)."""
        return tuple(self._by_username.get(username, ()))

    def find_by_uuid(self, value: str) -> Cl4ClientState | None:
        """The identified client with this uuid, or None."""
        return self._by_uuid.get(value)

    def find_by_snowflake(self, value: str) -> Cl4ClientState | None:
        """The identified client with this snowflake id, or None."""
        return self._by_snowflake.get(value)

    def set_username(self, session: Cl4ClientState, username: str) -> None:
        """Name a client (the setid state change only; no messages)."""
        self._unindex_username(session)
        session.set_username(username)
        self._by_username.setdefault(username, {})[session] = None
        if self.presence_observers:
            self._presence("named", session, None)

    # -- clients of other nodes (mirrored by a cluster component) ------------------------------

    def adopt(self, session: Cl4ClientState) -> None:
        """Make a client of another node findable by uuid and snowflake (its username and
        rooms follow through `set_username` and `subscribe`). It is in no `sessions()`."""
        session.identified = True
        self._by_uuid[session.uuid] = session
        self._by_snowflake[session.snowflake] = session

    def drop(self, session: Cl4ClientState) -> None:
        """Forget a client of another node silently (its node announced what it had to)."""
        session.closed = True
        self._forget_identity(session)
        for room in list(session.rooms):
            self.unsubscribe(session, room)

    def _presence(self, event: str, session: Cl4ClientState, room: str | None) -> None:
        for observer in tuple(self.presence_observers):
            try:
                observer(event, session, room)
            except Exception:
                logger.exception("CL4 presence observer %r failed", observer)

    # -- internals -----------------------------------------------------------------------------

    def use_snowflake_instance(self, instance: int) -> None:
        """Make snowflake ids with this instance number (0 to 1023) from now on. On a cluster
        each node uses its own worker number, so no two nodes hand out the same id."""
        if instance != self._snowflake_instance:
            self._snowflake_instance = instance
            self._snowflakes = SnowflakeGenerator(instance)

    def _next_snowflake(self) -> str:
        candidate = next(self._snowflakes)
        # The generator returns None when 4096 ids were taken in one millisecond or the clock
        # went back; strictly increasing ids with this engine's instance stay unique either way.
        if candidate is None or candidate <= self._last_snowflake:
            candidate = snowflake_after(self._last_snowflake, self._snowflake_instance)
        self._last_snowflake = candidate
        return str(candidate)

    def _forget_identity(self, session: Cl4ClientState) -> None:
        if self._by_uuid.get(session.uuid) is session:
            del self._by_uuid[session.uuid]
        if self._by_snowflake.get(session.snowflake) is session:
            del self._by_snowflake[session.snowflake]
        self._unindex_username(session)

    def _unindex_username(self, session: Cl4ClientState) -> None:
        if session.username is not None:
            holders = self._by_username.get(session.username)
            if holders is not None:
                holders.pop(session, None)
                if not holders:
                    del self._by_username[session.username]

    def _take(self, bucket: TokenBucket | None) -> bool:
        return bucket is None or bucket.take(self._clock())

    def take_setid_token(self, session: Cl4ClientState) -> bool:
        """Spend one of the client's setid attempts; False when over the setid rate."""
        return self._take(session.setid_bucket)

    def _receive(self, session: Cl4ClientState, text: str, parsed: Any = MISSING) -> None:
        within_rate = self._take(session.message_bucket)
        waiting = session.waiting
        if waiting is None:
            self._handle(session, text, parsed, within_rate)
        elif len(waiting) < MAX_WAITING_MESSAGES:
            waiting.append((text, parsed, within_rate))
        else:
            self._close_flooding(session, "it flooded while a command waited")

    def _close_flooding(self, session: Cl4ClientState, why: str) -> None:
        logger.info("closing CL4 client %s with %d: %s", printable(session.ip),
                    CLOSE_POLICY_VIOLATION, why)
        session.closed = True
        self._close(session.connection, CLOSE_POLICY_VIOLATION, "Rate limited")
        self.disconnect(session.connection)

    def _handle(self, session: Cl4ClientState, text: str, parsed: Any,
                within_rate: bool) -> None:
        if session.identified:
            message = self._decode(session, text, within_rate)
        else:
            message = self._identify(session, text, parsed)
        if message is None:
            return
        if not within_rate:
            self._reply_rate_limited(session, listener_of(message))
            return
        too_deep = too_deep_fields(message, text)
        if too_deep is not None:
            self.reply(session, StatusCode.SYNTAX, listener_of(message), details=too_deep)
            return
        self._dispatch(session, message, len(text))

    def _identify(self, session: Cl4ClientState, text: str, parsed: Any) -> dict | None:
        """First message on a CL4-only listener (spec §2); on a shared listener the core only
        hands over messages for which `detect_cl4` found a CL4 message, already `parsed`."""
        if parsed is not MISSING:
            message = parsed
        elif not text:
            self._refuse_protocol(session, "Empty message")
            return None
        else:
            try:
                message = parse_message(text)
            except JsonError:
                self._refuse_protocol(session, "Invalid JSON")
                return None
        if type(message) is not dict or type(message.get("cmd")) is not str:
            # Project: arrays, numbers and strings get the same answer as {"foo":"bar"}.
            self._refuse_protocol(session, "Unable to identify protocol")
            return None
        session.identified = True
        self._by_uuid[session.uuid] = session
        self._by_snowflake[session.snowflake] = session
        self.subscribe(session, DEFAULT_ROOM)
        return message

    def _refuse_protocol(self, session: Cl4ClientState, reason: str) -> None:
        session.closed = True
        self._send(session.connection, reason)
        self._close(session.connection, CLOSE_NORMAL, reason)

    def _decode(self, session: Cl4ClientState, text: str, within_rate: bool) -> dict | None:
        """Parse a message after identification; answers E:106/E:114/E:101 itself."""
        if text:
            try:
                message = parse_message(text)
            except JsonDepthError as exc:
                # Valid JSON, too deep for even the parser: a schema failure (spec §4), whose
                # field and listener cannot be known.
                status, details = StatusCode.SYNTAX, {"message": [str(exc)]}
            except JsonError as exc:
                status, details = StatusCode.JSON_ERROR, f"A JSON error was raised: {exc}"
            else:
                if type(message) is dict:
                    return message
                # §10 #13: 0.2.0 closed the connection silently.
                status, details = StatusCode.SYNTAX, {"message": ["must be a JSON object"]}
        else:
            status, details = StatusCode.EMPTY_PACKET, None  # §10 #4
        if within_rate:
            self.reply(session, status, details=details)
        else:
            self._reply_rate_limited(session, MISSING)
        return None

    def _reply_rate_limited(self, session: Cl4ClientState, listener: Any) -> None:
        for observer in self.rate_limited_observers:
            observer(session)
        if not self._take(session.rate_limited_bucket):
            self._close_flooding(session, "it kept sending past the rate limit")
            return
        self.reply(
            session,
            StatusCode.RATE_LIMITED,
            listener,
            details=f"Too many messages; the limit is {self.options.messages_per_second:g} "
            "per second.",
        )

    def _val_too_large(self, message: dict, text_length: int) -> bool:
        limit = self.options.max_val_bytes
        if not limit or "val" not in message or text_length * _MAX_EXPANSION <= limit:
            return False
        try:
            return len(encode_message(message["val"])) > limit
        except (TypeError, OverflowError, ValueError):
            return True

    def _dispatch(self, session: Cl4ClientState, message: dict, text_length: int) -> None:
        errors = DEFAULT_SCHEMA.errors(message)
        if errors:
            self.reply(session, StatusCode.SYNTAX, listener_of(message), details=errors)
            return
        if self._val_too_large(message, text_length):
            self.reply(
                session,
                StatusCode.TOO_LARGE,
                listener_of(message),
                details=f"val is larger than {self.options.max_val_bytes} bytes.",
            )
            return
        for hook in tuple(self.pre_dispatch_hooks):
            try:
                outcome = hook(session, message)
            except Exception:
                logger.exception("CL4 pre-dispatch hook %r failed", hook)
                self.reply(session, StatusCode.INTERNAL_SERVER_ERROR, listener_of(message))
                return
            if outcome is None:
                continue
            if isinstance(outcome, Reject):
                self.reply(session, outcome.status, listener_of(message), details=outcome.details)
                return
            if type(outcome) is not dict:
                logger.error("CL4 pre-dispatch hook %r returned %r", hook, type(outcome))
                self.reply(session, StatusCode.INTERNAL_SERVER_ERROR, listener_of(message))
                return
            message = outcome
            errors = DEFAULT_SCHEMA.errors(message)
            if errors:
                self.reply(session, StatusCode.SYNTAX, listener_of(message), details=errors)
                return
        self._run_command(session, message)

    def _run_command(self, session: Cl4ClientState, message: dict) -> None:
        name = message["cmd"]
        if name in self.disabled_commands:
            self.reply(
                session,
                StatusCode.COMMAND_DISABLED,
                listener_of(message),
                details=f"{name} is a disabled command.",
            )
            return
        command = self._commands.get(name)
        if command is None:
            self.reply(
                session,
                StatusCode.INVALID_COMMAND,
                listener_of(message),
                details=f"{name} is an invalid command.",
            )
            return
        if command.requires_username and not session.named:
            self.reply(
                session,
                StatusCode.ID_REQUIRED,
                listener_of(message),
                details="This command requires setting a username.",
            )
            return
        if command.schema is not None:
            errors = command.schema.errors(message)
            if errors:
                self.reply(session, StatusCode.SYNTAX, listener_of(message), details=errors)
                return
        try:
            command.handler(Cl4Request(self, session, message))
        except Exception:
            logger.exception("CL4 command %s from %r failed", printable(name), session)
            self.reply(session, StatusCode.INTERNAL_SERVER_ERROR, listener_of(message))

    def sessions(self) -> Iterable[Cl4ClientState]:
        """Every connected session (a snapshot)."""
        return tuple(self._sessions.values())
