"""The ten built-in CL4 commands (spec §5, with every §10 fix).

Each handler takes a `Cl4Request` and uses only the engine's public API, exactly as a plugin's
handler would; a plugin may replace any of them with `Cl4Engine.register_command(replace=True)`.
"""

from __future__ import annotations

from typing import Any

from protocols.cl4.codes import StatusCode
from protocols.cl4.request import DEFAULT_ROOM, MISSING, Cl4Command, Cl4Request
from protocols.cl4.schema import COMMAND_SCHEMAS
from protocols.cl4.state import Cl4ClientState
from protocols.cl4.wire import coerce_name, describe_id

__all__ = ["BUILTIN_COMMANDS", "target_rooms"]

# cloudlink.js reads a direct whose val is {"cmd": "vers" | "motd"} as a 0.1.x message (§3.3).
_LEGACY_DIRECT_COMMANDS = frozenset({"vers", "motd"})


def target_rooms(request: Cl4Request) -> list[str] | None:
    """Rooms a gmsg/gvar/pmsg/pvar goes to, or None after answering E:115 (spec §8)."""
    session = request.session
    given = request.message.get("rooms", MISSING)
    if given is MISSING:
        return list(session.rooms)
    rooms: dict[str, None] = {}
    for entry in given if type(given) is list else [given]:
        # The default schema let through only strings, numbers and booleans (§10 #10).
        room = coerce_name(entry)
        if room not in session.rooms:
            request.reply(
                StatusCode.ROOM_NOT_JOINED,
                details=f"Attempted to access room {room} while not joined.",
            )
            return None
        rooms[room] = None
    return list(rooms)


def _room_names(value: Any) -> list[str]:
    """link/unlink `val` as room names in request order, duplicates dropped (§8, §10 #9)."""
    entries = value if type(value) is list else [value]
    return list(dict.fromkeys(coerce_name(entry) for entry in entries))


def _multiple_matches(request: Cl4Request, entry: Any, count: int) -> None:
    request.reply(
        StatusCode.ID_NOT_SPECIFIC_ENOUGH,
        details=f"Multiple matches found for {describe_id(entry)}, found {count} matches. "
        "Please use Snowflakes, UUIDs, or client objects instead.",
    )


def handle_handshake(request: Cl4Request) -> None:
    """First time: client_ip, server_version, motd, client_obj, ulist set per room; then OK."""
    engine, session = request.engine, request.session
    if not session.handshake_done:
        session.handshake_done = True
        options = engine.options
        if options.send_client_ip:
            engine.send(session, {"cmd": "client_ip", "val": session.ip})
        engine.send(session, {"cmd": "server_version", "val": options.server_version})
        if options.motd:
            engine.send(session, {"cmd": "motd", "val": options.motd})
        engine.send(session, {"cmd": "client_obj", "val": session.user_object})
        for room in list(session.rooms):
            engine.announce_join(session, room, notify_others=False)
    request.reply(StatusCode.OK)


def handle_ping(request: Cl4Request) -> None:
    """Answer I:100."""
    request.reply(StatusCode.OK)


def handle_setid(request: Cl4Request) -> None:
    """Name the client once; announce it in its rooms; OK carries the user object."""
    engine, session, options = request.engine, request.session, request.engine.options
    if not engine.take_setid_token(session):
        request.reply(
            StatusCode.RATE_LIMITED,
            details=f"Too many setid attempts; the limit is {options.setid_per_minute:g} "
            "per minute.",
        )
        return
    if session.named:
        request.reply(StatusCode.ID_ALREADY_SET, val=session.user_object)
        return
    username = coerce_name(request.message["val"])  # §10 #11: 123 -> "123"
    if options.max_username_length and len(username) > options.max_username_length:
        request.reply(
            StatusCode.TOO_LARGE,
            details=f"Username is longer than {options.max_username_length} characters.",
        )
        return
    if options.unique_usernames:
        if engine.find_by_username(username):
            _username_taken(request)
            return
        # On a cluster, two nodes may name two clients alike at the same moment: the cluster
        # decides, and the client's later messages wait for the answer.
        claim = engine.claim_username(session, username)
        if claim is False:
            _username_taken(request)
            return
        if claim is not True:
            engine.wait_for(request, claim, lambda taken: _name(request, username) if taken
                            else _username_taken(request))
            return
    _name(request, username)


def _username_taken(request: Cl4Request) -> None:
    request.reply(StatusCode.ID_CONFLICT, details="This username is already in use.")


def _name(request: Cl4Request, username: str) -> None:
    engine, session = request.engine, request.session
    engine.set_username(session, username)
    # 0.2.0 re-subscribes the client to default; an unnamed client can be in no other room.
    engine.subscribe(session, DEFAULT_ROOM)
    for room in list(session.rooms):
        engine.announce_join(session, room)
    request.reply(StatusCode.OK, val=session.user_object)


def handle_gmsg(request: Cl4Request) -> None:
    """One gmsg per target room to every member, the sender included (§10 #2: all get rooms)."""
    rooms = target_rooms(request)
    if rooms is None:
        return
    engine, session = request.engine, request.session
    val = request.message["val"]
    listener = request.listener
    for room in rooms:
        shared = {"cmd": "gmsg", "val": val, "rooms": room}
        own = shared
        if listener is not MISSING:
            own = {"cmd": "gmsg", "val": val, "listener": listener, "rooms": room}
        for member in engine.room_members(room):
            engine.send(member, own if member is session else shared)


def handle_gvar(request: Cl4Request) -> None:
    """One gvar per target room to every member; only the sender's copy has the listener."""
    rooms = target_rooms(request)
    if rooms is None:
        return
    engine, session = request.engine, request.session
    name = request.message["name"]
    val = request.message["val"]
    listener = request.listener
    for room in rooms:
        shared = {"cmd": "gvar", "name": name, "val": val, "rooms": room}
        own = shared
        if listener is not MISSING:
            own = {**shared, "listener": listener}  # §10 #1
        for member in engine.room_members(room):
            engine.send(member, own if member is session else shared)
        engine.notify_gvar(session, room, name, val)


def _username_matches(engine: Any, username: str, room: str | None) -> list[Cl4ClientState]:
    if not username:
        return []  # unnamed clients cannot be addressed by name
    holders = engine.find_by_username(username)
    if room is None:
        return list(holders)
    return [holder for holder in holders if room in holder.rooms]


def _resolve(engine: Any, entry: Any, room: str | None) -> tuple[list[Cl4ClientState], bool]:
    """Clients an id entry names (in `room`, or anywhere if None); True if by username."""

    def in_room(client: Cl4ClientState | None) -> list[Cl4ClientState]:
        if client is None or (room is not None and room not in client.rooms):
            return []
        return [client]

    if type(entry) is str:
        # Order of 0.2.0's lookup: username, then uuid, then snowflake.
        by_name = _username_matches(engine, entry, room)
        if by_name:
            return by_name, True
        by_id = in_room(engine.find_by_uuid(entry)) or in_room(engine.find_by_snowflake(entry))
        return by_id, False
    # §10 #5: a user object; its uuid decides, else its id, else its username.
    uuid = entry.get("uuid")
    if type(uuid) is str:
        return in_room(engine.find_by_uuid(uuid)), False
    snowflake = entry.get("id")
    if type(snowflake) is str:
        return in_room(engine.find_by_snowflake(snowflake)), False
    username = entry.get("username")
    if type(username) is str:
        return _username_matches(engine, username, room), True
    return [], False


def _send_private(request: Cl4Request, cmd: str) -> None:
    """pmsg/pvar: resolve every id entry per target room first, then deliver (§10 #5, #6)."""
    rooms = target_rooms(request)
    if rooms is None:
        return
    engine, message = request.engine, request.message
    target = message["id"]
    entries = target if type(target) is list else [target]
    if any(type(entry) not in (str, dict) for entry in entries):
        request.reply(StatusCode.SYNTAX, details={"id": ["entries must be strings or objects"]})
        return
    warn = engine.options.warn_if_multiple_username_matches
    deliveries: list[tuple[str, dict[Cl4ClientState, None]]] = []
    for room in rooms:
        recipients: dict[Cl4ClientState, None] = {}
        for entry in entries:
            matches, by_username = _resolve(engine, entry, room)
            if by_username and warn and len(matches) > 1:
                _multiple_matches(request, entry, len(matches))
                return
            recipients.update(dict.fromkeys(matches))
        if recipients:
            deliveries.append((room, recipients))
    if not deliveries:
        request.reply(StatusCode.ID_NOT_FOUND, details=f"No matches found: {describe_id(target)}")
        return
    origin = request.session.user_object
    val = message["val"]
    for room, recipients in deliveries:
        if cmd == "pvar":
            name = message["name"]
            out = {"cmd": "pvar", "name": name, "val": val, "origin": origin, "rooms": room}
        else:
            out = {"cmd": "pmsg", "val": val, "origin": origin, "rooms": room}
        for recipient in recipients:
            engine.send(recipient, out)
    request.reply(StatusCode.OK)


def handle_pmsg(request: Cl4Request) -> None:
    """Private message to the matching members of each target room; the sender gets OK."""
    _send_private(request, "pmsg")


def handle_pvar(request: Cl4Request) -> None:
    """Private variable to the matching members of each target room; the sender gets OK."""
    _send_private(request, "pvar")


def handle_direct(request: Cl4Request) -> None:
    """Global delivery by username, uuid or snowflake (§10 #7: OK if the request had a listener)."""
    engine, message = request.engine, request.message
    val = message["val"]
    # The type check first: a list or object `cmd` cannot be looked up in a set.
    if type(val) is dict and type(val.get("cmd")) is str and val["cmd"] in _LEGACY_DIRECT_COMMANDS:
        request.reply(
            StatusCode.REFUSED,
            details='A direct val with cmd "vers" or "motd" would be misread by clients.',
        )
        return
    target = message["id"]
    recipients, by_username = _resolve(engine, target, None)
    if not recipients:
        request.reply(StatusCode.ID_NOT_FOUND)
        return
    if by_username and len(recipients) > 1 and engine.options.warn_if_multiple_username_matches:
        _multiple_matches(request, target, len(recipients))
        return
    out: dict[str, Any] = {"cmd": "direct", "val": val, "origin": request.session.user_object}
    listener = request.listener
    forward = engine.options.direct_forward_listener
    if forward and listener is not MISSING:
        out["listener"] = listener
    for recipient in recipients:
        engine.send(recipient, out)
    if not forward and listener is not MISSING:
        request.reply(StatusCode.OK)


def handle_link(request: Cl4Request) -> None:
    """Join rooms (additively), leaving default unless listed; OK at the end."""
    engine, session, options = request.engine, request.session, request.engine.options
    rooms = _room_names(request.message["val"])
    limit = options.max_room_name_length
    if limit and any(len(room) > limit for room in rooms):
        request.reply(
            StatusCode.TOO_LARGE, details=f"Room names are limited to {limit} characters."
        )
        return
    leave_default = DEFAULT_ROOM not in rooms
    if options.max_rooms_per_client:
        kept = [room for room in session.rooms if not (leave_default and room == DEFAULT_ROOM)]
        if len(dict.fromkeys([*kept, *rooms])) > options.max_rooms_per_client:
            request.reply(
                StatusCode.TOO_MANY_ROOMS,
                details=f"A client may be linked to at most {options.max_rooms_per_client} rooms.",
            )
            return
    # §10 #8: remove only if the client really was in default.
    if leave_default and engine.unsubscribe(session, DEFAULT_ROOM):
        engine.announce_leave(session, DEFAULT_ROOM)
    for room in rooms:
        # Already a member: no second `add` (cloudlink.js would list the user twice).
        joined = engine.subscribe(session, room)
        engine.announce_join(session, room, notify_others=joined)
    request.reply(StatusCode.OK)


def handle_unlink(request: Cl4Request) -> None:
    """Leave rooms ("" = all); back in no room means back in default; OK at the end."""
    engine, session = request.engine, request.session
    val = request.message["val"]
    rooms = list(session.rooms) if val == "" else _room_names(val)
    for room in rooms:
        # §10 #8: rooms not joined are skipped, no phantom `remove`.
        if engine.unsubscribe(session, room):
            engine.announce_leave(session, room)
    if not session.rooms:
        engine.subscribe(session, DEFAULT_ROOM)
        engine.announce_join(session, DEFAULT_ROOM)
    request.reply(StatusCode.OK)


BUILTIN_COMMANDS: tuple[Cl4Command, ...] = (
    Cl4Command("handshake", handle_handshake),
    Cl4Command("ping", handle_ping),
    Cl4Command("setid", handle_setid, COMMAND_SCHEMAS["setid"]),
    Cl4Command("gmsg", handle_gmsg, COMMAND_SCHEMAS["gmsg"]),
    Cl4Command("gvar", handle_gvar, COMMAND_SCHEMAS["gvar"]),
    Cl4Command("pmsg", handle_pmsg, COMMAND_SCHEMAS["pmsg"], requires_username=True),
    Cl4Command("pvar", handle_pvar, COMMAND_SCHEMAS["pvar"], requires_username=True),
    Cl4Command("direct", handle_direct, COMMAND_SCHEMAS["direct"]),
    Cl4Command("link", handle_link, COMMAND_SCHEMAS["link"], requires_username=True),
    Cl4Command("unlink", handle_unlink, COMMAND_SCHEMAS["unlink"], requires_username=True),
)
