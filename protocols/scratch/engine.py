"""The Scratch / TurboWarp cloud-variable protocol engine (docs/specs/scratch-cloud.md).

Sans-I/O: a `ScratchSession` turns one connection's text messages into room operations and
answers only through the `server.session.Peer` it was given (text out, close codes). Parsing,
validation and serialisation are pure (`protocols.js`, `protocols.validators`, `.wire`). The
two things that may take time, an `async` handshake hook and reading a room from the store,
reach it as futures it adds callbacks to; meanwhile later messages queue in order (spec §1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.codes import CloseCode
from server.logsafe import printable
from server.plugins import DROP, PluginManager, Refuse, VariableWrite

from ..js import MISSING, JSONError, js_string, parse_json, utf16_len
from ..validators import is_valid_room_id, is_valid_username, is_valid_value
from .wire import CLOUD_PREFIXES, encode_set, variable_key

if TYPE_CHECKING:
    from server.rooms import Room, RoomRegistry
    from server.session import Peer

    from .options import ScratchOptions, ScratchSection

log = logging.getLogger("stratus.scratch")

GENERIC_ERROR = CloseCode.SCRATCH_GENERIC
USERNAME_ERROR = CloseCode.SCRATCH_USERNAME
OVERLOADED = CloseCode.SCRATCH_OVERLOADED
PROJECT_UNAVAILABLE = CloseCode.SCRATCH_PROJECT_UNAVAILABLE
SECURITY = CloseCode.SCRATCH_SECURITY
IDENTIFY = CloseCode.SCRATCH_IDENTIFY
SERVER_ERROR = CloseCode.SERVER_ERROR
# A join of a room at max_clients_per_room (spec §5a: 4000, not the documented 4003); also what
# a member is closed with when the cluster finds it took the last place at the same moment as a
# member of another node.
ROOM_FULL = GENERIC_ERROR

COOKIE_WARNING = (
    "The cloud data library you are using is putting your Scratch account at risk by sending us "
    "your login token for no reason. Change your Scratch password immediately, then contact the "
    "maintainers of that library for further information. This connection is being refused to "
    "protect your security."
)

MAX_RENAME_LENGTH = 1024


class ProtocolViolation(Exception):
    """A message the protocol answers by closing the connection with `code` (internal)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def connect_refusal(peer: Peer, options: ScratchOptions) -> tuple[str, int] | None:
    """The (text, close code) a new connection is refused with before any message, if any."""
    section = options.section
    if section.cookie_tripwire and peer.header("Cookie").startswith("scratchsessionsid="):
        return COOKIE_WARNING, SECURITY
    if section.require_user_agent and not peer.header("User-Agent").strip():
        return section.user_agent_message, IDENTIFY
    return None


# Writes


def accepts_name(name: Any, section: ScratchSection) -> bool:
    """Whether a write may use this variable name ([scratch] strict_variable_names)."""
    return not section.strict_variable_names or (
        type(name) is str and name.startswith(CLOUD_PREFIXES) and name not in CLOUD_PREFIXES
    )


def apply_variable_hooks(room: Room, client: Any, name: Any, value: Any,
                         section: ScratchSection) -> Any:
    """Run the room's variable-write hooks on a write by `client`: the value to store, or DROP.

    Every write into a Scratch room from a client goes through here, whatever protocol it
    came in by (a Scratch set, a bridged CL4 gvar), so plugins that own variable names see
    them all. A value a plugin changed must still be valid.
    """
    write = VariableWrite(client, room.id, None if name is MISSING else name, value)
    for hook in room.variable_hooks:
        outcome = hook(write)
        if outcome is DROP:
            return DROP
        write.value = outcome
    if write.value is not value and not is_valid_value(
        write.value, section.max_value_length, section.allow_non_numeric_values
    ):
        log.warning("a plugin turned a write into an invalid value %s; dropped",
                    printable(write.value))
        return DROP
    return write.value


# Session


class ScratchSession:
    """One connection speaking the Scratch cloud protocol (a `server.session.Session`)."""

    __slots__ = ("peer", "rooms", "options", "plugins", "room", "room_id", "username", "queued",
                 "replaying", "ended")

    protocol_name = "scratch"

    def __init__(self, peer: Peer, rooms: RoomRegistry, options: ScratchOptions,
                 plugins: PluginManager | None = None):
        self.peer = peer
        self.rooms = rooms
        self.options = options
        self.plugins = plugins
        self.room: Room | None = None
        self.room_id: str | None = None  # kept after leaving, for on_disconnect hooks
        self.username: str | None = None
        # While an asynchronous handshake hook decides or the room loads, later messages wait
        # here (spec §1).
        self.queued: list[str] | None = None
        # True while messages of a client that left during its room's load are applied.
        self.replaying = False
        self.ended = False

    @property
    def identified(self) -> bool:
        """True once the handshake put the connection in a room."""
        return self.room is not None

    def receive(self, text: str) -> None:
        """Handle one text message; protocol violations close the connection."""
        if self.queued is not None:
            self._queue(text)
            return
        try:
            try:
                message = parse_json(text)
            except JSONError:
                if self.options.section.split_newline_messages and "\n" in text.strip():
                    for line in text.split("\n"):
                        if not line.strip() or not self.accepting:
                            continue
                        if self.queued is not None:  # the handshake line waits for its room
                            self._queue(line)
                        else:
                            self._dispatch(self._parse_line(line))
                    return
                raise ProtocolViolation(GENERIC_ERROR, "invalid JSON") from None
            self._dispatch(message)
        except ProtocolViolation as violation:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("closing %s with %d: %s", printable(self.peer.peer),
                          violation.code, violation)
            self.close(violation.code)

    @staticmethod
    def _parse_line(line: str) -> Any:
        try:
            return parse_json(line)
        except JSONError:
            raise ProtocolViolation(GENERIC_ERROR, "invalid JSON") from None

    def _dispatch(self, message: Any) -> None:
        if type(message) is not dict:
            raise ProtocolViolation(GENERIC_ERROR, "message is not an object")
        method = message.get("method")
        if method == "set" or method == "create":
            self._set(message)
        elif method == "handshake":
            self._handshake(message)
        elif method == "delete" or method == "rename":
            self._delete_or_rename(method, message)
        elif type(method) is not str:
            raise ProtocolViolation(GENERIC_ERROR, "missing or non-string method")
        else:
            raise ProtocolViolation(GENERIC_ERROR, "unknown message method")

    def _queue(self, text: str) -> None:
        try:
            message = parse_json(text)
        except JSONError:
            message = None
        if type(message) is dict and message.get("method") == "handshake":
            self.close(GENERIC_ERROR)  # a second handshake while the first is validated
        else:
            self.queued.append(text)

    def _handshake(self, message: dict) -> None:
        if self.room is not None or self.room_id is not None:
            raise ProtocolViolation(GENERIC_ERROR, "second handshake")
        section = self.options.section
        room_id = js_string(message.get("project_id", MISSING))
        if not is_valid_room_id(room_id, section.max_room_id_length):
            raise ProtocolViolation(section.invalid_room_close_code, "invalid room id")
        if room_id in self.options.blocked_rooms or room_id in self.rooms.blocked:
            raise ProtocolViolation(PROJECT_UNAVAILABLE, "blocked room id")
        username = message.get("user", MISSING)
        if not is_valid_username(username, self.options.username_filters):
            raise ProtocolViolation(USERNAME_ERROR, "invalid username")
        self.username = username
        if self.plugins is not None and self.plugins.hooks("handshake"):
            outcome = self.plugins.handshake(self.peer, room_id)
            if isinstance(outcome, Refuse):
                raise ProtocolViolation(outcome.close_code, f"refused by a plugin: {outcome}")
            if outcome is not None:
                self.queued = []
                outcome.add_done_callback(lambda done: self._handshake_decided(done, room_id))
                return
        self._join(room_id)

    def _handshake_decided(self, decision: asyncio.Future, room_id: str) -> None:
        queued, self.queued = self.queued, None
        if not self.peer.is_open:
            return  # the client left while the hooks decided
        refusal = None if decision.cancelled() else decision.result()
        if refusal is not None:
            self.close(refusal.close_code)
            return
        self._resume(lambda: self._join(room_id), queued)

    def _join(self, room_id: str) -> None:
        opened = self.rooms.opening(room_id)
        if opened is None:
            raise ProtocolViolation(OVERLOADED, "too many rooms")
        if isinstance(opened, asyncio.Future):
            # The room is read from the store off the event loop; messages wait in order.
            self.queued = []
            opened.add_done_callback(self._room_loaded)
            return
        self._enter(opened)

    def _room_loaded(self, loading: asyncio.Future) -> None:
        queued, self.queued = self.queued, None
        if loading.cancelled() or loading.exception() is not None:
            self.close(SERVER_ERROR)  # the registry logged why
            return
        room = loading.result()
        if self.peer.is_open:
            self._resume(lambda: self._enter(room), queued)
            return
        # The client left while its room loaded. What it sent before leaving still counts, as
        # it would have had the room been in memory (e.g. a bot that sets a value and leaves).
        self.room = room
        self.replaying = True
        try:
            self._resume(lambda: None, queued)
        finally:
            self.replaying = False
            self.room = None

    @property
    def accepting(self) -> bool:
        """Whether messages are still handled (the connection is open, or being replayed)."""
        return self.peer.is_open or self.replaying

    def _resume(self, step: Callable[[], None], queued: list[str] | None) -> None:
        """Run a handshake step that waited, then the messages that arrived meanwhile."""
        try:
            step()
        except ProtocolViolation as violation:
            self.close(violation.code)
            return
        for text in queued or ():
            if not self.accepting:
                break
            self.receive(text)

    def _enter(self, room: Room) -> None:
        if room.id in self.rooms.blocked:
            raise ProtocolViolation(PROJECT_UNAVAILABLE, "blocked room id")
        if not room.join(self.peer):
            raise ProtocolViolation(ROOM_FULL, "room is full")
        self.room = room
        self.room_id = room.id
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s joined %s (%d members)", printable(self.username), printable(room.id),
                      len(room.members))

    def _set(self, message: dict) -> None:
        room = self.room
        if room is None:
            raise ProtocolViolation(GENERIC_ERROR, "set before handshake")
        value = message.get("value", MISSING)
        section = self.options.section
        if not is_valid_value(value, section.max_value_length, section.allow_non_numeric_values):
            return
        name = message.get("name", MISSING)
        if not accepts_name(name, section):
            return
        if room.variable_hooks:
            value = apply_variable_hooks(room, self._plugin_client(), name, value, section)
            if value is DROP:
                return
        if not room.set(variable_key(name), value, self.peer):
            raise ProtocolViolation(GENERIC_ERROR, "too many variables")

    def _plugin_client(self) -> Any:
        return self.plugins.client(self.peer) if self.plugins is not None else None

    def _delete_or_rename(self, method: str, message: dict) -> None:
        section = self.options.section
        enabled = section.allow_delete if method == "delete" else section.allow_rename
        if not enabled:
            return
        room = self.room
        if room is None:
            raise ProtocolViolation(GENERIC_ERROR, f"{method} before handshake")
        key = variable_key(message.get("name", MISSING))
        if method == "delete":
            if not room.delete(key, self.peer):
                raise ProtocolViolation(GENERIC_ERROR, "delete of a missing variable")
            return
        new_name = message.get("new_name", MISSING)
        if not (
            type(new_name) is str
            and new_name.startswith(CLOUD_PREFIXES)
            and new_name not in CLOUD_PREFIXES
            and utf16_len(new_name) <= MAX_RENAME_LENGTH
        ):
            raise ProtocolViolation(GENERIC_ERROR, "invalid new name")
        # A rename must not sneak a value under a name a plugin owns.
        if (
            room.variable_hooks
            and key in room.values
            and apply_variable_hooks(room, self._plugin_client(), new_name, room.values[key],
                                     section) is DROP
        ):
            return
        new_key = variable_key(new_name)
        if key not in room.values:
            raise ProtocolViolation(GENERIC_ERROR, "rename of a missing variable")
        if not room.rename(key, new_key, self.peer):
            raise ProtocolViolation(GENERIC_ERROR, "rename onto an existing variable")

    def send_variable(self, name: Any, value: Any) -> None:
        """Send this client alone a `set`: not stored, not seen by others."""
        self.peer.send_text(encode_set(variable_key(name), value))

    def close(self, code: int) -> None:
        """Leave the room and close the connection with `code`."""
        self.replaying = False
        self.closed()
        self.peer.close(code)

    def closed(self) -> None:
        """The connection is closing or gone: leave the room (peers are not told)."""
        room = self.room
        if room is not None and not self.replaying:
            self.room = None
            room.leave(self.peer)
