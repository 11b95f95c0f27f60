"""Operator options of the CL4 engine, with safe defaults (one future `[cl4]` config table)."""

from __future__ import annotations

import dataclasses

__all__ = ["LEGACY_VERSION_MARKERS", "Cl4Options"]

# cloudlink.js picks its dialect by substring (spec §3.3); only "0.2." may appear.
LEGACY_VERSION_MARKERS = ("0.1.9", "0.1.8", "0.1.7", "0.1.5", "S2.2", "0.1.", "S2.", "S1.")


@dataclasses.dataclass(frozen=True, slots=True)
class Cl4Options:
    """How the CL4 endpoint behaves; every limit uses 0 for "unlimited"."""

    # Serve CL4 on the shared port (clients whose first message has a string "cmd").
    enabled: bool = True
    # Unsent bytes a CL4 client may have queued before it is disconnected with 1013.
    max_queue_bytes: int = 1_048_576

    # Sent as `server_version`; must contain "0.2." and none of LEGACY_VERSION_MARKERS. Note that
    # "0.2.0-stratus/0.1.0" would contain "0.1." - so the Stratus version is not appended.
    server_version: str = "0.2.0-stratus"
    # Message of the day, sent in the first handshake reply only; "" sends none.
    motd: str = ""
    # Send `client_ip` (the resolved address) in the first handshake reply.
    send_client_ip: bool = True
    # pmsg/pvar/direct naming a username that several clients share: E:104 instead of sending
    # to all of them.
    warn_if_multiple_username_matches: bool = True
    # Commands answered with E:110 (built-in or plugin).
    disabled_commands: tuple[str, ...] = ()
    # Refuse a setid whose name is taken with E:112 (off: cloudlink.js cannot retry setid).
    unique_usernames: bool = False
    # direct as the spec's §5 row and CloudLink 0.2.0: the recipient's copy carries the sender's
    # listener (so it can answer on it) and the sender gets no OK. False: no listener forwarded,
    # OK (+listener) to a sender that gave one.
    direct_forward_listener: bool = True
    # Largest `val`, measured as the compact JSON the server would forward, in bytes (E:113).
    max_val_bytes: int = 262_144
    # Longest username / room name in characters (E:113): they are repeated in every ulist.
    max_username_length: int = 1000
    max_room_name_length: int = 1000
    # Most rooms one client may be linked to at once (E:117).
    max_rooms_per_client: int = 100
    # Sustained messages per second per client, and the burst allowed above it (E:116).
    messages_per_second: float = 50.0
    message_burst: int = 100
    # E:116 replies a client may collect faster than messages_per_second (each is forgiven
    # after 1/messages_per_second s); one more closes it with 1008. 0 = never close.
    max_rate_limited_replies: int = 500
    # setid attempts per minute per client, and the burst (E:116).
    setid_per_minute: float = 6.0
    setid_burst: int = 3

    def __post_init__(self) -> None:
        version = self.server_version
        if not isinstance(version, str) or "0.2." not in version:
            raise ValueError(
                f"cl4.server_version = {version!r}: must be a string containing '0.2.' "
                "(cloudlink.js treats anything else as an old server)"
            )
        for marker in LEGACY_VERSION_MARKERS:
            if marker in version:
                raise ValueError(
                    f"cl4.server_version = {version!r} contains {marker!r}, which older "
                    "cloudlink.js builds read as a legacy server version; remove it"
                )
        for name in (
            "max_queue_bytes",
            "max_val_bytes",
            "max_username_length",
            "max_room_name_length",
            "max_rooms_per_client",
            "messages_per_second",
            "message_burst",
            "max_rate_limited_replies",
            "setid_per_minute",
            "setid_burst",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"cl4.{name} must be >= 0 (0 means unlimited)")
        # A list from a config file is accepted and frozen, so options stay hashable.
        object.__setattr__(self, "disabled_commands", tuple(self.disabled_commands))
