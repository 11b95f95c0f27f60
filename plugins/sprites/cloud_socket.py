"""scratchcommunication cloud-socket packets and per-connection session state (spec §3–§6, §13).

`parse_client_packet` reads one ``☁ FROM_CLIENT`` value; `build_insecure_packets` and
`build_secure_packets` make ``☁ TO_CLIENT_n`` values; `SocketSessions` is the state machine for
one websocket connection: it consumes that connection's FROM_CLIENT values and plans its
TO_CLIENT sets. Room-wide state (CID ownership, handshake replay memory) lives in
`ClientIdRegistry` and `HandshakeReplayCache`, which a plugin shares between connections.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from . import cipher, digits
from .keys import ECServerKey, KeyRecoveryError, RSAServerKey
from .pacing import OutboundPacer, ScheduledSet

FROM_CLIENT = "☁ FROM_CLIENT"
TO_CLIENT_VARIABLES = tuple(f"☁ TO_CLIENT_{number}" for number in range(1, 5))

CONNECT_DIGITS = digits.encode("_connect")
SAFE_CONNECT_DIGITS = digits.encode("_safe_connect:")
CLIENT_ID_DIGITS = 5
FRAGMENT_ID_DIGITS = 5
SALT_DIGITS = cipher.SALT_DIGITS
RND3_DIGITS = 3
SEED_DIGITS = 4  # seeds are 1000–9998
DEFAULT_MAX_VALUE_LENGTH = 100_000
MAX_INSECURE_PACKETS = 2  # the sprite corrupts insecure messages of 3+ packets (spec §5)

TYPE_KEY_FRAGMENT = 0
TYPE_DATA = 1

# [-] TYPE PAYLOAD "." CID NONCE — NONCE is 1–10 digits and ignored; zero digits are tolerated.
_CLIENT_PACKET = re.compile(r"(-?)([0-9])([0-9]*)\.([0-9]{5})[0-9]{0,10}")

CONNECTED = "connected"
MESSAGE = "message"
DROPPED = "dropped"
EXPIRED = "expired"


class ClientPacket(NamedTuple):
    """One parsed ``☁ FROM_CLIENT`` value."""

    packet_type: int
    payload: str
    client_id: str
    more: bool


class SocketEvent(NamedTuple):
    """What a consumed packet produced, e.g. ("message", cid, text) or ("dropped", cid, why)."""

    kind: str
    client_id: str
    detail: str


class MessageTooLong(ValueError):
    """The message does not fit the packet limits (insecure: two packets at most)."""


class UnknownClient(LookupError):
    """There is no session for this client id on this connection."""


def parse_client_packet(value: object) -> ClientPacket | None:
    """Parse a FROM_CLIENT value; None if it is not a well-formed string packet."""
    if not isinstance(value, str):
        return None  # a JSON number has lost digits; it can never be a valid packet
    match = _CLIENT_PACKET.fullmatch(value)
    if match is None:
        return None
    more, packet_type, payload, client_id = match.groups()
    return ClientPacket(int(packet_type), payload, client_id, more == "-")


def format_server_packet(payload: str, client_id: str, rnd3: int, index: int, more: bool) -> str:
    """One TO_CLIENT value: [-] PAYLOAD "." CID RND3 IDX."""
    return f"{'-' if more else ''}{payload}.{client_id}{rnd3:03d}{index}"


def with_rnd3(value: str, rnd3: int) -> str:
    """The same TO_CLIENT value with its 3 random digits replaced (to avoid a repeated value)."""
    start = value.index(".") + 1 + CLIENT_ID_DIGITS
    return f"{value[:start]}{rnd3:03d}{value[start + RND3_DIGITS :]}"


def _check_client_id(client_id: str) -> None:
    if len(client_id) != CLIENT_ID_DIGITS or not digits.is_ascii_digits(client_id):
        raise ValueError("client ids are 5 ASCII digits")


def _system_rnd3() -> int:
    return random.SystemRandom().randrange(1000)


def _packet_overhead(index: int, more: bool) -> int:
    """Characters a TO_CLIENT value adds around its payload: [-], ".", CID, RND3, IDX."""
    return int(more) + 1 + CLIENT_ID_DIGITS + RND3_DIGITS + len(str(index))


def build_insecure_packets(
    message: str,
    client_id: str,
    *,
    max_value_length: int = DEFAULT_MAX_VALUE_LENGTH,
    rnd3: Callable[[], int] = _system_rnd3,
) -> list[str]:
    """TO_CLIENT values for an insecure message: one if it fits, else two; MessageTooLong beyond."""
    _check_client_id(client_id)
    stream = "1" + digits.encode(message)
    if len(stream) + _packet_overhead(0, False) <= max_value_length:
        return [format_server_packet(stream, client_id, rnd3(), 0, False)]
    first_size = max_value_length - _packet_overhead(0, True)
    rest = stream[first_size:]
    if first_size < 1 or len(rest) + _packet_overhead(1, False) > max_value_length:
        raise MessageTooLong(
            f"an insecure message of {len(message)} characters needs more than "
            f"{MAX_INSECURE_PACKETS} packets at a value cap of {max_value_length}"
        )
    # Only the first chunk starts with the "1": the sprite strips it from IDX 0 only (§4, §5).
    return [
        format_server_packet(stream[:first_size], client_id, rnd3(), 0, True),
        format_server_packet(rest, client_id, rnd3(), 1, False),
    ]


def secure_packet_length(chunk_chars: int, index: int, more: bool) -> int:
    """Length of a secure TO_CLIENT value carrying an n-character chunk (spec §4)."""
    ciphertext_chars = SEED_DIGITS + 1 + len(str(chunk_chars)) + 1 + chunk_chars
    ciphertext_chars += len(cipher.SUFFIX)
    return 1 + 2 * ciphertext_chars + SALT_DIGITS + _packet_overhead(index, more)


def split_secure_message(
    message: str, max_value_length: int = DEFAULT_MAX_VALUE_LENGTH
) -> list[str]:
    """Split a message into chunks, each filling one secure packet; one chunk whenever it fits."""
    text = digits.sanitize(message)
    chunks: list[str] = []
    while True:
        index = len(chunks)
        if secure_packet_length(len(text), index, False) <= max_value_length:
            chunks.append(text)
            return chunks
        size = (max_value_length - secure_packet_length(0, index, True)) // 2
        while size > 0 and secure_packet_length(size, index, True) > max_value_length:
            size -= 1  # len(str(size)) is part of the length; step down to the exact fit
        if size <= 0:
            raise MessageTooLong(f"value cap {max_value_length} is too small for secure packets")
        chunks.append(text[:size])
        text = text[size:]


def secure_packet(
    chunk: str,
    client_id: str,
    key: bytes,
    salt: str,
    *,
    index: int,
    more: bool,
    rnd3: int,
    seed: int | None = None,
) -> str:
    """One secure TO_CLIENT value: "1" + enc(encrypt(chunk, SALT)) + SALT, then the trailer."""
    payload = "1" + digits.encode(cipher.encrypt(key, salt, chunk, seed)) + salt
    return format_server_packet(payload, client_id, rnd3, index, more)


def build_secure_packets(
    message: str,
    client_id: str,
    key: bytes,
    salts: Iterable[str],
    *,
    max_value_length: int = DEFAULT_MAX_VALUE_LENGTH,
    rnd3: Callable[[], int] = _system_rnd3,
    seed: Callable[[], int] = cipher.random_seed,
) -> list[str]:
    """TO_CLIENT values for a secure message, one packet per chunk, one salt per packet."""
    _check_client_id(client_id)
    chunks = split_secure_message(message, max_value_length)
    salt_iterator: Iterator[str] = iter(salts)
    return [
        secure_packet(
            chunk,
            client_id,
            key,
            next(salt_iterator),
            index=index,
            more=index < len(chunks) - 1,
            rnd3=rnd3(),
            seed=seed(),
        )
        for index, chunk in enumerate(chunks)
    ]


def centiseconds(now: float) -> int:
    """Seconds since the epoch as the sprite's centisecond activity ids."""
    return round(now * 100)


class ClientIdRegistry:
    """Room-wide binding of client ids to the connection whose packet created them (§13.2)."""

    def __init__(self) -> None:
        self._owners: dict[str, object] = {}

    def owner_of(self, client_id: str) -> object | None:
        """The owning connection's token, or None if the id is free."""
        return self._owners.get(client_id)

    def claim(self, client_id: str, owner: object) -> bool:
        """Bind a free id to `owner`; True if `owner` holds it afterwards."""
        return self._owners.setdefault(client_id, owner) is owner

    def release(self, client_id: str, owner: object) -> None:
        """Free an id if (and only if) `owner` holds it."""
        if self._owners.get(client_id) is owner:
            del self._owners[client_id]


def _blob_digest(blob: str) -> bytes:
    return hashlib.sha256(blob.encode("ascii")).digest()


class HandshakeReplayCache:
    """Every key blob that opened a session within the window, so a replay is rejected (§13.5).

    Nothing is forgotten before its window ends, whatever arrives meanwhile: `capacity` (None:
    unbounded) caps how many blobs are held at once, and while it is reached `full` is true and
    new handshakes must be refused rather than make room. The plugin sizes the capacity from
    its global connect rate limit, so within that limit it never fills.
    """

    def __init__(self, window: float = 300.0, capacity: int | None = None):
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _purge(self, now: float) -> None:
        while self._seen and next(iter(self._seen.values())) < now - self.window:
            self._seen.popitem(last=False)

    def seen(self, blob: str, now: float) -> bool:
        """True if this blob was used within the window."""
        self._purge(now)
        return _blob_digest(blob) in self._seen

    def full(self, now: float) -> bool:
        """True while `capacity` blobs are remembered: refuse handshakes until some expire."""
        self._purge(now)
        return self.capacity is not None and len(self._seen) >= self.capacity

    def remember(self, blob: str, now: float) -> bool:
        """Record a blob that completed a handshake; False (not recorded) if full."""
        if self.full(now):
            return False
        digest = _blob_digest(blob)
        self._seen[digest] = now
        self._seen.move_to_end(digest)  # keep insertion order = time order for purging
        return True


@dataclass(frozen=True)
class SocketLimits:
    """Bounds and windows for one connection's sessions (spec §13.4–13.10)."""

    max_sessions: int = 4
    max_message_chars: int = 500_000  # ≈ 1 MB of digits buffered per message
    max_fragments: int = 16
    max_fragment_digits: int = 100_000
    fragment_ttl: float = 60.0
    session_idle_timeout: float = 1800.0
    connect_max_age: float = 300.0
    future_window: float = 30.0  # the sprite's own acceptance window for salts
    clock_skew_allowance: float = 0.0
    max_value_length: int = DEFAULT_MAX_VALUE_LENGTH
    min_interval: float = 0.1

    @property
    def replay_window(self) -> float:
        """How long a connect's key blob stays acceptable: ACT may be up to
        future_window + clock_skew_allowance ahead and connect_max_age behind."""
        return self.connect_max_age + self.future_window + self.clock_skew_allowance


@dataclass
class SocketSession:
    """State of one client id on this connection; `key` is None for an insecure session."""

    client_id: str
    scheme: str  # "insecure", "EC" or "RSA"
    key: bytes | None
    last_activity: float
    connect_act: int = 0  # centiseconds
    offset: int = 0  # client clock minus server clock, centiseconds
    last_accepted_salt: int = 0
    used_salts: set[int] = field(default_factory=set)
    buffer: list[str] = field(default_factory=list)
    buffered_chars: int = 0
    discarding: bool = False  # skip packets up to the end of the current (rejected) message

    @property
    def secure(self) -> bool:
        """True for EC/RSA sessions."""
        return self.key is not None

    def reset_buffer(self) -> None:
        """Forget a partially received message."""
        self.buffer.clear()
        self.buffered_chars = 0


class SocketSessions:
    """The cloud-socket state machine of one websocket connection (pure; time passed as `now`)."""

    def __init__(
        self,
        *,
        ec_key: ECServerKey | None = None,
        rsa_key: RSAServerKey | None = None,
        registry: ClientIdRegistry | None = None,
        replay_cache: HandshakeReplayCache | None = None,
        limits: SocketLimits | None = None,
        rng: random.Random | None = None,
    ):
        self.limits = limits or SocketLimits()
        self.server_keys = [key for key in (ec_key, rsa_key) if key is not None]
        self.registry = registry if registry is not None else ClientIdRegistry()
        if replay_cache is None:
            replay_cache = HandshakeReplayCache(self.limits.replay_window)
        self.replay_cache = replay_cache
        self.rng = rng or random.SystemRandom()
        self.pacer = OutboundPacer(TO_CLIENT_VARIABLES, self.limits.min_interval)
        # Per connection, not per session: the sprite's salt floor survives its reconnects.
        self.last_sent_salt = 0
        self._sessions: dict[str, SocketSession] = {}
        self._fragments: dict[tuple[str, str], tuple[str, float]] = {}

    # ----------------------------------------------------------------- inspection
    def session(self, client_id: str) -> SocketSession | None:
        """The session of a client id on this connection, if any."""
        return self._sessions.get(client_id)

    @property
    def client_ids(self) -> list[str]:
        """Client ids with a session on this connection."""
        return list(self._sessions)

    @property
    def pending_fragments(self) -> int:
        """Number of stored key fragments."""
        return len(self._fragments)

    # ----------------------------------------------------------------- lifecycle
    def expire(self, now: float) -> list[SocketEvent]:
        """Drop idle sessions and stale key fragments."""
        self._fragments = {
            slot: (data, stored)
            for slot, (data, stored) in self._fragments.items()
            if now - stored <= self.limits.fragment_ttl
        }
        events = []
        for client_id, session in list(self._sessions.items()):
            if now - session.last_activity > self.limits.session_idle_timeout:
                self._end_session(client_id)
                events.append(SocketEvent(EXPIRED, client_id, "idle"))
        return events

    def close(self) -> None:
        """End every session (the websocket closed) and free their client ids."""
        for client_id in list(self._sessions):
            self._end_session(client_id)
        self._fragments.clear()

    def _end_session(self, client_id: str) -> None:
        self._sessions.pop(client_id, None)
        self.registry.release(client_id, self)

    def _start_session(self, session: SocketSession) -> bool:
        client_id = session.client_id
        if not self.registry.claim(client_id, self):
            return False
        if client_id not in self._sessions and len(self._sessions) >= self.limits.max_sessions:
            # The sprite draws a new id on every reconnect; evicting the least recently active
            # session keeps a reconnecting client working where refusing would lock it out.
            oldest = min(self._sessions.values(), key=lambda known: known.last_activity)
            self._end_session(oldest.client_id)
        self._sessions[client_id] = session
        return True

    # ----------------------------------------------------------------- receiving
    def receive(self, value: object, now: float) -> list[SocketEvent]:
        """Consume one FROM_CLIENT value from this connection; return what it produced."""
        events = self.expire(now)
        packet = parse_client_packet(value)
        if packet is None:
            events.append(SocketEvent(DROPPED, "", "malformed packet"))
            return events
        client_id = packet.client_id
        owner = self.registry.owner_of(client_id)
        if owner is not None and owner is not self:
            events.append(SocketEvent(DROPPED, client_id, "client id bound to another connection"))
            return events
        if packet.packet_type == TYPE_KEY_FRAGMENT:
            event = self._store_fragment(packet, now)
        elif packet.packet_type != TYPE_DATA:
            event = SocketEvent(DROPPED, client_id, "unsupported packet type")
        elif packet.payload.startswith(SAFE_CONNECT_DIGITS):
            event = self._secure_connect(packet, now)
        elif packet.payload == CONNECT_DIGITS:
            event = self._insecure_connect(client_id, now, discarding=False)
        elif client_id not in self._sessions:
            # E.g. "connect insecurely" after a secure session: its _connect goes out encrypted
            # under the old key (the sprite clears the key afterwards), so treat it as a connect.
            event = self._insecure_connect(client_id, now, discarding=packet.more)
        elif self._sessions[client_id].secure:
            event = self._secure_data(self._sessions[client_id], packet, now)
        else:
            event = self._insecure_data(self._sessions[client_id], packet, now)
        if event is not None:
            events.append(event)
        return events

    def _store_fragment(self, packet: ClientPacket, now: float) -> SocketEvent | None:
        client_id = packet.client_id
        if len(packet.payload) < FRAGMENT_ID_DIGITS:
            return SocketEvent(DROPPED, client_id, "key fragment without id")
        fragment_id = packet.payload[:FRAGMENT_ID_DIGITS]
        data = packet.payload[FRAGMENT_ID_DIGITS:]
        if len(data) > self.limits.max_fragment_digits:
            return SocketEvent(DROPPED, client_id, "key fragment too large")
        slot = (client_id, fragment_id)
        if slot in self._fragments:
            return SocketEvent(DROPPED, client_id, "duplicate key fragment")  # first writer wins
        if len(self._fragments) >= self.limits.max_fragments:
            return SocketEvent(DROPPED, client_id, "too many pending key fragments")
        self._fragments[slot] = (data, now)
        return None

    def _insecure_connect(self, client_id: str, now: float, *, discarding: bool) -> SocketEvent:
        session = SocketSession(client_id, "insecure", None, now, discarding=discarding)
        if not self._start_session(session):
            return SocketEvent(DROPPED, client_id, "client id bound to another connection")
        return SocketEvent(CONNECTED, client_id, "insecure")

    def _secure_connect(self, packet: ClientPacket, now: float) -> SocketEvent:
        client_id = packet.client_id
        body = packet.payload[len(SAFE_CONNECT_DIGITS) :]
        if len(body) < SALT_DIGITS + FRAGMENT_ID_DIGITS or (len(body) - SALT_DIGITS) % 5:
            return SocketEvent(DROPPED, client_id, "malformed secure connect")
        if not self.server_keys:
            return SocketEvent(DROPPED, client_id, "secure connects are not configured")
        act = body[-SALT_DIGITS:]
        fragment_ids = [
            body[start : start + FRAGMENT_ID_DIGITS]
            for start in range(0, len(body) - SALT_DIGITS, FRAGMENT_ID_DIGITS)
        ]
        act_cs, now_cs = int(act), centiseconds(now)
        ahead = centiseconds(self.limits.future_window + self.limits.clock_skew_allowance)
        if act_cs > now_cs + ahead:
            return SocketEvent(DROPPED, client_id, "connect timestamp in the future")
        if act_cs < now_cs - centiseconds(self.limits.connect_max_age):
            return SocketEvent(DROPPED, client_id, "connect timestamp too old")
        slots = [(client_id, fragment_id) for fragment_id in fragment_ids]
        if any(slot not in self._fragments for slot in slots):
            return SocketEvent(DROPPED, client_id, "missing key fragment")
        blob = "".join(self._fragments.pop(slot)[0] for slot in slots)
        if self.replay_cache.seen(blob, now):
            return SocketEvent(DROPPED, client_id, "replayed handshake")
        if self.replay_cache.full(now):
            # Forgetting an older blob to make room would let its replay through.
            return SocketEvent(DROPPED, client_id, "too many recent secure connects")
        for server_key in self.server_keys:
            try:
                key_str = server_key.recover_key_string(blob, act)
            except KeyRecoveryError:
                continue
            session = SocketSession(
                client_id,
                server_key.scheme,
                cipher.derive_key(key_str),
                now,
                connect_act=act_cs,
                offset=act_cs - now_cs,
                last_accepted_salt=act_cs,
            )
            if not self._start_session(session):
                return SocketEvent(DROPPED, client_id, "client id bound to another connection")
            self.replay_cache.remember(blob, now)
            return SocketEvent(CONNECTED, client_id, server_key.scheme)
        return SocketEvent(DROPPED, client_id, "key recovery failed")

    def _append(self, session: SocketSession, part: str, chars: int, more: bool) -> str | None:
        """Buffer one part; return the complete buffer when this was the final part."""
        if session.discarding:
            session.discarding = more
            return None
        if session.buffered_chars + chars > self.limits.max_message_chars:
            session.reset_buffer()
            session.discarding = more
            raise MessageTooLong("buffered message exceeds the size limit")
        session.buffer.append(part)
        session.buffered_chars += chars
        if more:
            return None
        complete = "".join(session.buffer)
        session.reset_buffer()
        return complete

    def _insecure_data(
        self, session: SocketSession, packet: ClientPacket, now: float
    ) -> SocketEvent | None:
        session.last_activity = now
        try:
            stream = self._append(session, packet.payload, len(packet.payload) // 2, packet.more)
        except MessageTooLong:
            return SocketEvent(DROPPED, session.client_id, "message too large")
        if stream is None:
            return None
        try:
            return SocketEvent(MESSAGE, session.client_id, digits.decode(stream))
        except ValueError:
            return SocketEvent(DROPPED, session.client_id, "undecodable message")

    def _secure_data(
        self, session: SocketSession, packet: ClientPacket, now: float
    ) -> SocketEvent | None:
        client_id = session.client_id
        if len(packet.payload) < SALT_DIGITS:
            return SocketEvent(DROPPED, client_id, "secure packet without salt")
        salt = packet.payload[-SALT_DIGITS:]
        salt_cs, now_cs = int(salt), centiseconds(now)
        if salt_cs <= session.last_accepted_salt:
            return SocketEvent(DROPPED, client_id, "replayed or stale salt")
        ahead = centiseconds(self.limits.future_window + self.limits.clock_skew_allowance)
        if salt_cs > now_cs + session.offset + ahead:
            return SocketEvent(DROPPED, client_id, "salt too far in the future")
        try:
            chunk = cipher.decrypt(session.key, salt, digits.decode(packet.payload[:-SALT_DIGITS]))
        except ValueError:
            return SocketEvent(DROPPED, client_id, "decryption failed")
        # Only an authentic packet moves the replay window and the clock estimate (§13.5).
        session.last_accepted_salt = salt_cs
        session.offset = salt_cs - now_cs
        session.used_salts.add(salt_cs)
        session.last_activity = now
        try:
            message = self._append(session, chunk, len(chunk), packet.more)
        except MessageTooLong:
            return SocketEvent(DROPPED, client_id, "message too large")
        return None if message is None else SocketEvent(MESSAGE, client_id, message)

    # ----------------------------------------------------------------- sending
    def send(self, client_id: str, message: str, now: float) -> list[ScheduledSet]:
        """Plan the TO_CLIENT sets of one message to a client (MessageTooLong if impossible)."""
        session = self._sessions.get(client_id)
        if session is None:
            raise UnknownClient(client_id)
        session.last_activity = now
        if not session.secure:
            values = build_insecure_packets(
                message,
                client_id,
                max_value_length=self.limits.max_value_length,
                rnd3=self._rnd3,
            )
            return self.pacer.schedule_all(values, now, reroll=self._reroll)
        chunks = split_secure_message(message, self.limits.max_value_length)
        planned = []
        for index, chunk in enumerate(chunks):
            slot = self.pacer.next_slot(now)
            salt = self.choose_salt(session, slot)
            # The salt must already lie in the client's past (≤ est − 10) when it is written.
            ready = max(slot, (salt + 10 - session.offset) / 100)
            value = secure_packet(
                chunk,
                client_id,
                session.key,
                f"{salt:0{SALT_DIGITS}d}",
                index=index,
                more=index < len(chunks) - 1,
                rnd3=self._rnd3(),
                seed=cipher.SEED_MIN + self.rng.randrange(cipher.SEED_MAX - cipher.SEED_MIN + 1),
            )
            planned.append(self.pacer.schedule(value, now, earliest=ready, reroll=self._reroll))
        return planned

    def choose_salt(self, session: SocketSession, send_time: float) -> int:
        """Outgoing salt per §13.6: increasing, above the connect ACT, ~1 s in the client's past."""
        estimate = centiseconds(send_time) + session.offset
        salt = max(self.last_sent_salt + 1, session.connect_act + 1, estimate - 100)
        while salt in session.used_salts:
            salt += 1  # never reuse a (key, salt) pair the client used: same keystream
        self.last_sent_salt = salt
        # Salts at or below last_sent_salt can never be chosen again; keep the set small.
        session.used_salts = {used for used in session.used_salts if used > salt}
        return salt

    def _rnd3(self) -> int:
        return self.rng.randrange(1000)

    def _reroll(self, value: str) -> str:
        start = value.index(".") + 1 + CLIENT_ID_DIGITS
        current = int(value[start : start + RND3_DIGITS])
        return with_rnd3(value, (current + 1 + self.rng.randrange(999)) % 1000)
