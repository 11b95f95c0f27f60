"""Scratch's cloud log over HTTP: GET /logs?projectid=ID&limit=N&offset=M ([history] enabled).

The answer has the shape of https://clouddata.scratch.mit.edu/logs, so tools written for
Scratch's log read ours: a JSON array, newest first, of

    {"user": "griffpatch", "verb": "set_var", "name": "☁ score", "value": "42",
     "timestamp": 1700000000000}

`verb` is "set_var", "del_var" or "rename_var"; `name` is the variable's name (the new name
for a rename); `value` is the value as text (JS `String(value)`: numbers as JS prints them),
for a delete the value the variable had, for a rename the value it keeps; `timestamp` is in
milliseconds since the epoch. `user` is the name the Scratch client gave in its handshake, or
"(bridge)" for writes forwarded from CL4 and "(server)" for writes without a client (admin
API, plugins).

`limit` defaults to 100 (or [history] max_limit if lower); a larger one than [history]
max_limit is reduced to it, as tools written for Scratch ask for more than it gives. `offset`
skips the newest entries. A project with no history answers `[]`, as Scratch does; a blocked
project answers 404; malformed parameters answer 400 with {"error": message}. With [history]
off the route does not exist (404). Any web page may read it (Access-Control-Allow-Origin: *).
The store is read off the event loop and the room is never loaded into memory for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from websockets.http11 import Request, Response

from protocols.js import js_string
from protocols.scratch import NAMESPACE, ScratchProtocol, key_to_name
from protocols.validators import is_valid_room_id
from server.config import HistorySection
from server.logsafe import printable
from server.routes import error_response, json_response
from server.store import HistoryEntry

log = logging.getLogger("stratus.history")

PATH = "/logs"
DEFAULT_LIMIT = 100
# Query parameters read at most (a longer query string is refused, not parsed at length).
MAX_QUERY_FIELDS = 32
VERBS = {"set": "set_var", "delete": "del_var", "rename": "rename_var"}
_COUNT = re.compile(r"[0-9]{1,9}", re.ASCII)


class QueryError(ValueError):
    """A /logs query that cannot be answered; the message is for the client."""


@dataclass(frozen=True)
class LogsQuery:
    """A checked /logs query."""

    project_id: str
    limit: int
    offset: int


def parse_logs_query(target: str, max_room_id_length: int, max_limit: int) -> LogsQuery:
    """The project id, limit and offset of a /logs request target; QueryError if malformed.

    Unknown parameters (a cache-busting `_=...`) are ignored; a parameter given twice is not.
    """
    _, _, query = target.partition("?")
    try:
        params = parse_qs(query, keep_blank_values=True, errors="strict",
                          max_num_fields=MAX_QUERY_FIELDS)
    except UnicodeDecodeError:
        raise QueryError("the query string is not valid percent-encoded UTF-8") from None
    except ValueError:
        raise QueryError(f"the query string has more than {MAX_QUERY_FIELDS} parameters") from None
    for name in ("projectid", "limit", "offset"):
        if len(params.get(name, ())) > 1:
            raise QueryError(f"{name} is given more than once")
    project_id = params.get("projectid", [None])[0]
    if project_id is None:
        raise QueryError("projectid is missing")
    if not is_valid_room_id(project_id, max_room_id_length):
        raise QueryError(f"projectid must be 1 to {max_room_id_length} characters")
    limit = _count(params, "limit", min(DEFAULT_LIMIT, max_limit))
    if limit < 1:
        raise QueryError("limit must be at least 1")
    return LogsQuery(project_id, min(limit, max_limit), _count(params, "offset", 0))


def _count(params: dict[str, list[str]], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if _COUNT.fullmatch(raw[0]) is None:
        raise QueryError(f"{name} must be a whole number from 0 to 999999999")
    return int(raw[0])


def log_entry(entry: HistoryEntry) -> dict[str, Any]:
    """One entry as Scratch's cloud log shows it (key order as Scratch's)."""
    return {
        "user": entry.user,
        "verb": VERBS[entry.verb],
        "name": js_string(key_to_name(entry.key)) if entry.key else "",
        "value": js_string(entry.value),
        "timestamp": entry.time,
    }


def _json(status: int, reason: str, document: Any) -> Response:
    return json_response(status, reason, document)  # the route adds the CORS header


def _error(status: int, reason: str, message: str) -> Response:
    return error_response(status, reason, message)


class HistoryApi:
    """GET /logs as a server component (registers its route when [history] is enabled)."""

    name = "history"

    def __init__(self, section: HistorySection, scratch: ScratchProtocol) -> None:
        self.section = section
        self.scratch = scratch
        self.facade: Any = None

    def install(self, server: Any) -> None:
        """Register the route (nothing when [history] is off: /logs is then a 404)."""
        if not self.section.enabled:
            return
        self.facade = server.facade
        server.routes.add(PATH, self.logs, cors=True)

    async def start(self, server: Any) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""

    def logs(self, request: Request) -> Response | Awaitable[Response]:
        """GET /logs: a project's history, newest first, in Scratch's format."""
        options = self.scratch.options
        try:
            query = parse_logs_query(request.path, options.section.max_room_id_length,
                                     self.section.max_limit)
        except QueryError as exc:
            return _error(400, "Bad Request", str(exc))
        room_id = query.project_id
        rooms = self.scratch.rooms
        if rooms is None:
            return _error(503, "Service Unavailable", "the server is starting")
        if room_id in options.blocked_rooms or room_id in rooms.blocked:
            return _error(404, "Not Found", "cloud variables are disabled for this project")
        return self._read(query)

    async def _read(self, query: LogsQuery) -> Response:
        try:
            entries = await self.facade.read_history(NAMESPACE, query.project_id, query.limit,
                                                     query.offset)
        except Exception as exc:  # the store's reader failed; /healthz says so too
            log.error("cannot read the history of %s: %s", printable(query.project_id),
                      printable(str(exc) or type(exc).__name__, 300))
            return _error(503, "Service Unavailable", "the history cannot be read now")
        return _json(200, "OK", [log_entry(entry) for entry in entries or ()])
