"""The HTTP route table: components register the pages they serve instead of an if-chain.

A handler takes the parsed `websockets.http11.Request` and returns a `Response` (build it
with `server.http.plain_response`), or an awaitable of one for work that must not block the
event loop (reading the store off the loop); the connection answers when it is done. Routes
match the path exactly, query string removed. The table answers what no route claims: 405 for
methods other than GET and HEAD, 404 for unknown paths, and HEAD with the GET answer's headers
and no body.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

from websockets.http11 import Request, Response

from .http import plain_response

Handler = Callable[[Request], "Response | Awaitable[Response]"]
TEXT = "text/plain; charset=utf-8"


class RouteTable:
    """Paths and their handlers."""

    def __init__(self) -> None:
        self._routes: dict[str, Handler] = {}

    def add(self, path: str, handler: Handler) -> None:
        """Serve GET (and HEAD) `path` with `handler`; a path is registered once."""
        if not path.startswith("/"):
            raise ValueError(f"route {path!r} must start with '/'")
        if path in self._routes:
            raise ValueError(f"route {path!r} is registered twice")
        self._routes[path] = handler

    def paths(self) -> list[str]:
        """Registered paths."""
        return list(self._routes)

    def respond(self, request: Request) -> Response | Awaitable[Response]:
        """The response to a plain HTTP request (no WebSocket upgrade), or an awaitable of it."""
        method = request.method
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return plain_response(405, "Method Not Allowed", b"Method not allowed.\n", TEXT,
                                  {"Allow": "GET, HEAD"})
        handler = self._routes.get(request.path.split("?", 1)[0])
        if handler is None:
            return plain_response(404, "Not Found",
                                  b"Not found. This is a cloud-variable server.\n", TEXT,
                                  head=head)
        response = handler(request)
        if not head:
            return response
        if inspect.isawaitable(response):
            return _without_body(response)
        return _strip_body(response)


def _strip_body(response: Response) -> Response:
    """A HEAD answer: the GET answer's headers, no body."""
    if not response.body:
        return response
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


async def _without_body(pending: Awaitable[Response]) -> Response:
    return _strip_body(await pending)
