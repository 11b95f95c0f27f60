"""The HTTP route table: components register the pages and API endpoints they serve.

A route is a path template and the methods it serves. Templates match whole segments: a
literal segment matches itself, `{name}` matches any one non-empty segment, which reaches the
handler percent-decoded in `request.params["name"]` (so `%2F` is a slash inside the value, never
a separator). Routes are tried in the order they were added; the query string is not part of
the match (`request.query` has it).

A handler takes an `HttpRequest` (websockets' `Request` plus the body, the path parameters and
the client's address) and returns a `Response` (build it with `server.http.plain_response` or
`json_response`), or an awaitable of one for work that must not block the loop (reading the
store off the loop, slowing down a client).

The table answers what no handler does: 404 for unknown paths, 405 with `Allow` for methods a
path does not serve, HEAD with the GET answer's headers and no body, OPTIONS with `Allow` (and,
on routes added with `cors=True`, the CORS preflight headers), 400 for a path that is not
valid percent-encoded UTF-8 or holds a dot segment (`.` or `..`, which no route serves: they
are refused rather than resolved, so no path means two things).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from websockets.http11 import Request, Response

from .http import plain_response

log = logging.getLogger("stratus.http")

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
# Seconds a browser may cache a CORS preflight answer.
CORS_MAX_AGE = 86400

Handler = Callable[["HttpRequest"], "Response | Awaitable[Response]"]


@dataclass
class HttpRequest(Request):
    """A plain HTTP request as a handler gets it. `path` is the raw target (query included),
    as in websockets' `Request`; `route_path` is the path without the query."""

    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    address: str = ""  # the client's address, resolved through [server] trusted_proxies

    @property
    def route_path(self) -> str:
        """The target without its query string (still percent-encoded)."""
        return self.path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string's parameters (values percent-decoded, in order of appearance)."""
        _, _, query = self.path.partition("?")
        return parse_qs(query, keep_blank_values=True)

    def json(self) -> Any:
        """The body parsed as JSON; ValueError with a message for the client if it is not."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError("the body is not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"the body is not JSON: {exc.msg} at character {exc.pos}") from None


def json_bytes(document: Any) -> bytes:
    """`document` as compact UTF-8 JSON and a newline. Client-supplied text may hold lone
    surrogates (a JSON "\\ud800" decodes to one), which UTF-8 cannot encode: they are written
    as the JSON escape they came as, so the answer stays valid UTF-8 and valid JSON."""
    text = json.dumps(document, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "backslashreplace") + b"\n"


def json_response(status: int, reason: str, document: Any,
                  extra: dict[str, str] | None = None) -> Response:
    """A JSON response (UTF-8, not ASCII-escaped) with the page headers."""
    return plain_response(status, reason, json_bytes(document), JSON, extra)


def error_response(status: int, reason: str, message: str,
                   extra: dict[str, str] | None = None) -> Response:
    """A JSON error answer: {"error": message}."""
    return json_response(status, reason, {"error": message}, extra)


class PathError(ValueError):
    """A request path that cannot name any route (bad percent-encoding, a dot segment)."""


def split_path(path: str) -> list[str]:
    """The percent-decoded segments of a path (without the query); PathError if invalid."""
    segments = path.split("/")[1:]
    decoded = []
    for segment in segments:
        if "%" in segment:
            try:
                segment = unquote(segment, errors="strict")
            except UnicodeDecodeError:
                raise PathError("the path is not valid percent-encoded UTF-8") from None
        if segment in (".", ".."):
            raise PathError("dot segments are not allowed in a path")
        decoded.append(segment)
    return decoded


@dataclass(frozen=True)
class Route:
    """One path template with its handler, methods and CORS setting."""

    template: str
    handler: Handler
    methods: tuple[str, ...]
    cors: bool
    parts: tuple[str, ...]  # literal segments, or "{name}" for parameters

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The parameters if `segments` fit the template, else None."""
        if len(segments) != len(self.parts):
            return None
        params = {}
        for part, segment in zip(self.parts, segments, strict=True):
            if part.startswith("{"):
                if not segment:
                    return None
                params[part[1:-1]] = segment
            elif part != segment:
                return None
        return params

    @property
    def allowed(self) -> list[str]:
        """The methods it serves, HEAD with GET."""
        methods = list(self.methods)
        if "GET" in methods and "HEAD" not in methods:
            methods.insert(methods.index("GET") + 1, "HEAD")
        return methods


def _parts(template: str) -> tuple[str, ...]:
    if not template.startswith("/"):
        raise ValueError(f"route {template!r} must start with '/'")
    parts = tuple(template.split("/")[1:])
    for part in parts:
        if part.startswith("{") != part.endswith("}") or part == "{}":
            raise ValueError(f"route {template!r}: a parameter is a whole segment like {{id}}")
    return parts


class RouteTable:
    """Path templates and their handlers."""

    def __init__(self) -> None:
        self._routes: list[Route] = []

    def add(self, path: str, handler: Handler, methods: Iterable[str] = ("GET",),
            cors: bool = False) -> None:
        """Serve `methods` (GET includes HEAD) of the template `path` with `handler`.

        `cors=True` lets pages of any origin call the route (Access-Control-Allow-Origin: *,
        and preflight answers). A template and method are registered once.
        """
        parts = _parts(path)
        methods = tuple(method.upper() for method in methods)
        if not methods or "OPTIONS" in methods:
            raise ValueError(f"route {path!r}: give the methods it serves (OPTIONS is automatic)")
        for route in self._routes:
            if route.parts == parts and set(route.methods) & set(methods):
                raise ValueError(f"route {path!r} is registered twice")
        self._routes.append(Route(path, handler, methods, cors, parts))

    def paths(self) -> list[str]:
        """Registered path templates, in order."""
        seen: dict[str, None] = {}
        for route in self._routes:
            seen[route.template] = None
        return list(seen)

    def wants_body(self, method: str, path: str) -> bool:
        """Whether a handler would read the body of `method path` (worth a 100 Continue)."""
        try:
            segments = split_path(path.split("?", 1)[0])
        except PathError:
            return False
        return any(route.match(segments) is not None and method in route.methods
                   for route in self._routes)

    def respond(self, request: HttpRequest) -> Response | Awaitable[Response]:
        """The response to a plain HTTP request (no WebSocket upgrade)."""
        method = request.method
        head = method == "HEAD"
        try:
            segments = split_path(request.route_path)
        except PathError as error:
            return plain_response(400, "Bad Request", f"{error}.\n".encode(), TEXT, head=head)
        matches = [(route, params) for route in self._routes
                   if (params := route.match(segments)) is not None]
        if not matches:
            return plain_response(404, "Not Found",
                                  b"Not found. This is a cloud-variable server.\n", TEXT,
                                  head=head)
        cors = any(route.cors for route, _ in matches)
        allowed: dict[str, None] = {}
        for route, _ in matches:
            allowed.update(dict.fromkeys(route.allowed))
        allow = ", ".join([*allowed, "OPTIONS"])
        if method == "OPTIONS":
            return self._options(allow, cors)
        wanted = "GET" if head else method
        for route, params in matches:
            if wanted in route.methods:
                request.params = params
                return self._call(route, request, head)
        return plain_response(405, "Method Not Allowed", b"Method not allowed.\n", TEXT,
                              {"Allow": allow, **(_cors_headers() if cors else {})}, head=head)

    @staticmethod
    def _options(allow: str, cors: bool) -> Response:
        extra = {"Allow": allow}
        if cors:
            extra.update(_cors_headers())
            extra["Access-Control-Allow-Methods"] = allow
            extra["Access-Control-Allow-Headers"] = "Content-Type"
            extra["Access-Control-Max-Age"] = str(CORS_MAX_AGE)
        response = plain_response(204, "No Content", b"", TEXT, extra)
        del response.headers["Content-Type"]  # a 204 has no content to describe,
        del response.headers["Content-Length"]  # and must not say its length (RFC 9110 8.6)
        return response

    def _call(self, route: Route, request: HttpRequest,
              head: bool) -> Response | Awaitable[Response]:
        try:
            response = route.handler(request)
        except Exception:
            log.exception("HTTP handler of %s failed", route.template)
            return _server_error(head)
        if isinstance(response, Response):
            return _finish(response, route.cors, head)
        return self._finish_later(route, response, head)

    @staticmethod
    async def _finish_later(route: Route, pending: Awaitable[Response], head: bool) -> Response:
        try:
            response = await pending
        except Exception:
            log.exception("HTTP handler of %s failed", route.template)
            return _server_error(head)
        return _finish(response, route.cors, head)


def _cors_headers() -> dict[str, str]:
    return {"Access-Control-Allow-Origin": "*"}


def _server_error(head: bool) -> Response:
    return plain_response(500, "Internal Server Error", b"Internal server error.\n", TEXT,
                          head=head)


def _finish(response: Response, cors: bool, head: bool) -> Response:
    if cors and "Access-Control-Allow-Origin" not in response.headers:
        response.headers["Access-Control-Allow-Origin"] = "*"
    if head and response.body:
        response = Response(response.status_code, response.reason_phrase, response.headers, b"")
    return response
