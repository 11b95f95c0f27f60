"""Per-connection CL4 state, kept apart from the connection object (spec §10 #20)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from protocols.cl4.limits import TokenBucket
from server.logsafe import printable

__all__ = ["Cl4ClientState"]


class Cl4ClientState:
    """One CL4 connection as the engine sees it: identity, username and rooms."""

    __slots__ = (
        "closed",
        "connection",
        "handshake_done",
        "identified",
        "ip",
        "message_bucket",
        "rate_limited_bucket",
        "rooms",
        "setid_bucket",
        "snowflake",
        "user_object",
        "username",
        "uuid",
        "waiting",
    )

    def __init__(
        self,
        connection: Hashable,
        ip: str,
        snowflake: str,
        uuid: str,
        message_bucket: TokenBucket | None,
        setid_bucket: TokenBucket | None,
    ):
        self.connection = connection
        self.ip = ip
        self.snowflake = snowflake
        self.uuid = uuid
        self.username: str | None = None
        # Rooms in join order (a dict used as an ordered set).
        self.rooms: dict[str, None] = {}
        self.identified = False
        self.handshake_done = False
        self.closed = False
        self.message_bucket = message_bucket
        self.setid_bucket = setid_bucket
        # E:116 replies left before the client is closed (see Cl4Engine._reply_rate_limited).
        self.rate_limited_bucket: TokenBucket | None = None
        # While a command waits for an answer from elsewhere (a cluster-wide username claim),
        # the messages that arrive meanwhile: (text, parsed, within its rate), handled in order
        # once it is answered (see Cl4Engine.wait_for). None when nothing waits.
        self.waiting: list[tuple[str, Any, bool]] | None = None
        # Shared by every message that carries it: never mutate, replace (see `set_username`).
        self.user_object: dict[str, str] = {"id": snowflake, "uuid": uuid}

    @property
    def named(self) -> bool:
        """True once setid succeeded."""
        return self.username is not None

    def set_username(self, username: str) -> None:
        """Record the username and rebuild the user object ({id, username, uuid})."""
        self.username = username
        self.user_object = {"id": self.snowflake, "username": username, "uuid": self.uuid}

    def __repr__(self) -> str:
        return f"<Cl4ClientState {self.snowflake} {printable(self.username, 40)}>"
