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

On a cluster (a server with other nodes, `Facade.node_id` set) each call speaks for every
node: the handler does this node's part and asks the others over the bus (`Facade.ask`, the
`ASK_*` topics, answered by every node's `_answer_*` methods), then merges their replies and
adds a "nodes" section naming who answered and who did not within [cluster] reply_timeout.
One process answers as before, without it. Nothing here waits on the loop: the replies are
awaited.
"""

from __future__ import annotations

import asyncio
import heapq
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.http11 import Response

from server.app import PENDING
from server.codes import CloseCode
from server.config import at_least
from server.facade import Facade
from server.logsafe import printable
from server.node_requests import Replies
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
# Topics of the requests one node's admin API sends the others on a cluster (payloads and
# replies are JSON objects; see the AdminApi._answer_* methods).
ASK_ROOMS = "admin.rooms"
ASK_ROOM = "admin.room"
ASK_CLOSE_ROOM = "admin.close-room"
ASK_KICK = "admin.kick"
ASK_BLOCK = "admin.block"
ASK_UNBLOCK = "admin.unblock"
ASK_STATS = "admin.stats"


@dataclass(frozen=True)
class AdminSection:
    """The [admin] table of config.toml."""

    token: str = ""
    free_failures: int = field(default=5, metadata=at_least(0))
    max_failure_delay: float = field(default=5.0, metadata=at_least(0.0))
    max_page_size: int = field(default=1000, metadata=at_least(1))


class ApiError(Exception):
    """Answer the call with `status` and {"error": message, **details}."""

    def __init__(self, status: int, reason: str, message: str,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "Bad Request", message)


def not_found(message: str, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(404, "Not Found", message, details)


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


def merge_rooms(room_lists: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The room lists of several nodes as one: a room's clients (and `updates`, where given)
    summed over the nodes, its variables the largest count (every node holding a Scratch room
    holds the same values)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rooms in room_lists:
        for room in rooms:
            key = (room["protocol"], room["id"])
            known = merged.get(key)
            if known is None:
                merged[key] = dict(room)
            else:
                known["clients"] += room["clients"]
                known["variables"] = max(known["variables"], room["variables"])
                if "updates" in room:
                    known["updates"] = known.get("updates", 0) + room["updates"]
    return list(merged.values())


def busiest(rooms: Iterable[dict[str, Any]],
            members: Callable[[dict[str, Any]], int] = lambda room: room["clients"]
            ) -> list[dict[str, Any]]:
    """The BUSIEST_ROOMS rooms with the most `members` (clients by default), most first, ties
    by protocol and id."""
    return heapq.nsmallest(BUSIEST_ROOMS, rooms,
                           key=lambda room: (-members(room), room["protocol"], room["id"]))


def nodes_part(nodes: dict[str, Any] | None) -> dict[str, Any]:
    """What a cluster answer (an error too) adds: {"nodes": the section saying which nodes
    answered}; nothing for one process (`nodes` None)."""
    return {"nodes": nodes} if nodes is not None else {}


def node_figures(facade: Facade, rooms: int) -> dict[str, Any]:
    """This node's entry in GET /stats' per-node section: its clients (connections that
    chose a protocol, not HTTP requests), rooms in memory, whether its link is up, and its
    worker number (the name the public dashboard gives it)."""
    by_protocol = facade.stats()["protocols"]
    clients = sum(count for name, count in by_protocol.items() if name != PENDING)
    return {"node": facade.node_id, "worker": facade.worker, "clients": clients,
            "rooms": rooms, "link_up": facade.cluster_fault is None}


def stats_document(facade: Facade, counters: Counters,
                   rooms: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The figures of GET /api/v1/stats (and the dashboard): aggregates only, nothing about
    a single client. Shape in docs/api.md. `rooms`: `room_list(facade)`, if the caller has
    it already."""
    figures = facade.stats()
    if rooms is None:
        rooms = room_list(facade)
    counters.prune({(room["protocol"], room["id"]) for room in rooms})
    busiest_rooms = [
        {**room, "updates": counters.room_updates.get((room["protocol"], room["id"]), 0)}
        for room in busiest(rooms)]
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
        "busiest_rooms": busiest_rooms,
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
        # What this node answers when another node's admin API asks (a cluster only).
        for topic, answer in (
            (ASK_ROOMS, self._answer_rooms),
            (ASK_ROOM, self._answer_room),
            (ASK_CLOSE_ROOM, self._answer_close_room),
            (ASK_KICK, self._answer_kick),
            (ASK_BLOCK, self._answer_block),
            (ASK_UNBLOCK, self._answer_unblock),
            (ASK_STATS, self._answer_stats),
        ):
            facade.answer(topic, self._answering(answer))

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
            result = json_response(error.status, error.reason,
                                   {"error": error.message, **error.details})
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

    # The other nodes of a cluster

    @property
    def clustered(self) -> bool:
        """True on a cluster backend (there are other nodes to ask)."""
        return self.facade.node_id is not None

    async def _ask(self, topic: str, document: dict[str, Any]
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Ask every other node: (their JSON replies by node id, the "nodes" section that
        says who answered); ({}, None) for one process."""
        if not self.clustered:
            return {}, None
        replies = await self.facade.ask(topic, json.dumps(document).encode())
        answers: dict[str, Any] = {}
        failed = dict(replies.failed)
        for node, payload in replies.replies.items():
            try:
                answers[node] = json.loads(payload)
            except ValueError:
                failed[node] = "an unreadable reply"
        return answers, self._nodes_section(replies, answers, failed)

    def _nodes_section(self, replies: Replies, answered: Iterable[str],
                       failed: dict[str, str]) -> dict[str, Any]:
        this = self.facade.node_id
        section: dict[str, Any] = {"this": this, "answered": sorted([this, *answered]),
                                   "missing": replies.missing, "failed": failed}
        if replies.link_down:
            section["note"] = f"{replies.link_down}: this node answered for itself only"
        elif replies.missing:
            section["note"] = ("no reply within [cluster] reply_timeout from "
                               + ", ".join(replies.missing))
        return section

    def _with_node(self, document: dict[str, Any], node: str | None = None) -> dict[str, Any]:
        """`document` naming the node it is about (this one by default) on a cluster."""
        if self.clustered:
            document["node"] = node or self.facade.node_id
        return document

    def _answering(self, answer: Callable[[str, dict[str, Any]], Any]
                   ) -> Callable[[str, bytes], Any]:
        """A bus answer from `answer(origin, request)`, which returns a JSON object (or an
        awaitable of one)."""
        def answering(origin: str, payload: bytes) -> Any:
            request = json.loads(payload)
            if not isinstance(request, dict):
                raise ValueError("a request must be a JSON object")
            result = answer(origin, request)
            if isinstance(result, dict):
                return json.dumps(result).encode()
            return self._encoded(result)
        return answering

    @staticmethod
    async def _encoded(result: Awaitable[dict[str, Any]]) -> bytes:
        return json.dumps(await result).encode()

    @staticmethod
    def _log_asked(origin: str, what: str) -> None:
        log.info("admin API: %s, asked by node %s", what, printable(origin))

    def _answer_rooms(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """This node's rooms (of `protocol`, if given), as GET /rooms lists them."""
        rooms = room_list(self.facade)
        protocol = request.get("protocol")
        if protocol is not None:
            rooms = [room for room in rooms if room["protocol"] == protocol]
        return {"rooms": rooms}

    def _answer_room(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """This node's members of one room."""
        return {"members": [self._with_node(member_json(member))
                            for member in self._local_members(request["protocol"],
                                                              request["id"])]}

    def _answer_close_room(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """Close this node's members of a room (the asking node deletes the variables)."""
        protocol, room_id, code = request["protocol"], request["id"], int(request["code"])
        closed = self.facade.close_members(protocol, room_id, code)
        if closed:
            self._log_asked(origin, f"closed {closed} clients of room {printable(room_id, 200)}")
        return {"closed": closed}

    def _answer_kick(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """Close the client with this id if this node holds it."""
        client = self.facade.find_client(int(request["client_id"]))
        if client is None:
            return {"found": False}
        kicked = self._kick_client(client, request.get("code"))
        self._log_asked(origin, f"kicked client {client.id} with {kicked['close_code']}")
        return {"found": True, **kicked}

    def _answer_block(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """Block a project on this node (the asking node stored the block, so it is lifted
        here too if this node misses the unblock and then re-reads the stored blocks)."""
        room_id = request["id"]
        closed = self.facade.block_room("scratch", room_id, int(request["code"]), stored=True)
        self._log_asked(origin, f"blocked project {printable(room_id, 200)}")
        return {"closed": closed}

    def _answer_unblock(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """Unblock a project on this node (the asking node removed the stored block)."""
        room_id = request["id"]
        unblocked = self.facade.unblock_room("scratch", room_id, persist=False)
        if unblocked:
            self._log_asked(origin, f"unblocked project {printable(room_id, 200)}")
        return {"unblocked": unblocked}

    def _answer_stats(self, origin: str, request: dict[str, Any]) -> dict[str, Any]:
        """This node's entry of the per-node figures."""
        return node_figures(self.facade, len(room_list(self.facade)))

    # Rooms

    def _local_members(self, protocol: str, room_id: str) -> list[Client]:
        """This node's members of a room (none if the protocol has no such room)."""
        if protocol == "cl4":
            return self._cl4_rooms().get(room_id, [])
        if protocol not in self.facade.namespaces():
            return []
        return self.facade.members(protocol, room_id)

    async def _members_everywhere(self, protocol: str, room_id: str
                                  ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The members of a room on every node (each naming its node on a cluster), and the
        "nodes" section."""
        members = [self._with_node(member_json(member))
                   for member in self._local_members(protocol, room_id)]
        answers, nodes = await self._ask(ASK_ROOM, {"protocol": protocol, "id": room_id})
        for node in sorted(answers):
            members.extend(answers[node]["members"])
        return members, nodes

    async def list_rooms(self, request: HttpRequest) -> Response:
        """GET /rooms: every room in memory (on every node of a cluster, clients summed),
        sorted by protocol and id, one page at a time."""
        query = request.query
        offset, limit = page_bounds(query, self.section.max_page_size)
        rooms = room_list(self.facade)
        protocol = query.get("protocol")
        if protocol:
            rooms = [room for room in rooms if room["protocol"] == protocol[-1]]
        answers, nodes = await self._ask(ASK_ROOMS,
                                         {"protocol": protocol[-1] if protocol else None})
        if answers:
            rooms = merge_rooms([rooms, *(answer["rooms"] for answer in answers.values())])
        rooms.sort(key=lambda room: (room["protocol"], room["id"]))
        page = rooms[offset:offset + limit]
        following = offset + limit if offset + limit < len(rooms) else None
        document = {"total": len(rooms), "offset": offset, "limit": limit,
                    "next_offset": following, "rooms": page}
        return json_response(200, "OK", {**document, **nodes_part(nodes)})

    async def show_room(self, request: HttpRequest) -> Response:
        """GET /rooms/{protocol}/{id}: variables with values and members (of every node)."""
        protocol = request.params["protocol"]
        if protocol == "cl4":
            room_id = request.params["id"]
            if len(room_id) > MAX_ID_LENGTH:
                raise bad_request(f"a CL4 room name has at most {MAX_ID_LENGTH} characters")
            members, nodes = await self._members_everywhere(protocol, room_id)
            if not members:
                raise not_found("no such CL4 room", nodes_part(nodes))
            document = {"protocol": "cl4", "id": room_id, "variables": {},
                        "members": members, "blocked": False}
        else:
            if protocol not in self.facade.namespaces():
                raise not_found(f"no protocol {protocol!r} with rooms")
            room_id = self._scratch_room_id(request)
            variables = await self.facade.read_variables(protocol, room_id)
            members, nodes = await self._members_everywhere(protocol, room_id)
            if variables is None and not members:
                raise not_found("no such room (not in memory, nothing stored)",
                                nodes_part(nodes))
            document = {
                "protocol": protocol,
                "id": room_id,
                "variables": variables or {},
                "members": members,
                "blocked": (self.facade.is_blocked(protocol, room_id)
                            or self._scratch().blocked_by_config(room_id)),
            }
        return json_response(200, "OK", {**document, **nodes_part(nodes)})

    async def delete_room(self, request: HttpRequest) -> Response:
        """DELETE /rooms/{protocol}/{id}: close the members (4000) on every node and delete
        every variable (once: the deletes reach the other nodes like any write)."""
        protocol = request.params["protocol"]
        if protocol not in self.facade.namespaces():
            raise not_found(f"no protocol {protocol!r} with stored rooms")
        room_id = self._scratch_room_id(request)
        code = int(ROOM_DELETED_CODE)
        # The other nodes are asked while this one clears the room, not before: a member
        # closed elsewhere reconnects within a second or so, and must find the room empty
        # even when a silent node keeps the replies waiting for reply_timeout.
        asking = asyncio.ensure_future(
            self._ask(ASK_CLOSE_ROOM, {"protocol": protocol, "id": room_id, "code": code}))
        try:
            cleared = await self.facade.clear_room(protocol, room_id, ROOM_DELETED_CODE)
        finally:
            answers, nodes = await asking
        closed_elsewhere = sum(answer["closed"] for answer in answers.values())
        if cleared is None and not closed_elsewhere:
            raise not_found("no such room (not in memory, nothing stored)",
                            nodes_part(nodes))
        closed, deleted = cleared or (0, 0)
        document = {"protocol": protocol, "id": room_id,
                    "clients_closed": closed + closed_elsewhere, "close_code": code,
                    "variables_deleted": deleted}
        return json_response(200, "OK", {**document, **nodes_part(nodes)})

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

    @staticmethod
    def _kick_client(client: Client, code: int | None) -> dict[str, Any]:
        """Close `client` with `code` (None: its protocol's kick code); what the API says."""
        if code is None:
            code = int(KICK_CODES.get(client.protocol or "", KICK_DEFAULT_CODE))
        client.close(code)
        return {"client_id": client.id, "username": client.username,
                "protocol": client.protocol, "close_code": code}

    async def kick(self, request: HttpRequest) -> Response:
        """POST /clients/{client_id}/kick [{"code": N}]: close one client's connection, on
        whichever node of a cluster holds it."""
        text = request.params["client_id"]
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise bad_request("client_id must be a whole number")
        client_id = int(text)
        body = self._body_object(request)
        code = body.get("code")
        if code is not None and (type(code) is not int
                                 or not (code == 1000 or 3000 <= code <= 4999)):
            raise bad_request("code must be 1000 or a number from 3000 to 4999")
        client = self.facade.find_client(client_id)
        if client is not None:
            return json_response(200, "OK", self._with_node(self._kick_client(client, code)))
        answers, nodes = await self._ask(ASK_KICK, {"client_id": client_id, "code": code})
        for node, answer in sorted(answers.items()):
            if answer.get("found"):
                del answer["found"]
                return json_response(200, "OK", {**self._with_node(answer, node),
                                                 "nodes": nodes})
        message = "no client with that id is connected"
        if nodes and (nodes["missing"] or nodes.get("note")):
            message += " to the nodes that answered"
        raise not_found(message, nodes_part(nodes))

    # Blocked projects (Scratch rooms)

    def list_blocked(self, request: HttpRequest) -> Response:
        """GET /blocked-projects: the ids blocked at run time (on a cluster, a block made on
        any node holds on every node)."""
        self._scratch()
        return json_response(200, "OK", {"blocked": self.facade.blocked_rooms("scratch")})

    def show_blocked(self, request: HttpRequest) -> Response:
        """GET /blocked-projects/{id}: 200 if blocked, else 404."""
        room_id = self._scratch_room_id(request)
        if not self.facade.is_blocked("scratch", room_id):
            raise not_found("that project is not blocked")
        return json_response(200, "OK", {"id": room_id, "blocked": True})

    async def block(self, request: HttpRequest) -> Response:
        """PUT /blocked-projects/{id}: refuse joins from now on (kept across restarts, and in
        Redis for every node of a cluster) and close the clients already in the room, on every
        node, with 4004."""
        room_id = self._scratch_room_id(request)
        code = int(self._scratch().blocked_code)
        closed = self.facade.block_room("scratch", room_id, code, persist=True)
        answers, nodes = await self._ask(ASK_BLOCK, {"id": room_id, "code": code})
        closed += sum(answer["closed"] for answer in answers.values())
        document = {"id": room_id, "blocked": True, "clients_closed": closed, "close_code": code}
        return json_response(200, "OK", {**document, **nodes_part(nodes)})

    async def unblock(self, request: HttpRequest) -> Response:
        """DELETE /blocked-projects/{id}: accept joins again (on every node)."""
        room_id = self._scratch_room_id(request)
        unblocked = self.facade.unblock_room("scratch", room_id)
        answers, nodes = await self._ask(ASK_UNBLOCK, {"id": room_id})
        if not unblocked and not any(answer["unblocked"] for answer in answers.values()):
            raise not_found("that project is not blocked", nodes_part(nodes))
        document = {"id": room_id, "blocked": False}
        return json_response(200, "OK", {**document, **nodes_part(nodes)})

    # Figures

    async def stats(self, request: HttpRequest) -> Response:
        """GET /stats: the figures a dashboard shows, this node's (shape in docs/api.md); on a
        cluster also "per_node": every node's clients, rooms and link state."""
        document = stats_document(self.facade, self.counters)
        answers, nodes = await self._ask(ASK_STATS, {})
        if nodes is not None:
            own = node_figures(self.facade, sum(counts["rooms"]
                                                for counts in document["rooms"].values()))
            document["per_node"] = [own, *(answers[node] for node in sorted(answers))]
            document["nodes"] = nodes
        return json_response(200, "OK", document)
