"""In-server plugin for the scratchattach "Cloud Requests" template sprite (spec Part B).

`ScratchattachRequests` claims ``☁ TO_HOST`` in the rooms it serves (writes are consumed: not
stored, counted or relayed), answers each request with its `@request` handler, and writes the
response on ``☁ FROM_HOST_1..9`` to the requesting connection only, paced by one loop timer per
connection. Long responses go out in parts; the sprite's re-requests of a missing part are
answered from the last 15 multi-part responses of that connection; request ids are
de-duplicated per connection. `push()` sends server pushes to a room or one connection.

Configuration (config.toml)::

    [[plugins]]
    use = "plugins.sprites.scratchattach_plugin:ScratchattachRequests"
    rooms = ["123456"]
    handlers = "examples.sprite_handlers:Handlers"
    packet_interval = 0.1
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from plugins.api import (
    DROP,
    Client,
    Plugin,
    VariableWrite,
    on_disconnect,
    on_variable,
    printable,
)

from .request_api import (
    DEFAULT_TIMEOUT,
    RequestContext,
    RequestError,
    RequestTimeout,
    collect_handlers,
    format_result,
    return_annotation,
    run_named_request,
)
from .requests_grammar import RequestSyntaxError
from .runtime import (
    ConnectionState,
    PacedWriter,
    load_handler_object,
    packet_interval,
    setting_float,
    setting_int,
)
from .scratchattach import (
    TO_HOST,
    Dropped,
    IncomingRequest,
    RequestHostState,
    Resend,
    ResponseTooLong,
    encode_response,
    error_response,
    push_request_id,
)

__all__ = ["ScratchattachRequests"]

MAX_QUEUED_RESENDS = 32  # a flood of re-requests must not grow a connection's queue forever


class _HostConnection(ConnectionState):
    def __init__(self, client: Any, writer: PacedWriter, state: RequestHostState) -> None:
        super().__init__(client, writer)
        self.state = state


class ScratchattachRequests(Plugin):
    """Answers the scratchattach template's cloud requests from `@request` handler methods.

    Settings: `handlers` ("module:Class"; `@request` methods of a subclass of this plugin count
    too), `handler_timeout` (10 s; a late handler is answered with the error list),
    `packet_interval` (0.1), `max_value_length` (100000; part size of long responses),
    `max_pending_requests` (8 per connection), `remembered_responses` (15),
    `unknown_request_reply` ("" = no reply, so the sprite shows TIMEOUT; else this text).
    """

    name = "scratchattach-requests"
    known_settings = frozenset({
        "handlers", "handler_timeout", "packet_interval", "max_value_length",
        "max_pending_requests", "remembered_responses", "unknown_request_reply",
    })

    def __init__(self, host: Any, settings: Any = None) -> None:
        super().__init__(host, settings)
        unknown = set(self.settings) - self.known_settings
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        settings = self.settings
        self.min_interval = packet_interval(settings)
        self.max_value_length = setting_int(settings, "max_value_length", 100_000, minimum=64)
        self.max_pending_requests = setting_int(settings, "max_pending_requests", 8)
        self.remembered_responses = setting_int(settings, "remembered_responses", 15)
        self.handler_timeout = setting_float(
            settings, "handler_timeout", DEFAULT_TIMEOUT, minimum=0.001
        )
        unknown_reply = settings.get("unknown_request_reply", "")
        if not isinstance(unknown_reply, str):
            raise ValueError("unknown_request_reply must be a string")
        self.unknown_request_reply = unknown_reply
        self.handler_object = load_handler_object(settings.get("handlers"), self)
        self.handlers: dict[str, Callable] = collect_handlers(self.handler_object, self)
        if not self.handlers:
            self.log.warning("no @request handlers configured; requests go unanswered")
        self._connections: dict[Client, _HostConnection] = {}

    # ------------------------------------------------------------------ public API
    def push(self, data: Any, *, room: str | None = None, client: Client | None = None) -> int:
        """Send a server push (text, number or list) to every connection of `room`, or to one
        `client`; returns how many connections it was queued for. The sprite accepts pushes
        at any time (it watches for ".100000000"). Safe to call from sync handlers (threads)."""
        if (room is None) == (client is None):
            raise ValueError("push to exactly one of room= or client=")
        loop = self.host.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:  # e.g. from a sync handler, which runs in a worker thread
            async def on_loop() -> int:
                return self._push_now(data, room, client)

            return asyncio.run_coroutine_threadsafe(on_loop(), loop).result(timeout=30)
        return self._push_now(data, room, client)

    def _push_now(self, data: Any, room: str | None, client: Client | None) -> int:
        values = encode_response(
            format_result(data, lists=True),
            push_request_id(),
            max_value_length=self.max_value_length,
        )
        targets = [client] if client is not None else self.host.scratch_members(room)
        count = 0
        now = time.time()
        for target in targets:
            if target.room is None or not target.open:
                continue
            connection = self._connection(target)
            connection.writer.enqueue(connection.state.send_values(values, now))
            count += 1
        return count

    async def stop(self) -> None:
        for client in list(self._connections):
            self._forget(client)

    # ------------------------------------------------------------------ hooks
    @on_variable(TO_HOST)
    def _claim_to_host(self, write: VariableWrite) -> Any:
        """Consume a TO_HOST write: never stored, counted or relayed (spec §13.3)."""
        client = write.client
        if client is None:
            return DROP
        connection = self._connection(client)
        outcome = connection.state.receive(write.value, time.time())
        if isinstance(outcome, IncomingRequest):
            if len(connection.tasks) >= self.max_pending_requests:
                self.log.info("%s: too many unanswered requests; %s dropped",
                              printable(client.address), printable(outcome.name))
            else:
                task = asyncio.ensure_future(self._answer(connection, outcome))
                connection.tasks.add(task)
                task.add_done_callback(connection.tasks.discard)
        elif isinstance(outcome, Resend):
            if connection.writer.pending < MAX_QUEUED_RESENDS:
                connection.writer.enqueue(outcome.sets)
            else:
                self.log.debug("%s: re-request dropped (queue full)", printable(client.address))
        elif isinstance(outcome, Dropped):
            self.log.debug("%s: TO_HOST value dropped: %s", printable(client.address),
                           outcome.reason)
        return DROP

    @on_variable("☁ FROM_HOST_*")
    def _refuse_from_host(self, write: VariableWrite) -> Any:
        """Clients may not write the server's response variables in a served room."""
        return DROP

    @on_disconnect
    def _disconnected(self, client: Client) -> None:
        self._forget(client)

    # ------------------------------------------------------------------ internals
    def _connection(self, client: Client) -> _HostConnection:
        connection = self._connections.get(client)
        if connection is None:
            state = RequestHostState(
                max_value_length=self.max_value_length,
                max_pending_requests=self.max_pending_requests,
                remembered_responses=self.remembered_responses,
                min_interval=self.min_interval,
            )
            writer = PacedWriter(self.host.loop, client, self.min_interval)
            connection = self._connections[client] = _HostConnection(client, writer, state)
        return connection

    def _forget(self, client: Client) -> None:
        connection = self._connections.pop(client, None)
        if connection is not None:
            connection.close()

    async def _answer(self, connection: _HostConnection, incoming: IncomingRequest) -> None:
        client = connection.client
        name = incoming.name
        if name not in self.handlers:
            self.log.info("unknown request %s", printable(name))
            result: Any = self.unknown_request_reply or None
        else:
            context = RequestContext(client, client.room, client.username,
                                     request_id=incoming.request_id)
            try:
                raw, handler = await run_named_request(
                    name, incoming.arguments, self.handlers,
                    timeout=self.handler_timeout, context=context,
                )
                result = None if raw is None else format_result(
                    raw, return_annotation(handler), lists=True
                )
            except RequestError as error:
                result = error.reply_text()
            except RequestSyntaxError as error:
                self.log.info("request %s: arguments do not fit: %s", printable(name),
                              printable(str(error)))
                result = error_response(name)
            except RequestTimeout:
                self.log.warning("request %s timed out after %s s", printable(name),
                                 self.handler_timeout)
                result = error_response(name)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.log.error("request %s failed", printable(name), exc_info=error)
                result = error_response(name)
        if result is None or not client.open:
            return
        now = time.time()
        try:
            planned = connection.state.respond(incoming.request_id, result, now)
        except ResponseTooLong:
            self.log.warning("response to %s is too long; answered with the error list",
                             printable(name))
            planned = connection.state.respond(incoming.request_id, error_response(name), now)
        await connection.writer.enqueue(planned)
