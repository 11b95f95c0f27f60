"""scratchattach "Cloud Requests" sprite: codec, TO_HOST parsing, FROM_HOST responses (§11).

`RequestHostState` is the per-connection state: chunk reassembly, de-duplication by request id,
and the last multi-part responses kept for re-requests. Keying by connection (one state object
per websocket) keeps two clients with the same request id apart (§13.9).
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from .digits import is_ascii_digits
from .pacing import OutboundPacer, ScheduledSet

TO_HOST = "☁ TO_HOST"
FROM_HOST_VARIABLES = tuple(f"☁ FROM_HOST_{number}" for number in range(1, 10))

# Codes 10–88 then 90–99 (code = costume number); 89 is the list/line separator.
_CHARS_FROM_10 = (
    "1234567890 "
    + "".join(letter + letter.upper() for letter in "abcdefghijklmnopqrstuvwxyz")
    + '*/.,!"§$%_-(´)`?'
)
CHAR_OF_CODE = {code: char for code, char in enumerate(_CHARS_FROM_10, start=10)}
CHAR_OF_CODE.update({code: char for code, char in enumerate("@#~;:+&|^'", start=90)})
CODE_OF_CHAR = {char: code for code, char in CHAR_OF_CODE.items()}
SPACE_CODE = CODE_OF_CHAR[" "]
LIST_SEPARATOR_CODE = 89
LINE_BREAK = "\n"  # how a separator decodes in plain text

FINAL_ENCODED = "2222"
FINAL_RAW = "3222"
PUSH_ID_PREFIX = "100000000"
REQUEST_ID_DIGITS = 6
REQUEST_CHUNK_DIGITS = 245  # what the sprite sends per TO_HOST value
MAX_PARTS = 999
DEFAULT_MAX_VALUE_LENGTH = 100_000

_TO_HOST_VALUE = re.compile(r"(-?)([0-9]*)\.([0-9]+)")
_RAW_RESPONSE = re.compile(r"[0-9]+")


class ResponseTooLong(ValueError):
    """The response needs more than 999 parts at this value cap."""


def encode(text: str) -> str:
    """Encode text as 2-digit codes; characters without a code become a space (20)."""
    return "".join(str(CODE_OF_CHAR.get(char, SPACE_CODE)) for char in text)


def _codes(digits: str) -> list[int]:
    if len(digits) % 2 or not is_ascii_digits(digits):
        raise ValueError("encoded text must be an even number of ASCII digits")
    codes = [int(digits[position : position + 2]) for position in range(0, len(digits), 2)]
    if any(code < 10 for code in codes):
        raise ValueError("codes 00-09 cannot be decoded")
    return codes


def decode(digits: str) -> str:
    """Decode 2-digit codes 10–99 (89 → line break); ValueError on codes 00–09 or bad input."""
    return "".join(
        LINE_BREAK if code == LIST_SEPARATOR_CODE else CHAR_OF_CODE[code] for code in _codes(digits)
    )


def encode_list(items: Sequence[object]) -> str:
    """Encode a list response: each item followed by the separator 89."""
    return "".join(encode(str(item)) + str(LIST_SEPARATOR_CODE) for item in items)


def decode_list(digits: str) -> list[str]:
    """Split a list response at separator codes (the sprite's view); ValueError if malformed."""
    items, current = [], []
    for code in _codes(digits):
        if code == LIST_SEPARATOR_CODE:
            items.append("".join(current))
            current = []
        else:
            current.append(CHAR_OF_CODE[code])
    if current:
        items.append("".join(current))
    return items


@dataclass(frozen=True)
class ToHostPacket:
    """One parsed ``☁ TO_HOST`` value: a request chunk or a re-request of a response part."""

    request_id: str
    digits: str = ""
    more: bool = False
    rerequested_part: int | None = None  # k of "k.RID9": resend part k+1

    @property
    def is_rerequest(self) -> bool:
        """True for "k.RID9" values."""
        return self.rerequested_part is not None


def parse_to_host(value: object) -> ToHostPacket | None:
    """Parse a TO_HOST value; None if it is not a well-formed string."""
    if not isinstance(value, str):
        return None
    match = _TO_HOST_VALUE.fullmatch(value)
    if match is None:
        return None
    more, head, tail = match.groups()
    if len(tail) == REQUEST_ID_DIGITS + 1 and tail.endswith("9"):
        if more or not head or len(head) > len(str(MAX_PARTS)):
            return None
        return ToHostPacket(tail[:REQUEST_ID_DIGITS], rerequested_part=int(head))
    if len(tail) != REQUEST_ID_DIGITS:
        return None
    return ToHostPacket(tail, head, more == "-")


def encode_response(
    result: object, request_id: str, *, max_value_length: int = DEFAULT_MAX_VALUE_LENGTH
) -> list[str]:
    """FROM_HOST values for a handler result, in sending order; [] for None (no reply)."""
    if result is None:
        return []
    if isinstance(result, list):
        body, final = encode_list(result), FINAL_ENCODED
    else:
        text = str(result)
        # Raw digits only for ^[0-9]+$ (the reference also sends floats raw, with two dots) and
        # only for ids ending in 0, as the reference does (older templates decode everything).
        if request_id.endswith("0") and _RAW_RESPONSE.fullmatch(text):
            body, final = text, FINAL_RAW
        else:
            body, final = encode(text or "-"), FINAL_ENCODED
    part_size = max_value_length - (len(request_id) + 6)
    if part_size < 1:
        raise ValueError(f"value cap {max_value_length} is too small")
    values = []
    while len(body) > part_size:
        if len(values) == MAX_PARTS:
            raise ResponseTooLong(f"response needs more than {MAX_PARTS} parts")
        values.append(f"{body[:part_size]}.{request_id}{len(values) + 1:03d}1")
        body = body[part_size:]
    values.append(f"{body}.{request_id}{final}")
    return values


def error_response(name: str) -> list[str]:
    """The reply list for a handler that raised (as scratchattach 2.2.6 sends it)."""
    return [f"Error in request {name}", "Check the Python console"]


def push_request_id(rng: random.Random | None = None) -> str:
    """A server-push id: 100000000 + 4 random digits (the sprite watches for ".100000000")."""
    return f"{PUSH_ID_PREFIX}{(rng or random.SystemRandom()).randrange(10_000):04d}"


@dataclass(frozen=True)
class IncomingRequest:
    """A complete request from this connection: call handler `name` with string arguments."""

    request_id: str
    name: str
    arguments: tuple[str, ...]


@dataclass(frozen=True)
class Resend:
    """A re-requested response part, already planned on this connection's pacer."""

    request_id: str
    sets: tuple[ScheduledSet, ...]


@dataclass(frozen=True)
class Dropped:
    """A value that was ignored, with the reason (for logging)."""

    request_id: str
    reason: str


@dataclass
class _PendingRequest:
    chunks: list[str]
    digits: int
    first_seen: float


class RequestHostState:
    """scratchattach request state of one connection (pure; time passed as `now`)."""

    def __init__(
        self,
        *,
        max_value_length: int = DEFAULT_MAX_VALUE_LENGTH,
        max_request_digits: int = 1_000_000,
        max_pending_requests: int = 8,
        pending_ttl: float = 60.0,
        remembered_request_ids: int = 35,
        remembered_responses: int = 15,
        resend_interval: float = 0.5,
        min_interval: float = 0.1,
    ):
        self.max_value_length = max_value_length
        self.max_request_digits = max_request_digits
        self.max_pending_requests = max_pending_requests
        self.pending_ttl = pending_ttl
        self.resend_interval = resend_interval
        self.pacer = OutboundPacer(FROM_HOST_VARIABLES, min_interval)
        self._pending: dict[str, _PendingRequest] = {}
        self._seen_ids: deque[str] = deque(maxlen=remembered_request_ids)
        self._responses: OrderedDict[str, list[str]] = OrderedDict()
        self._remembered_responses = remembered_responses
        self._last_resend: dict[tuple[str, int], float] = {}

    def receive(self, value: object, now: float) -> IncomingRequest | Resend | Dropped | None:
        """Consume one TO_HOST value of this connection; None when a chunk was only buffered."""
        self._pending = {
            request_id: pending
            for request_id, pending in self._pending.items()
            if now - pending.first_seen <= self.pending_ttl
        }
        packet = parse_to_host(value)
        if packet is None:
            return Dropped("", "malformed value")
        if packet.is_rerequest:
            return self._resend(packet.request_id, packet.rerequested_part, now)
        request_id = packet.request_id
        if request_id in self._seen_ids:
            return Dropped(request_id, "request id already answered")
        pending = self._pending.get(request_id)
        if pending is None:
            if packet.more and len(self._pending) >= self.max_pending_requests:
                return Dropped(request_id, "too many unfinished requests")
            pending = _PendingRequest([], 0, now)
        if pending.digits + len(packet.digits) > self.max_request_digits:
            self._pending.pop(request_id, None)
            return Dropped(request_id, "request too large")
        pending.chunks.append(packet.digits)
        pending.digits += len(packet.digits)
        if packet.more:
            self._pending[request_id] = pending
            return None
        self._pending.pop(request_id, None)
        self._seen_ids.append(request_id)
        try:
            text = decode("".join(pending.chunks))
        except ValueError:
            return Dropped(request_id, "undecodable request")
        name, *arguments = text.split("&")
        return IncomingRequest(request_id, name, tuple(arguments))

    def respond(self, request_id: str, result: object, now: float) -> list[ScheduledSet]:
        """Plan the FROM_HOST sets answering one request; multi-part answers are remembered."""
        values = encode_response(result, request_id, max_value_length=self.max_value_length)
        if len(values) > 1:
            self._responses[request_id] = values
            self._responses.move_to_end(request_id)
            while len(self._responses) > self._remembered_responses:
                forgotten, _ = self._responses.popitem(last=False)
                self._last_resend = {
                    slot: when for slot, when in self._last_resend.items() if slot[0] != forgotten
                }
        return self.pacer.schedule_all(values, now)

    def send_values(self, values: Sequence[str], now: float) -> list[ScheduledSet]:
        """Plan already encoded values, e.g. a server push from `encode_response`."""
        return self.pacer.schedule_all(values, now)

    def _resend(self, request_id: str, part: int, now: float) -> Resend | Dropped:
        values = self._responses.get(request_id)
        if values is None or part >= len(values):
            return Dropped(request_id, "re-request for an unknown response part")
        last = self._last_resend.get((request_id, part))
        if last is not None and now - last < self.resend_interval:
            # The sprite repeats a re-request every 0.1 s until the part arrives.
            return Dropped(request_id, "part was just resent")
        self._last_resend[(request_id, part)] = now
        return Resend(request_id, (self.pacer.schedule(values[part], now),))
