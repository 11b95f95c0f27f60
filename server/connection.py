"""One client socket: the HTTP upgrade, WebSocket framing, liveness and outbound flow control.

How a request is classified, each byte parsed once: a plain upgrade request that arrives whole
in the first read is recognised by `upgrade.parse_upgrade` (a few regex matches) and answered
with a pre-built 101. Anything that is not exactly that shape is handed, from its first byte,
to `request.RequestReader` (h11), which reads the head and the body; the parsed request is then
an upgrade if its `Upgrade` header names websocket (validated and accepted or refused by
websockets' Sans-I/O `ServerProtocol`), else a plain request answered from the route table
(`routes.RouteTable`) with its body, whatever the bytes: every such request gets an HTTP status.
A plain request must be read and answered within `[http] request_timeout` (408 while it is
still being read, 503 while its handler runs), so a slow or stalled client cannot hold a
connection open; each connection serves one plain request and closes. After the upgrade, frames
are scanned here
directly: the common case, a small masked text frame, costs one header decode, one C unmask and
one UTF-8 decode, with no task, future or queue per message. Control frames, fragmentation and
every framing error follow RFC 6455 with the close codes the Scratch spec names (1002, 1007, 1009).

Outbound data is written straight to the transport as pre-encoded frames, so a room can encode
a batch once and write the same bytes to every member. asyncio's write-buffer limits tell us
when a client stops reading (`paused`); rooms then keep only *which* variables it is missing
and send their newest values when it drains.

Inbound, a client pays for its own input: every connection has a read budget (`ReadLimits`,
frames and bytes per second). One over its budget is no longer read (`pause_reading`) until a
timer finds the budget refilled, so TCP slows the sender down at no CPU cost to anyone else;
frames already read stay buffered and are handled first, in order. The hot path only counts
down a credit handed out by the budget, and looks at the clock when it runs out.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any, Protocol

from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.speedups import apply_mask

from .budget import THROTTLE_QUANTUM, UNLIMITED, ReadLimits, refill
from .codes import CloseCode, State
from .events import EventBus
from .framing import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PING_FRAME,
    close_frame,
    encode_text,
    frame_header,
    parse_close_payload,
)
from .http import plain_response, upgrade_refusal
from .logsafe import printable
from .request import RequestError, RequestReader
from .routes import HttpRequest
from .upgrade import Upgrade, parse_upgrade, switching_protocols

log = logging.getLogger("stratus.connection")

CONNECTING, OPEN, CLOSING, CLOSED = State.CONNECTING, State.OPEN, State.CLOSING, State.CLOSED
PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
INVALID_DATA = CloseCode.INVALID_DATA
MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG

# Client ids: this node's worker number (`Cluster.worker`, 0 to 1023, unique among the live
# nodes of a cluster; 0 for one process) above a per-process counter, so two nodes never hand
# out the same id (the admin API kicks by id on whichever node holds it) and every id stays
# below 2**53, exact as a JavaScript number (the dashboard's). One process: 1, 2, 3, ...
CLIENT_COUNTER_BITS = 43
MAX_WORKER = 1023
_ids = itertools.count(1)


def client_id(worker: int, serial: int) -> int:
    """The id of the `serial`-th connection of a node whose worker number is `worker`."""
    if not 0 <= worker <= MAX_WORKER:
        raise ValueError(f"a worker number is 0 to {MAX_WORKER}, got {worker}")
    return (worker << CLIENT_COUNTER_BITS) | (serial & ((1 << CLIENT_COUNTER_BITS) - 1))


def worker_of(client: int) -> int:
    """The worker number of the node that made client id `client`."""
    return client >> CLIENT_COUNTER_BITS


class ConnectionSettings(Protocol):
    """The [server] settings a connection reads."""

    write_buffer_high: int
    max_message_bytes: int
    close_timeout: float


class HttpSettings(Protocol):
    """The [http] settings a connection reads."""

    max_body_bytes: int
    request_timeout: float


class Host(Protocol):
    """What a connection needs from the server that accepted it (`server.app.Server`)."""

    loop: asyncio.AbstractEventLoop
    events: EventBus
    read_limits: ReadLimits
    worker: int  # this node's worker number (see `client_id`)

    @property
    def settings(self) -> ConnectionSettings: ...

    @property
    def http_settings(self) -> HttpSettings: ...

    def connection_opened(self, connection: Connection) -> None: ...
    def connection_dropped(self, connection: Connection) -> None: ...
    def connection_upgraded(self, connection: Connection) -> None: ...
    def connection_closed(self, connection: Connection) -> None: ...
    def first_text(self, connection: Connection, text: str) -> None: ...
    def client_address(self, peer: str, headers: Headers) -> str: ...
    def refuse_upgrade(self, connection: Connection) -> Response | None: ...
    def http_response(self, request: HttpRequest) -> Response | Awaitable[Response]: ...
    def http_wants_body(self, method: str, path: str) -> bool: ...


_websockets_logger = logging.getLogger("websockets.server")
_websockets_logger.setLevel(logging.WARNING)  # its INFO lines duplicate ours, per connection


class Connection(asyncio.Protocol):
    """One client socket (the `session.Peer` its protocol engine talks to).

    `session` is the protocol engine picked by the first text message. `paused`, `backlog` and
    `catch_up` are the fan-out's per-member outbound state: while the socket's buffer is full
    the fan-out parks what the client misses in `backlog` and sets `catch_up`, which runs once
    the buffer drains.
    """

    __slots__ = (
        "server",
        "id",
        "transport",
        "state",
        "peer",
        "request_headers",
        "session",
        "created",
        "connected_at",
        "pong_pending",
        "close_code",
        "paused",
        "backlog",
        "catch_up",
        "counted_address",
        "received",
        "read_limits",
        "_frame_credit",
        "_frame_tokens",
        "_frames_refilled",
        "_byte_credit",
        "_byte_tokens",
        "_bytes_refilled",
        "_resume_timer",
        "_close_timer",
        "_handshake",
        "_request_timer",
        "_responding",
        "_buffer",
        "_fragments",
        "_fragments_size",
        "_fragments_text",
        "_failed",
        "__weakref__",
    )

    def __init__(self, server: Host) -> None:
        self.server = server
        self.id = client_id(server.worker, next(_ids))
        self.transport: asyncio.Transport | None = None
        self.state = CONNECTING
        self.peer = ""
        self.request_headers: Headers | None = None
        self.session: Any = None
        self.created = time.monotonic()
        self.connected_at = time.time()
        self.pong_pending = False
        self.close_code: int | None = None
        self.paused = False
        self.backlog: Any = None
        self.catch_up: Any = None
        # The resolved address counted against [server] max_connections_per_ip, if any.
        self.counted_address: str | None = None
        self.received = 0  # text messages read (metrics sum them per protocol)
        limits = self.read_limits = server.read_limits
        # Frames and bytes that may be read before the budget is consulted again (a full burst
        # to begin with); the budget keeps the fractions and when it was last refilled.
        self._frame_credit = limits.frame_burst if limits.frames_per_second else UNLIMITED
        self._frame_tokens = 0.0
        self._frames_refilled = self.created
        self._byte_credit = int(limits.bytes_per_second) or UNLIMITED
        self._byte_tokens = 0.0
        self._bytes_refilled = self.created
        self._resume_timer: asyncio.TimerHandle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._handshake: RequestReader | None = None  # made when the fast path defers
        # With a plain request: its [http] request_timeout, and its handler while it runs.
        self._request_timer: asyncio.TimerHandle | None = None
        self._responding: asyncio.Future | None = None
        self._buffer: bytearray | None = None
        self._fragments: list[bytes] | None = None
        self._fragments_size = 0
        self._fragments_text = False
        self._failed = False  # failed: what the client still sends is discarded unread

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        high = self.server.settings.write_buffer_high
        transport.set_write_buffer_limits(high=high, low=high // 4)  # type: ignore[attr-defined]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.server.connection_opened(self)

    def data_received(self, data: bytes) -> None:
        if self.state == OPEN:
            self._receive_frames(data)
        elif self.state == CONNECTING:
            self._receive_handshake(data)
        elif self.state == CLOSING and not self._failed:
            self._receive_frames(data)

    def eof_received(self) -> bool:
        reader = self._handshake
        if self._responding is not None:
            return True  # the request is read; keep the socket open for its answer
        if self.state == CONNECTING and reader is not None and not reader.discarding:
            # The client half-closed inside its request: nothing more will come, so say so.
            self._refuse_request(RequestError(HTTPStatus.BAD_REQUEST, "incomplete request"))
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.state
        self.state = CLOSED
        self._buffer = self._fragments = None
        self.backlog = self.catch_up = None
        if self._resume_timer is not None:
            self._resume_timer.cancel()
            self._resume_timer = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None
        if self._responding is not None:
            self._responding.cancel()  # the client left while its answer was computed
            self._responding = None
        if previous == OPEN and self.session is not None:
            self.session.closed()
        if previous != CONNECTING:
            self.server.connection_closed(self)
        else:
            self.server.connection_dropped(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        catch_up = self.catch_up
        if catch_up is not None and self.state == OPEN:
            self.catch_up = None
            catch_up(self)

    # Opening handshake (HTTP)

    def _receive_handshake(self, data: bytes) -> None:
        # Fast path: a whole plain upgrade request in the first read is answered here.
        # Anything else (a request in pieces, plain HTTP, anything unusual) is read with h11.
        reader = self._handshake
        if reader is None:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                end += 4
                upgrade = parse_upgrade(data[:end])
                if upgrade is not None:
                    self._accept_upgrade(upgrade, data[end:])
                    return
            settings = self.server.http_settings
            reader = self._handshake = RequestReader(max_body_bytes=settings.max_body_bytes)
            self._request_timer = self.server.loop.call_later(settings.request_timeout,
                                                              self._request_timed_out)
        if self._responding is not None:
            return  # the request was read; bytes after it are not parsed (one per connection)
        try:
            request = reader.receive_data(data)
        except RequestError as error:
            self._refuse_request(error)
            return
        if request is None:
            return
        if (not reader.complete and not reader.continued
                and self.server.http_wants_body(request.method, request.path)):
            # The client waits for 100 Continue before its body, and a handler will read it:
            # ask for it (without a handler, the answer comes now and spares it the upload).
            reader.continued = True
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._receive_handshake(b"")  # body bytes the client sent anyway are buffered
            return
        self._handle_request(request, reader)

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.state != CONNECTING:
            return
        reader = self._handshake
        if reader is None or reader.discarding:
            self.abort()  # answered, and the client still has not stopped sending
            return
        responding, self._responding = self._responding, None
        if responding is not None:
            responding.cancel()
            log.warning("HTTP request from %s not answered within [http] request_timeout",
                        printable(self.peer))
            status = HTTPStatus.SERVICE_UNAVAILABLE
        else:
            status = HTTPStatus.REQUEST_TIMEOUT
        self._refuse_request(RequestError(status, "request timeout"))

    def _refuse_request(self, error: RequestError) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("bad HTTP request from %s: %d %s", printable(self.peer), error.status,
                      printable(error.detail))
        status = error.status
        head = self._handshake is not None and self._handshake.method == "HEAD"
        self._answer(plain_response(status, status.phrase, f"{status.phrase}.\n".encode(),
                                    "text/plain; charset=utf-8", head=head))

    def _accept_upgrade(self, upgrade: Upgrade, leftover: bytes) -> None:
        """The fast path's twin of `_handle_request` for a request websockets would accept."""
        server = self.server
        headers = upgrade.headers
        self.peer = server.client_address(self.peer, headers)
        refusal = server.refuse_upgrade(self)
        if refusal is not None:
            self._answer(refusal)
            return
        self.request_headers = headers
        self.transport.write(switching_protocols(upgrade.accept, time.time()))
        self.state = OPEN
        server.connection_upgraded(self)
        if leftover and self.state == OPEN:
            self._receive_frames(leftover)

    def _handle_request(self, request: Request, reader: RequestReader) -> None:
        server = self.server
        headers = request.headers
        self.peer = server.client_address(self.peer, headers)
        if not any("websocket" in value.lower() for value in headers.get_all("Upgrade")):
            self._respond(HttpRequest(request.path, headers, request.method, request.protocol,
                                      body=reader.body, address=self.peer))
            return
        refusal = server.refuse_upgrade(self)
        if refusal is not None:
            self._answer(refusal)
            return
        if reader.has_body:
            self._answer(plain_response(400, "Bad Request",
                                        b"A WebSocket upgrade request has no body.\n",
                                        "text/plain; charset=utf-8"))
            return
        handshake = ServerProtocol(logger=_websockets_logger)
        response = handshake.accept(request)
        if response.status_code != 101:
            self._answer(upgrade_refusal(response, handshake.handshake_exc))
            return
        self._handshake = None  # frees the parser; frames are scanned here from now on
        self._request_timer.cancel()
        self._request_timer = None
        self.request_headers = headers
        self.transport.write(response.serialize())
        self.state = OPEN
        server.connection_upgraded(self)
        if reader.leftover and self.state == OPEN:
            self._receive_frames(reader.leftover)  # frames the client sent with its request

    def _respond(self, request: HttpRequest) -> None:
        """Answer a plain request from the route table, now or once its handler is done."""
        response = self.server.http_response(request)
        if isinstance(response, Response):
            self._answer(response)
            return
        responding = self._responding = asyncio.ensure_future(response)
        responding.add_done_callback(self._responded)

    def _responded(self, responding: asyncio.Future) -> None:
        if responding is not self._responding or responding.cancelled():
            return  # timed out (answered 503) or the client left
        self._responding = None
        if self.state == CONNECTING:
            self._answer(responding.result())  # the route table turns failures into a 500

    def _answer(self, response: Response) -> None:
        """Send a response that ends the HTTP exchange (it says `Connection: close`)."""
        transport = self.transport
        transport.write(response.serialize())
        reader = self._handshake
        if self._request_timer is not None and (reader is None or reader.complete):
            self._request_timer.cancel()
            self._request_timer = None
        if reader is not None and not reader.complete and transport.can_write_eof():
            # Answered before the request's end (an error, a body too large, a client waiting
            # for 100 Continue): closing with unread bytes would reset the connection and
            # could destroy the answer. Half-close instead, and drop what the client still
            # sends until it closes (or request_timeout ends it).
            reader.discard()
            transport.write_eof()
            return
        self._handshake = None
        transport.close()

    # Frames

    def _receive_frames(self, data: bytes) -> None:
        buffer = self._buffer
        if buffer:
            buffer += data
            data = buffer  # type: ignore[assignment]
        end = len(data)
        pos = 0
        max_size = self.server.settings.max_message_bytes
        while end - pos >= 2:
            if self._frame_credit <= 0 and not self._recharge_frames():
                break  # over budget: reading is paused, the rest waits in the buffer
            first = data[pos]
            second = data[pos + 1]
            length = second & 0x7F
            header = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                header = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                header = 10
            if not second & 0x80:
                self.fail(PROTOCOL_ERROR)  # clients must mask every frame
                return
            if first & 0x70:
                self.fail(PROTOCOL_ERROR)  # no extension negotiated, so no RSV bits
                return
            if first & 0x08:  # control frame
                if length > 125:
                    self.fail(PROTOCOL_ERROR)
                    return
            elif length > max_size - self._fragments_size:
                self.fail(MESSAGE_TOO_BIG)
                return
            header += 4
            frame_end = pos + header + length
            if frame_end > end:
                break
            if first == 0x81 and self._fragments is None:
                if self.state == OPEN:  # after our close frame, data is discarded unread
                    mask = data[pos + header - 4 : pos + header]
                    payload = apply_mask(data[pos + header : frame_end], mask)
                    try:
                        text = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        self.fail(INVALID_DATA)
                        return
                    self._text_received(text)
            elif first == 0x8A:  # pong (length checked above)
                self.pong_pending = False
            else:
                mask = data[pos + header - 4 : pos + header]
                self._other_frame(first, apply_mask(data[pos + header : frame_end], mask))
            if self.state == CLOSED or self.transport is None:
                return
            self._frame_credit -= 1
            pos = frame_end
        if pos == end:
            self._buffer = None
        elif pos or buffer is None:
            self._buffer = bytearray(data[pos:])
        self._byte_credit -= pos
        if self._byte_credit < 0:
            self._recharge_bytes()

    # Read budget

    def limit_reading(self, limits: ReadLimits) -> None:
        """Read this connection within `limits` from now on (a protocol's own budget)."""
        self.read_limits = limits
        if limits.frames_per_second:
            self._frame_credit = min(self._frame_credit, limits.frame_burst)
            self._frame_tokens = float(limits.frame_burst)  # granted when the credit runs out
        else:
            self._frame_credit = UNLIMITED

    def _recharge_frames(self) -> int:
        """Frames that may be read now; 0 pauses reading until the budget has refilled."""
        limits = self.read_limits
        rate = limits.frames_per_second
        if not rate:
            self._frame_credit = UNLIMITED
            return UNLIMITED
        now = time.monotonic()
        tokens = refill(self._frame_tokens, now - self._frames_refilled, rate, limits.frame_burst)
        self._frames_refilled = now
        granted = self._frame_credit = int(tokens)
        self._frame_tokens = tokens - granted
        if not granted:
            quantum = min(float(limits.frame_burst), max(1.0, rate * THROTTLE_QUANTUM))
            self._throttle((quantum - tokens) / rate)
        return granted

    def _recharge_bytes(self) -> None:
        """Settle bytes read beyond the credit; pause reading while the budget is in debt."""
        rate = self.read_limits.bytes_per_second
        if not rate:
            self._byte_credit = UNLIMITED
            return
        now = time.monotonic()
        tokens = refill(self._byte_tokens, now - self._bytes_refilled, rate, rate)
        tokens += self._byte_credit  # negative: what was read beyond the credit
        self._bytes_refilled = now
        if tokens >= 1.0:
            self._byte_credit = int(tokens)
            self._byte_tokens = tokens - self._byte_credit
            return
        self._byte_credit = 0
        self._byte_tokens = tokens
        self._throttle((rate * THROTTLE_QUANTUM - tokens) / rate)

    def _throttle(self, delay: float) -> None:
        if self.state == CLOSED:
            return
        timer = self._resume_timer
        if timer is not None:
            if timer.when() >= self.server.loop.time() + delay:
                return
            timer.cancel()
        else:
            self.transport.pause_reading()
            events = self.server.events
            if events.rate_limited:
                events.rate_limited(self)
        self._resume_timer = self.server.loop.call_later(delay, self._resume_reading)

    def _resume_reading(self) -> None:
        self._resume_timer = None
        if self.state == CLOSED:
            return
        if self._buffer:
            self._receive_frames(b"")  # what was read before the pause comes first
        if self._resume_timer is None and self.state != CLOSED:
            self.transport.resume_reading()

    def _other_frame(self, first: int, payload: bytes) -> None:
        """Everything but an unfragmented text frame or a pong: the rare, stricter path."""
        opcode = first & 0x0F
        fin = bool(first & 0x80)
        if opcode >= 0x8:  # control frame
            if not fin or len(payload) > 125 or opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                self.fail(PROTOCOL_ERROR)
            elif opcode == OP_CLOSE:
                self._close_received(payload)
            elif opcode == OP_PING and self.state == OPEN:
                self.transport.write(frame_header(OP_PONG, len(payload)) + payload)
            elif opcode == OP_PONG:
                self.pong_pending = False
            return
        if self.state != OPEN:
            return  # data after our close frame is discarded (RFC 6455 1.4)
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                self.fail(PROTOCOL_ERROR)
                return
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            if fin:
                self._finish_fragmented_message()
            return
        if opcode not in (OP_TEXT, OP_BINARY) or self._fragments is not None:
            self.fail(PROTOCOL_ERROR)  # reserved opcode, or a new message inside a fragmented one
            return
        if fin:
            return  # an unfragmented binary message: ignored, as the spec says
        self._fragments = [payload]
        self._fragments_size = len(payload)
        self._fragments_text = opcode == OP_TEXT

    def _finish_fragmented_message(self) -> None:
        fragments, is_text = self._fragments, self._fragments_text
        self._fragments = None
        self._fragments_size = 0
        if not is_text:
            return
        try:
            text = b"".join(fragments).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(INVALID_DATA)
            return
        self._text_received(text)

    def _text_received(self, text: str) -> None:
        self.received += 1
        events = self.server.events
        if events.message_received:
            events.message_received(self, text)
        session = self.session
        if session is None:
            self.server.first_text(self, text)
        else:
            session.receive(text)

    def _close_received(self, payload: bytes) -> None:
        if self.state == CLOSING:
            self.transport.close()  # the client answered our close frame
            return
        try:
            code = parse_close_payload(payload)
        except UnicodeDecodeError:
            self.fail(INVALID_DATA)
            return
        except ValueError:
            self.fail(PROTOCOL_ERROR)
            return
        # Echo the client's code (an empty close gets an empty close), then end TCP.
        self.close_code = code
        self.transport.write(close_frame(code))
        self.state = CLOSING
        self.transport.close()
        self._drop_after_close_timeout()
        self._end_session()

    # Sending

    def send_frame(self, frame: bytes) -> None:
        """Write one pre-encoded frame if the connection is open."""
        if self.state == OPEN:
            self.transport.write(frame)

    def send_text(self, text: str) -> None:
        """Encode and send one text message."""
        if self.state == OPEN:
            self.transport.write(encode_text(text))

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; TCP ends on the client's answer or after a timeout."""
        if self.state != OPEN:
            if self.state == CONNECTING and self.transport is not None:
                self.transport.close()
            return
        self.close_code = code
        self.state = CLOSING
        self.transport.write(close_frame(code, reason))
        self._drop_after_close_timeout()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("closing %s with %d", printable(self.peer), code)
        self._end_session()

    def fail(self, code: int) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, then end TCP at once."""
        was_open = self.state == OPEN
        transport = self.transport
        if was_open:
            self.close_code = code
            transport.write(close_frame(code))
        self.state = CLOSING
        self._buffer = None
        self._failed = True
        if transport.can_write_eof():
            # Closing a socket with unread data makes the kernel answer with a reset, which
            # can destroy our close frame before the client has read it (a client is often
            # still sending the rest of an oversized message). So end our side only, discard
            # what still arrives, and close when the client does (or after close_timeout).
            transport.write_eof()
            if self._resume_timer is not None:
                self._resume_timer.cancel()
                self._resume_timer = None
                transport.resume_reading()
        else:
            transport.close()
        self._drop_after_close_timeout()
        if was_open:
            self._end_session()

    def _drop_after_close_timeout(self) -> None:
        # Our close frame may sit behind unsent data, or the client may never answer it (nor
        # read what is left): either way TCP ends `close_timeout` seconds after we closed.
        if self._close_timer is None:
            self._close_timer = self.server.loop.call_later(
                self.server.settings.close_timeout, self.abort
            )

    def _end_session(self) -> None:
        # Once our close frame is out, the protocol is done with the client: it leaves its
        # rooms at once, since the fan-out writes to members' transports directly.
        session = self.session
        if session is not None:
            session.closed()

    def abort(self) -> None:
        """Drop the TCP connection without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    def ping(self) -> bool:
        """Send a keepalive ping; False if the previous one is still unanswered."""
        if self.pong_pending:
            return False
        self.pong_pending = True
        self.transport.write(PING_FRAME)
        return True

    @property
    def is_open(self) -> bool:
        """True while frames can be sent."""
        return self.state == OPEN

    @property
    def username(self) -> str | None:
        """The name the client gave its session, if any (`Peer.username`)."""
        session = self.session
        return session.username if session is not None else None

    def header(self, name: str) -> str:
        """A request header (repeated headers joined with "; "), or ""."""
        headers = self.request_headers
        if headers is None:
            return ""
        values = headers.get_all(name)
        return "; ".join(values) if values else ""
