"""CloudLink 4 (CL4) protocol: a Sans-I/O engine compatible with TurboWarp's cloudlink.js.

Normative reference: docs/specs/cl4.md (CloudLink 0.2.0 behaviour, with every §10 fix).

Wiring (the core does the I/O)::

    engine = Cl4Engine(send, close, Cl4Options(...))
    # shared listener: hand a connection over when `detect_cl4(text)` parses its first message
    engine.connect(connection, ip)          # ip: resolved address (trusted proxies applied)
    engine.receive(connection, text, parsed)  # each text message (the first with `parsed`)
    engine.disconnect(connection)           # once the socket is gone (idempotent)

`send(connection, message)` gets a dict (encode it with `encode_message`, one text frame; the
same dict object goes to every recipient of a broadcast, so encode once per object) or a str
(a raw text frame, only before identification). `close(connection, code, reason)` must flush
what was sent before closing. Neither may raise or call back into the engine.

Status codes sent (spec §7; listener echoed whenever the request had a valid one):

=====  ===========================  ===========================================================
code   text                         when
=====  ===========================  ===========================================================
100    I:100 | OK                   handshake, ping, setid (val = user object), pmsg/pvar,
                                    link, unlink; direct only if the request had a listener
101    E:101 | Syntax               schema failure (details = {field: [messages]}) or a
                                    message that is not a JSON object
103    E:103 | ID not found         pmsg/pvar (details "No matches found: <id>"), direct
104    E:104 | ID not specific      several clients share the username (pmsg/pvar/direct)
       enough
105    E:105 | Internal server      a handler or pre-dispatch hook raised (logged)
       error
106    E:106 | Empty packet         empty message
107    E:107 | ID already set       second setid (val = current user object)
108    E:108 | Refused              direct whose val is {"cmd": "vers"|"motd"} (§3.3)
109    E:109 | Invalid command      unknown cmd
110    E:110 | Command disabled     cmd in disabled_commands
111    E:111 | ID required          pmsg/pvar/link/unlink (or a plugin command) before setid
112    E:112 | ID conflict          setid of a taken name with unique_usernames
113    E:113 | Too large            val over max_val_bytes; username over max_username_length;
                                    link room name over max_room_name_length
114    E:114 | JSON error           invalid JSON, or a number too large for a double
115    E:115 | Room not joined      `rooms` names a room the sender is not in
116    E:116 | Rate limited         over messages_per_second/message_burst (message dropped),
                                    or setid over setid_per_minute/setid_burst
117    E:117 | Too many rooms       link would exceed max_rooms_per_client (nothing changes)
=====  ===========================  ===========================================================

Codes 113 and 108 are CloudLink's own (unused by 0.2.0, same meaning); 116 and 117 are
server-defined (spec §7 reserves >= 116 for that and asks to avoid 200-204).
"""

from protocols.cl4.codes import Status, StatusCode
from protocols.cl4.commands import target_rooms
from protocols.cl4.engine import (
    DEFAULT_ROOM,
    MISSING,
    Cl4Command,
    Cl4Engine,
    Cl4Request,
    Close,
    CommandHandler,
    GvarObserver,
    PreDispatchHook,
    Reject,
    Send,
    listener_of,
)
from protocols.cl4.options import LEGACY_VERSION_MARKERS, Cl4Options
from protocols.cl4.schema import COMMAND_SCHEMAS, DEFAULT_SCHEMA, Cl4Schema
from protocols.cl4.state import Cl4ClientState
from protocols.cl4.wire import JsonError, encode_message, looks_like_cl4, parse_json

__all__ = [
    "COMMAND_SCHEMAS",
    "DEFAULT_ROOM",
    "DEFAULT_SCHEMA",
    "LEGACY_VERSION_MARKERS",
    "MISSING",
    "Cl4ClientState",
    "Cl4Command",
    "Cl4Engine",
    "Cl4Options",
    "Cl4Request",
    "Cl4Schema",
    "Close",
    "CommandHandler",
    "GvarObserver",
    "JsonError",
    "PreDispatchHook",
    "Reject",
    "Send",
    "Status",
    "StatusCode",
    "encode_message",
    "listener_of",
    "looks_like_cl4",
    "parse_json",
    "target_rooms",
]
