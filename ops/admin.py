"""The admin API under /api/v1/: look inside rooms and act on them while the server runs.

On only when a token is configured (`[admin] token`, or the environment variable
STRATUS_ADMIN_TOKEN, which wins); without one its routes are not registered, so they answer
404 like any unknown path. Every call needs `Authorization: Bearer <token>`, compared in
constant time. A missing or wrong token gets 401; an address that keeps failing gets its 401s
later and later (`FailureTracker`; the delay is a sleep of that request's handler, so the loop
never waits). Every call that changes something is logged with the caller's address.

Everything goes through the facade (`server.facade.Facade`) and its services: the Scratch
protocol's ("scratch": room id and value validation, the same checks a client's `set` passes)
and CL4's ("cl4": its rooms). Handlers that may need a room's stored values read them off the
loop (the facade's `async` methods). The endpoints and their JSON are documented in
docs/api.md.
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.http11 import Response

from server.codes import CloseCode
from server.config import at_least
from server.facade import Facade
from server.logsafe import printable
from server.plugins import Client
from server.routes import HttpRequest, error_response, json_response

log = logging.getLogger("stratus.admin")

PREFIX = "/api/v1"
TOKEN_VARIABLE = "STRATUS_ADMIN_TOKEN"
DEFAULT_PAGE_SIZE = 100
BUSIEST_ROOMS = 10
# Longest room id accepted for protocols without their own rule (CL4 room names).
MAX_ID_LENGTH = 1000
# Close codes (docs/api.md). A kicked Scratch client gets 4002: TurboWarp's GUI then stops
# reconnecting and asks for another username, its packager stops (spec §10). Other protocols
# get 1008 (policy violation). A deleted room's clients get 4000: TurboWarp reconnects and
# finds the room empty. A blocked project's clients get the protocol's block code (4004).
KICK_CODES = {"scratch": CloseCode.SCRATCH_USERNAME}
KICK_DEFAULT_CODE = CloseCode.POLICY_VIOLATION
ROOM_DELETED_CODE = CloseCode.SCRATCH_GENERIC
# Addresses whose failures are remembered at once; past it the oldest are forgotten.
MAX_TRACKED_ADDRESSES = 10_000
FIRST_FAILURE_DELAY = 0.25
# Rooms whose flushed updates are counted for the busiest-rooms list, at most.
MAX_COUNTED_ROOMS = 20_000


@dataclass(frozen=True)
class AdminSection:
    """The [admin] table of config.toml."""

    token: str = ""
    free_failures: int = field(default=5, metadata=at_least(0))
    max_failure_delay: float = field(default=5.0, metadata=at_least(0.0))
    max_page_size: int = field(default=1000, metadata=at_least(1))


class ApiError(Exception):
    """Answer the call with `status` and {"error": message}."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def bad_request(message: str) -> ApiError:
    return ApiError(400, "Bad Request", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "Not Found", message)


class FailureTracker:
    """Failed authentications per address, and how long to hold back the next answer.

    The first `free` failures are answered at once; each later one waits twice as long as the
    previous, from FIRST_FAILURE_DELAY up to `max_delay` seconds. An address is forgotten after
    a success or `max_delay * 60` seconds without a failure.
    """

    def __init__(self, free: int, max_delay: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.max_delay = max_delay
        self.forget_after = max_delay * 60
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # address: (count, last failure)

    def failed(self, address: str) -> float:
        """Record a failure; the seconds to wait before answering it."""
        now = self.clock()
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)  # re-inserted: the dict stays oldest-first
        if len(self._failures) > MAX_TRACKED_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        if count <= self.free:
            return 0.0
        return min(self.max_delay, FIRST_FAILURE_DELAY * 2 ** (count - self.free - 1))

    def succeeded(self, address: str) -> None:
        """The address authenticated: its failures are forgotten."""
        self._failures.pop(address, None)


def bearer_token(request: HttpRequest) -> str | None:
    """The token of a single `Authorization: Bearer <token>` header, else None."""
    values = request.headers.get_all("Authorization")
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def iso_time(unix: float) -> str:
    """A Unix time as ISO 8601 UTC with milliseconds, e.g. 2026-12-03T02:18:53.120Z."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def member_json(client: Client) -> dict[str, Any]:
    """One room member as the API shows it."""
    return {
        "client_id": client.id,
        "username": client.username,
        "address": client.address,
        "protocol": client.protocol,
        "connected_since": iso_time(client.connected_at),
    }


def page_bounds(query: Mapping[str, list[str]], max_size: int) -> tuple[int, int]:
    """(offset, limit) from ?offset=&limit=; ApiError 400 when they are not small integers."""
    def number(name: str, default: int, lowest: int, highest: int) -> int:
        values = query.get(name)
        if not values:
            return default
        text = values[-1]
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise bad_request(f"{name} must be a whole number from {lowest} to {highest}")
        value = int(text)
        if not lowest <= value <= highest:
            raise bad_request(f"{name} must be a whole number from {lowest} to {highest}")
        return value

    limit = number("limit", min(DEFAULT_PAGE_SIZE, max_size), 1, max_size)
    offset = number("offset", 0, 0, 999_999_999)
    return offset, limit


class Counters:
    """Per-room update totals since start (for "busiest rooms"), counted from the event bus
    once per flush while the admin API or the dashboard is on. Both share one instance (the
    composition root hands it to each), and `attach` subscribes it once however many ask, so
    nothing is counted twice. Server-wide totals (messages read, lines and frames sent) are the
    core's own counters, read from `Facade.stats`: nothing here runs per message."""

    def __init__(self) -> None:
        self.room_updates: dict[tuple[str, str], int] = {}
        self._attached_to: Any = None

    def attach(self, events: Any) -> None:
        """Count the events of `events` (an EventBus) from now on; again is a no-op."""
        if self._attached_to is events:
            return
        self._attached_to = events
        events.subscribe("room_flushed", self.room_flushed)

    def room_flushed(self, namespace: str, room_id: str, lines: int, frames: int) -> None:
        key = (namespace, room_id)
        room_updates = self.room_updates
        room_updates[key] = room_updates.get(key, 0) + lines
        if len(room_updates) > MAX_COUNTED_ROOMS:
            # Rooms come and go: keep the busier half (stats calls also prune to live rooms).
            busiest = sorted(room_updates.items(), key=lambda item: item[1], reverse=True)
            self.room_updates = dict(busiest[:MAX_COUNTED_ROOMS // 2])

    def prune(self, live: set[tuple[str, str]]) -> None:
        """Forget per-room totals of rooms no longer in memory."""
        if len(self.room_updates) > 2 * len(live) + 64:
            self.room_updates = {key: count for key, count in self.room_updates.items()
                                 if key in live}


def room_list(facade: Facade) -> list[dict[str, Any]]:
    """Every room in memory: {"protocol", "id", "clients", "variables"} (CL4 rooms keep no
    variables, so theirs is 0)."""
    rooms = []
    for namespace in facade.namespaces():
        for summary in facade.room_summaries(namespace):
            rooms.append({"protocol": namespace, **summary})
    try:
        cl4_rooms = facade.service("cl4").rooms()
    except LookupError:
        cl4_rooms = {}
    for room_id, members in cl4_rooms.items():
        rooms.append({"protocol": "cl4", "id": room_id, "clients": len(members), "variables": 0})
    return rooms


def stats_document(facade: Facade, counters: Counters) -> dict[str, Any]:
    """The figures of GET /api/v1/stats (and the dashboard): aggregates only, nothing about
    a single client. Shape in docs/api.md."""
    figures = facade.stats()
    rooms = room_list(facade)
    counters.prune({(room["protocol"], room["id"]) for room in rooms})
    busiest_rooms = heapq.nsmallest(
        BUSIEST_ROOMS, rooms, key=lambda room: (-room["clients"], room["protocol"], room["id"]))
    busiest = [{**room, "updates": counters.room_updates.get((room["protocol"], room["id"]), 0)}
               for room in busiest_rooms]
    by_protocol: dict[str, dict[str, int]] = {}
    for room in rooms:
        counts = by_protocol.setdefault(room["protocol"], {"rooms": 0, "active": 0})
        counts["rooms"] += 1
        counts["active"] += room["clients"] > 0
    return {
        "version": figures["version"],
        "uptime_seconds": round(figures["uptime"], 3),
        "connections": {"total": figures["connections"], **figures["protocols"]},
        "rooms": by_protocol,
        "messages_received": sum(figures["messages_received"].values()),
        "updates_delivered": figures["sent"]["updates"],
        "frames_sent": figures["sent"]["frames"],
        "busiest_rooms": busiest,
    }


class AdminApi:
    """The admin API as a server component (`install` registers its routes)."""

    name = "admin"

    def __init__(self, section: AdminSection, environ: Mapping[str, str] | None = None,
                 counters: Counters | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.section = section
        self.token = environ.get(TOKEN_VARIABLE) or section.token
        self.failures = FailureTracker(section.free_failures, section.max_failure_delay)
        # Shared with the dashboard when the composition root passes one.
        self.counters = counters if counters is not None else Counters()
        self.facade: Facade | None = None

    @property
    def enabled(self) -> bool:
        """True when a token is configured."""
        return bool(self.token)

    def install(self, server: Any) -> None:
        """Register the routes and counters (nothing without a token)."""
        if not self.enabled:
            return
        facade = self.facade = server.facade
        self.counters.attach(facade.events)
        for path, methods, handler in (
            ("/rooms", ("GET",), self.list_rooms),
            ("/rooms/{protocol}/{id}", ("GET",), self.show_room),
            ("/rooms/{protocol}/{id}", ("DELETE",), self.delete_room),
            ("/rooms/scratch/{id}/variables/{name}", ("PUT",), self.put_variable),
            ("/rooms/scratch/{id}/variables/{name}", ("DELETE",), self.delete_variable),
            ("/clients/{client_id}/kick", ("POST",), self.kick),
            ("/blocked-projects", ("GET",), self.list_blocked),
            ("/blocked-projects/{id}", ("GET",), self.show_blocked),
            ("/blocked-projects/{id}", ("PUT",), self.block),
            ("/blocked-projects/{id}", ("DELETE",), self.unblock),
            ("/stats", ("GET",), self.stats),
        ):
            facade.on_http(PREFIX + path, self._guarded(handler), methods)

    async def start(self, server: Any) -> None:
        """Nothing to open: blocks are restored by the server, from the store."""
        if self.enabled:
            log.info("admin API enabled at %s/", PREFIX)

    async def stop(self) -> None:
        """Nothing to close."""

    # Authentication, errors and the audit log

    def _guarded(self, handler: Callable[[HttpRequest], Any]
                 ) -> Callable[[HttpRequest], Response | Awaitable[Response]]:
        def guarded(request: HttpRequest) -> Response | Awaitable[Response]:
            given = bearer_token(request)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                return self._refuse(request, "missing token" if given is None else "wrong token")
            self.failures.succeeded(request.address)
            return self._run(handler, request)
        return guarded

    def _refuse(self, request: HttpRequest, why: str) -> Response | Awaitable[Response]:
        delay = self.failures.failed(request.address)
        # Up to the first slowed answer each failure is a warning; past it, an address that
        # keeps guessing would fill the log, so the rest are debug lines.
        level = logging.WARNING if delay <= FIRST_FAILURE_DELAY else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "admin API: %s from %s (%s %s)", why, printable(request.address),
                    request.method, printable(request.route_path, 200))
        response = error_response(401, "Unauthorized", "a valid admin token is required",
                                  {"WWW-Authenticate": 'Bearer realm="stratus-admin"'})
        if not delay:
            return response
        return self._after(delay, response)

    @staticmethod
    async def _after(delay: float, response: Response) -> Response:
        await asyncio.sleep(delay)
        return response

    async def _run(self, handler: Callable[[HttpRequest], Any], request: HttpRequest) -> Response:
        try:
            result = handler(request)
            if not isinstance(result, Response):
                result = await result
        except ApiError as error:
            result = error_response(error.status, error.reason, error.message)
            outcome = f"{error.status} {error.message}"
        else:
            outcome = str(result.status_code)
        level = logging.DEBUG if request.method == "GET" else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "admin API: %s %s from %s: %s", request.method,
                    printable(request.route_path, 200), printable(request.address),
                    printable(outcome, 200))
        return result

    # Helpers

    def _scratch(self) -> Any:
        try:
            return self.facade.service("scratch")
        except LookupError:
            raise not_found("the Scratch protocol is not running") from None

    def _scratch_room_id(self, request: HttpRequest) -> str:
        room_id = request.params["id"]
        if not self._scratch().valid_room_id(room_id):
            raise bad_request("invalid project id (1 to [scratch] max_room_id_length characters)")
        return room_id

    def _cl4_rooms(self) -> dict[str, list[Client]]:
        try:
            return self.facade.service("cl4").rooms()
        except LookupError:
            return {}

    @staticmethod
    def _body_object(request: HttpRequest) -> dict[str, Any]:
        if not request.body:
            return {}
        try:
            document = request.json()
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        if not isinstance(document, dict):
            raise bad_request("the body must be a JSON object")
        return document

    # Rooms

    def list_rooms(self, request: HttpRequest) -> Response:
        """GET /rooms: every room in memory, sorted by protocol and id, one page at a time."""
        query = request.query
        offset, limit = page_bounds(query, self.section.max_page_size)
        rooms = room_list(self.facade)
        protocol = query.get("protocol")
        if protocol:
            rooms = [room for room in rooms if room["protocol"] == protocol[-1]]
        rooms.sort(key=lambda room: (room["protocol"], room["id"]))
        page = rooms[offset:offset + limit]
        following = offset + limit if offset + limit < len(rooms) else None
        return json_response(200, "OK", {"total": len(rooms), "offset": offset, "limit": limit,
                                         "next_offset": following, "rooms": page})

    async def show_room(self, request: HttpRequest) -> Response:
        """GET /rooms/{protocol}/{id}: variables with values and members."""
        protocol = request.params["protocol"]
        if protocol == "cl4":
            room_id = request.params["id"]
            if len(room_id) > MAX_ID_LENGTH:
                raise bad_request(f"a CL4 room name has at most {MAX_ID_LENGTH} characters")
            members = self._cl4_rooms().get(room_id)
            if members is None:
                raise not_found("no such CL4 room")
            return json_response(200, "OK", {"protocol": "cl4", "id": room_id, "variables": {},
                                             "members": [member_json(m) for m in members],
                                             "blocked": False})
        if protocol not in self.facade.namespaces():
            raise not_found(f"no protocol {protocol!r} with rooms")
        room_id = self._scratch_room_id(request)
        variables = await self.facade.read_variables(protocol, room_id)
        members = self.facade.members(protocol, room_id)
        if variables is None and not members:
            raise not_found("no such room (not in memory, nothing stored)")
        return json_response(200, "OK", {
            "protocol": protocol,
            "id": room_id,
            "variables": variables or {},
            "members": [member_json(member) for member in members],
            "blocked": (self.facade.is_blocked(protocol, room_id)
                        or self._scratch().blocked_by_config(room_id)),
        })

    async def delete_room(self, request: HttpRequest) -> Response:
        """DELETE /rooms/{protocol}/{id}: close the members (4000), delete every variable."""
        protocol = request.params["protocol"]
        if protocol not in self.facade.namespaces():
            raise not_found(f"no protocol {protocol!r} with stored rooms")
        room_id = self._scratch_room_id(request)
        cleared = await self.facade.clear_room(protocol, room_id, ROOM_DELETED_CODE)
        if cleared is None:
            raise not_found("no such room (not in memory, nothing stored)")
        closed, deleted = cleared
        return json_response(200, "OK", {"protocol": protocol, "id": room_id,
                                         "clients_closed": closed,
                                         "close_code": int(ROOM_DELETED_CODE),
                                         "variables_deleted": deleted})

    async def put_variable(self, request: HttpRequest) -> Response:
        """PUT /rooms/scratch/{id}/variables/{name} {"value": ...}: set, as a client's set."""
        room_id = self._scratch_room_id(request)
        name = request.params["name"]
        body = self._body_object(request)
        if "value" not in body:
            raise bad_request('the body must be a JSON object with a "value"')
        value = body["value"]
        refusal = self._scratch().write_refusal(name, value)
        if refusal is not None:
            raise bad_request(refusal)
        if not await self.facade.write_variable("scratch", room_id, name, value):
            raise ApiError(409, "Conflict", "the room or variable limit is reached")
        return json_response(200, "OK", {"protocol": "scratch", "id": room_id, "name": name,
                                         "value": value})

    async def delete_variable(self, request: HttpRequest) -> Response:
        """DELETE /rooms/scratch/{id}/variables/{name}: remove one variable."""
        room_id = self._scratch_room_id(request)
        name = request.params["name"]
        if not await self.facade.remove_variable("scratch", room_id, name):
            raise not_found("no such variable")
        return json_response(200, "OK", {"protocol": "scratch", "id": room_id, "name": name,
                                         "deleted": True})

    # Clients

    def kick(self, request: HttpRequest) -> Response:
        """POST /clients/{client_id}/kick [{"code": N}]: close one client's connection."""
        text = request.params["client_id"]
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise bad_request("client_id must be a whole number")
        client = self.facade.find_client(int(text))
        if client is None:
            raise not_found("no client with that id is connected")
        body = self._body_object(request)
        code = body.get("code", int(KICK_CODES.get(client.protocol or "", KICK_DEFAULT_CODE)))
        if type(code) is not int or not (code == 1000 or 3000 <= code <= 4999):
            raise bad_request("code must be 1000 or a number from 3000 to 4999")
        client.close(code)
        return json_response(200, "OK", {"client_id": client.id, "username": client.username,
                                         "protocol": client.protocol, "close_code": code})

    # Blocked projects (Scratch rooms)

    def list_blocked(self, request: HttpRequest) -> Response:
        """GET /blocked-projects: the ids blocked at run time."""
        self._scratch()
        return json_response(200, "OK", {"blocked": self.facade.blocked_rooms("scratch")})

    def show_blocked(self, request: HttpRequest) -> Response:
        """GET /blocked-projects/{id}: 200 if blocked, else 404."""
        room_id = self._scratch_room_id(request)
        if not self.facade.is_blocked("scratch", room_id):
            raise not_found("that project is not blocked")
        return json_response(200, "OK", {"id": room_id, "blocked": True})

    def block(self, request: HttpRequest) -> Response:
        """PUT /blocked-projects/{id}: refuse joins from now on (kept across restarts) and
        close the clients already in the room with 4004."""
        room_id = self._scratch_room_id(request)
        code = int(self._scratch().blocked_code)
        closed = self.facade.block_room("scratch", room_id, code, persist=True)
        return json_response(200, "OK", {"id": room_id, "blocked": True,
                                         "clients_closed": closed, "close_code": code})

    def unblock(self, request: HttpRequest) -> Response:
        """DELETE /blocked-projects/{id}: accept joins again."""
        room_id = self._scratch_room_id(request)
        if not self.facade.unblock_room("scratch", room_id):
            raise not_found("that project is not blocked")
        return json_response(200, "OK", {"id": room_id, "blocked": False})

    # Figures

    def stats(self, request: HttpRequest) -> Response:
        """GET /stats: the figures a dashboard shows (shape in docs/api.md)."""
        return json_response(200, "OK", stats_document(self.facade, self.counters))
