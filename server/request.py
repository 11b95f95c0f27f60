"""Reading one HTTP request that the upgrade fast path did not take (pure: no I/O).

Plain pages, unusual or malformed upgrades and requests that arrive in pieces are parsed by
h11, a Sans-I/O HTTP/1.1 parser, so every request gets an HTTP status: a request that cannot
be read raises `RequestError` with the status to answer (400, 413, 414, 431, 501, 505).
Line endings may be CRLF or a bare LF (RFC 9112 2.2 allows a recipient to accept both).

Memory is bounded per pending request: the head (request line and headers) may hold at most
`MAX_REQUEST_BYTES`, the body at most `max_body_bytes` (`[http] max_body_bytes`; more is 413).
The body is kept for the route that answers (`body`); it is read before answering even when
no route wants it, which spares the client a reset that could eat the answer. A client
waiting for `100 Continue` gets its answer before it sends the body. A request answered
before its end is then `discard`ed: whatever still arrives is dropped.

Each connection serves one request and the answer closes it, so bytes after the request are
never parsed as HTTP: after an upgrade they are the client's first frames (`leftover`).
"""

from __future__ import annotations

from http import HTTPStatus

import h11
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeaderValue
from websockets.http11 import Request

from .upgrade import MAX_HEADERS, MAX_LINE

__all__ = ["MAX_BODY_BYTES", "MAX_REQUEST_BYTES", "RequestError", "RequestReader"]

# Largest request head (request line and headers) read from one client.
MAX_REQUEST_BYTES = 65536
# Largest request body by default (`[http] max_body_bytes`).
MAX_BODY_BYTES = 262144

_SUPPORTED_VERSIONS = (b"1.0", b"1.1")


class RequestError(Exception):
    """The request cannot be served: answer `status` and close. `detail` is for the log."""

    def __init__(self, status: HTTPStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class RequestReader:
    """Reads one request, fed with bytes as they arrive (see the module docstring)."""

    __slots__ = ("_parser", "_max_bytes", "_max_body_bytes", "_head_bytes", "_held", "_body",
                 "method", "request", "has_body", "body_bytes", "leftover", "complete",
                 "continued", "discarding")

    def __init__(self, max_bytes: int = MAX_REQUEST_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._parser = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
        self._max_bytes = max_bytes
        self._max_body_bytes = max_body_bytes
        self._body: list[bytes] = []
        self._head_bytes = 0  # bytes given to the parser while the head was incomplete
        self._held = b""  # bytes beyond the head limit, kept until the head is parsed
        self.method = ""  # known once the request line is parsed
        self.request: Request | None = None  # set once the head is parsed
        self.has_body = False  # the request announces a body (Content-Length > 0 or chunked)
        self.body_bytes = 0
        self.leftover = b""  # bytes after the request, once it has been read
        self.complete = False  # the request has been read to its end
        self.discarding = False  # answered early: what still arrives is dropped
        self.continued = False  # the caller sent 100 Continue: the body is read, then returned

    @property
    def body(self) -> bytes:
        """The request body read so far (all of it once `complete`)."""
        return b"".join(self._body)

    def discard(self) -> None:
        """Drop everything received from now on (the request was answered before its end)."""
        self.discarding = True
        self._held = b""
        self._body = []
        self._parser = None  # frees its buffer

    def receive_data(self, data: bytes) -> Request | None:
        """The request once it has been read (its body in `body`), or None for more bytes.

        Raises RequestError when the request cannot be served.
        """
        if self.discarding:
            return None
        if self.request is None:
            # The parser keeps every byte until the head is complete: give it at most
            # `max_bytes`, so the limit is exact however the bytes were split across reads.
            room = self._max_bytes - self._head_bytes
            if len(data) > room:
                data, self._held = data[:room], data[room:]
            self._head_bytes += len(data)
        parser = self._parser
        if data:  # (no bytes would tell the parser that the client sent EOF)
            parser.receive_data(data)
        try:
            while True:
                event = parser.next_event()
                if isinstance(event, h11.Data):
                    self.body_bytes += len(event.data)
                    if self.body_bytes > self._max_body_bytes:
                        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                           f"body over {self._max_body_bytes} bytes")
                    self._body.append(event.data)
                elif isinstance(event, h11.Request):
                    self.request = self._convert(event)
                    held, self._held = self._held, b""
                    if held:
                        parser.receive_data(held)
                    if self.has_body and parser.they_are_waiting_for_100_continue:
                        # Returned before the body: the caller answers now, or sends
                        # 100 Continue (`continued`) and gets the request again once read.
                        return self.request
                elif isinstance(event, h11.EndOfMessage):
                    self.complete = True
                    self.leftover = parser.trailing_data[0]
                    return self.request
                elif self._held:  # NEED_DATA, but the head did not end within the limit
                    raise RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                       f"head over {self._max_bytes} bytes")
                else:  # NEED_DATA (PAUSED and ConnectionClosed follow EndOfMessage or EOF)
                    return None
        except h11.RemoteProtocolError as exc:
            raise RequestError(HTTPStatus(exc.error_status_hint), str(exc)) from None

    def _convert(self, event: h11.Request) -> Request:
        """The request as websockets has it (the upgrade and the routes read that form)."""
        self.method = event.method.decode("ascii")
        if event.http_version not in _SUPPORTED_VERSIONS:
            raise RequestError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
                               f"HTTP/{event.http_version.decode()}")
        # websockets' line and header-count limits, as its parser had them: the fast path
        # stays within them, so what it takes whole is taken here when it comes in pieces.
        if len(event.method) + len(event.target) + 10 > MAX_LINE:
            raise RequestError(HTTPStatus.REQUEST_URI_TOO_LONG, "request line too long")
        fields = event.headers.raw_items()
        if len(fields) > MAX_HEADERS:
            raise RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                               f"{len(fields)} header lines")
        headers = Headers()
        content_length = 0
        for name, value in fields:
            if len(name) + len(value) + 1 > MAX_LINE:
                raise RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                                   "header line too long")
            lower = name.lower()
            if lower == b"content-length":
                content_length = int(value)  # h11 has checked it: at most 20 digits
            elif lower == b"transfer-encoding":
                self.has_body = True  # chunked (h11 answers 501 to any other coding)
            try:
                # Headers refuses control characters in values (h11 lets some through).
                headers[name.decode("latin-1")] = value.decode("latin-1")
            except InvalidHeaderValue:
                raise RequestError(HTTPStatus.BAD_REQUEST, "control character in a header value"
                                   ) from None
        if content_length > self._max_body_bytes:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"Content-Length {content_length}")
        self.has_body = self.has_body or content_length > 0
        return Request(event.target.decode("ascii"), headers, self.method,
                       "HTTP/" + event.http_version.decode("ascii"))
