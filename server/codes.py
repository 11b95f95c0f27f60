"""One vocabulary for the whole server: WebSocket close codes and connection states.

Every close code any layer sends is named here once (RFC 6455's and the Scratch cloud
protocol's, docs/specs/scratch-cloud.md §10), so a log line, a test and the docs can say
"TRY_AGAIN_LATER" and mean the same number everywhere.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes sent by Stratus."""

    NORMAL = 1000  # CL4: a first message that is not CL4 after all; plugin kicks by default
    GOING_AWAY = 1001  # the server shuts down
    PROTOCOL_ERROR = 1002  # RFC 6455 framing violation
    INVALID_DATA = 1007  # text frame that is not UTF-8
    POLICY_VIOLATION = 1008  # CL4 client that keeps sending far past its rate limit
    MESSAGE_TOO_BIG = 1009  # over [server] max_message_bytes
    SERVER_ERROR = 1011  # the store could not read the room; clients reconnect
    TRY_AGAIN_LATER = 1013  # a client too far behind its outbound backlog; it reconnects
    # Scratch cloud protocol (spec §10).
    SCRATCH_GENERIC = 4000  # invalid message; TurboWarp reconnects
    SCRATCH_USERNAME = 4002  # TurboWarp asks for another username
    SCRATCH_OVERLOADED = 4003  # room or server limit reached
    SCRATCH_PROJECT_UNAVAILABLE = 4004  # blocked or invalid project; TurboWarp does not retry
    SCRATCH_SECURITY = 4005  # the cookie tripwire
    SCRATCH_IDENTIFY = 4006  # no User-Agent where one is required


class State(IntEnum):
    """Where one connection is in its life."""

    CONNECTING = 0  # reading the HTTP request
    OPEN = 1  # upgraded: frames flow both ways
    CLOSING = 2  # our close frame is sent (or the client's echoed); TCP is ending
    CLOSED = 3  # the socket is gone
