"""HTTP responses: every page Stratus serves carries the same security headers."""

from __future__ import annotations

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.http11 import Response


def plain_response(status: int, reason: str, body: bytes, content_type: str,
                   extra: dict[str, str] | None = None, head: bool = False) -> Response:
    """An HTTP response with the security headers every Stratus page carries."""
    headers = Headers()
    headers["Content-Type"] = content_type
    headers["Content-Length"] = str(len(body))
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cache-Control"] = "no-store"
    headers["Connection"] = "close"
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status, reason, headers, b"" if head else body)


def upgrade_refusal(response: Response, error: Exception | None) -> Response:
    """websockets' refusal of an upgrade, with the headers every Stratus page carries.

    An unsupported WebSocket version gets 426 and the version this server speaks, as
    RFC 6455 4.2.2 asks, where websockets answers 400.
    """
    if isinstance(error, InvalidHeader) and error.name == "Sec-WebSocket-Version":
        return plain_response(426, "Upgrade Required",
                              b"This server speaks WebSocket version 13.\n",
                              "text/plain; charset=utf-8",
                              {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"})
    own = ("date", "connection", "content-length", "content-type")
    extra = {name: value for name, value in response.headers.raw_items()
             if name.lower() not in own}
    return plain_response(response.status_code, response.reason_phrase, response.body,
                          response.headers.get("Content-Type", "text/plain; charset=utf-8"),
                          extra)
