"""A fast path for plain WebSocket upgrade requests (pure: no I/O, no clock).

websockets' Sans-I/O `ServerProtocol` answers every request correctly, but a join through it
costs tens of microseconds (a parser generator, a `Headers` build per line, header-list parsing,
a `Response` object and its serialization). Almost every request a cloud server sees is the
same plain upgrade, so `parse_upgrade` recognises exactly that shape with a few regex matches
and returns what the connection needs. Anything it does not recognise with certainty returns
None, and the connection hands the request to `ServerProtocol` as before, so every refusal,
error status and plain HTTP page keeps coming from one place.

The fast path accepts only requests websockets itself would accept with the same
`Sec-WebSocket-Accept` (tests/server/test_upgrade.py checks this property on generated
requests). It is stricter than websockets in places (one Host; no duplicate Upgrade,
Connection, Origin, key or version; no request body headers), never looser.
"""

from __future__ import annotations

import re
from base64 import b64encode
from email.utils import formatdate
from hashlib import sha1
from typing import NamedTuple

from websockets import http11
from websockets.datastructures import Headers

__all__ = ["Upgrade", "parse_upgrade", "switching_protocols"]

# websockets' limits: a line (CRLF included) of at most MAX_LINE_LENGTH bytes, at most
# MAX_NUM_HEADERS header lines. Read at import, as websockets reads its environment then.
MAX_LINE = http11.MAX_LINE_LENGTH - 2  # without the CRLF
MAX_HEADERS = http11.MAX_NUM_HEADERS

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# origin-form target only ("/..."), visible ASCII, no spaces: websockets takes any ASCII.
_request_line = re.compile(rb"GET (/[\x21-\x7e]*) HTTP/1\.1\r\n").match
# Every header line `token ":" value CRLF` (value: HTAB, SP, VCHAR, obs-text), then CRLF.
# A line starting with whitespace (obs-fold), a bare CR or LF, NUL or any other control
# character cannot match.
_header_block = re.compile(
    rb"(?:[-!#$%&'*+.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
).fullmatch
# Split validated header lines into (name, value without surrounding spaces and tabs): the
# first when no value ends in whitespace (the usual case, and faster), else the second.
_fields = re.compile(r"([^:]+):[ \t]*([^\r]*)\r\n").findall
_fields_trailing_space = re.compile(r"([^:]+):[ \t]*([^\r]*?)[ \t]*\r\n").findall
_token = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+").fullmatch
# base64 of exactly 16 bytes (websockets decodes with validate=True and checks the length).
_key = re.compile(r"[A-Za-z0-9+/]{22}==").fullmatch


class Upgrade(NamedTuple):
    """A plain, valid WebSocket upgrade request."""

    path: str
    headers: Headers
    accept: str  # the Sec-WebSocket-Accept value


def _tokens(value: str) -> list[str] | None:
    """A `1#token` list (RFC 7230 7: empty elements allowed), or None if malformed or empty."""
    items = []
    for item in value.split(","):
        item = item.strip(" \t")
        if item:
            if not _token(item):
                return None
            items.append(item)
    return items or None


def parse_upgrade(request: bytes) -> Upgrade | None:
    """The upgrade in `request` (bytes up to and including the blank line), or None.

    None means "not a plain valid upgrade": the caller hands the bytes to websockets, which
    accepts, refuses or answers them exactly as it always did.
    """
    line = _request_line(request)
    if line is None:
        return None
    start = line.end()
    if not _header_block(request, start):
        return None
    if len(request) > MAX_LINE and max(map(len, request.split(b"\r\n"))) > MAX_LINE:
        return None
    block = request[start:-2]
    split = _fields_trailing_space if b" \r\n" in block or b"\t\r\n" in block else _fields
    fields = split(block.decode("latin-1"))  # [(name, value)], as websockets' parser has them
    if len(fields) > MAX_HEADERS:
        return None
    store: dict[str, list[str]] = {}
    for name, value in fields:
        key = name.lower()
        values = store.get(key)
        if values is None:
            store[key] = [value]
        else:
            values.append(value)
    get = store.get
    host = get("host")
    upgrade = get("upgrade")
    connection = get("connection")
    version = get("sec-websocket-version")
    key = get("sec-websocket-key")
    # Each exactly once (websockets would take some repeats; here they simply defer to it).
    if (
        host is None or upgrade is None or connection is None or version is None or key is None
        or len(host) + len(upgrade) + len(connection) + len(version) + len(key) != 5
    ):
        return None
    origin = get("origin")
    if origin is not None and len(origin) > 1:
        return None
    if "transfer-encoding" in store or "content-length" in store:
        return None
    if upgrade[0].lower() != "websocket" or version[0] != "13" or not _key(key[0]):
        return None
    options = _tokens(connection[0])
    if options is None or not any(option.lower() == "upgrade" for option in options):
        return None
    # Offered subprotocols are never selected (the server has none), but websockets parses
    # them and answers a malformed offer with 400: only well-formed offers stay here.
    offers = get("sec-websocket-protocol")
    if offers is not None:
        for offer in offers:
            if _tokens(offer) is None:
                return None
    # Sec-WebSocket-Extensions is ignored, as websockets ignores it with no extensions enabled.
    # A real websockets Headers, filled the way its parser fills one (without re-running the
    # value check that `__setitem__` does: every value was validated above).
    headers = Headers.__new__(Headers)
    headers._dict = store
    headers._list = fields
    accept = b64encode(sha1(key[0].encode() + _GUID).digest()).decode()
    return Upgrade(line.group(1).decode("ascii"), headers, accept)


_date_second = -1
_date_header = b""


def switching_protocols(accept: str, now: float) -> bytes:
    """The 101 response websockets' `ServerProtocol.accept` sends, byte for byte.

    `now` is the current time.time(); the Date header is formatted once per second.
    """
    global _date_second, _date_header
    second = int(now)
    if second != _date_second:
        _date_header = formatdate(second, usegmt=True).encode()
        _date_second = second
    return b"".join((
        b"HTTP/1.1 101 Switching Protocols\r\nDate: ", _date_header,
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept.encode(), b"\r\n\r\n",
    ))
