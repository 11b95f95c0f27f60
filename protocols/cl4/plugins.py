"""CL4's side of the plugin API: `on_command` handlers, `before_command` and `on_handshake`
hooks wired into the engine, and what a command handler gets (`CommandRequest`)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from server.plugins import Client, PluginManager, Refuse, discard, plugin_name

from .codes import Status, StatusCode
from .commands import target_rooms
from .request import Cl4Request, Reject

if TYPE_CHECKING:
    from .engine import Cl4Engine

log = logging.getLogger("stratus.plugins")


class CommandRequest:
    """A CL4 command being handled by a plugin: the message, its sender, and replies."""

    __slots__ = ("_request", "client")

    def __init__(self, request: Cl4Request, client: Client) -> None:
        self._request = request
        self.client = client

    @property
    def message(self) -> dict:
        """The validated message (a dict; treat it as read-only)."""
        return self._request.message

    @property
    def listener(self) -> Any:
        """The request's listener, or MISSING."""
        return self._request.listener

    @property
    def rooms(self) -> list[str] | None:
        """The rooms the message targets: its `rooms`, or every room the sender is in (None
        after answering E:115 for a room the sender is not in)."""
        return target_rooms(self._request)

    def reply(self, status: Status = None, *, details: Any = None, val: Any = None) -> None:
        """Answer the sender with a statuscode (default I:100 | OK) carrying its listener."""
        self._request.reply(status or StatusCode.OK, details=details, val=val)

    def send_room(self, room: str, message: dict) -> int:
        """Send a CL4 message to every member of `room`."""
        engine = self._request.engine
        members = engine.room_members(room)
        for member in members:
            engine.send(member, message)
        return len(members)


def custom_status(kind: str, number: int, text: str) -> Status:
    """A server-defined CL4 status code, e.g. custom_status("E", 120, "Cooldown")."""
    if kind not in ("I", "E"):
        raise ValueError("kind must be 'I' (information) or 'E' (error)")
    if number < 116 or 200 <= number <= 204:
        raise ValueError("custom status numbers must be >= 116 and not 200-204 (CL4 spec §7)")
    return Status(kind, number, text)


def reject(refusal: Refuse) -> Reject:
    """The engine's veto for a plugin's Refuse; a non-Status `status` becomes E:108 details."""
    status, details = refusal.status, refusal.details
    if not isinstance(status, Status):
        if status is not None and details is None:
            details = status
        status = StatusCode.REFUSED
    return Reject(status, details)


class Cl4PluginAdapter:
    """Registers plugins' CL4 hooks with one engine (plugins added later too)."""

    def __init__(self, plugins: PluginManager, engine: Cl4Engine) -> None:
        self.plugins = plugins
        self.engine = engine

    def attach(self) -> None:
        """Register the commands of plugins loaded so far, and of those added later."""
        self._register_commands(self.plugins.hooks("command"))
        self.plugins.added_listeners.append(
            lambda found: self._register_commands([f for f in found if f[2].kind == "command"])
        )
        self.engine.pre_dispatch_hooks.append(self._pre_dispatch)

    def _register_commands(self, hooks: list) -> None:
        engine = self.engine
        for loaded, _method, hook in hooks:  # check every name before registering any
            name = hook.target
            if engine.command(name) is not None and not hook.replace:
                raise ValueError(
                    f"plugin {plugin_name(loaded)}: CL4 command {name!r} exists; use "
                    f"@on_command({name!r}, replace=True) to replace it"
                )
        for loaded, method, hook in hooks:
            engine.register_command(hook.target, self._command_handler(loaded, method),
                                    hook.schema, requires_username=hook.requires_username,
                                    replace=True)

    def _pre_dispatch(self, session: Any, message: dict) -> Any:
        """on_handshake hooks (first handshake only), then before_command hooks."""
        plugins = self.plugins
        before = plugins.hooks("before_command")
        handshakes = plugins.hooks("handshake")
        if not before and not handshakes:
            return message
        command = message.get("cmd")
        client = plugins.client(session.connection)
        try:
            if handshakes and command == "handshake" and not session.handshake_done:
                for loaded, method, _ in handshakes:
                    try:
                        outcome = method(client)
                    except Refuse:
                        raise
                    except Exception:  # as for Scratch: logged, the hook is skipped
                        log.exception("plugin %s failed in %s", plugin_name(loaded),
                                      method.__name__)
                        continue
                    if inspect.isawaitable(outcome):
                        discard(outcome)
                        log.error("plugin %s: async on_handshake hooks run for Scratch clients "
                                  "only; %s was skipped for a CL4 client", plugin_name(loaded),
                                  method.__name__)
            for loaded, method, hook in before:
                if hook.target and command not in hook.target:
                    continue
                rewritten = method(client, message)
                if inspect.isawaitable(rewritten):
                    discard(rewritten)
                    raise TypeError(f"plugin {plugin_name(loaded)}: before_command hook "
                                    f"{method.__name__} must not be async")
                if isinstance(rewritten, dict):
                    message = rewritten
        except Refuse as refusal:
            return reject(refusal)
        return message

    def _command_handler(self, loaded: Any, method: Callable) -> Callable:
        plugins = self.plugins

        def handle(request: Cl4Request) -> None:
            try:
                client = plugins.client(request.session.connection)
                outcome = method(CommandRequest(request, client))
            except Refuse as refusal:
                vetoed = reject(refusal)
                request.reply(vetoed.status, details=vetoed.details)
                return
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                task.add_done_callback(lambda done: _command_done(loaded, method, request, done))

        return handle


def _command_done(loaded: Any, method: Callable, request: Cl4Request,
                  done: asyncio.Future) -> None:
    """An async on_command handler finished: answer a Refuse or an exception like a sync one."""
    if done.cancelled():
        return
    error = done.exception()
    if error is None:
        return
    if isinstance(error, Refuse):
        vetoed = reject(error)
        request.reply(vetoed.status, details=vetoed.details)
        return
    log.error("plugin %s failed in %s", plugin_name(loaded), method.__name__, exc_info=error)
    request.reply(StatusCode.INTERNAL_SERVER_ERROR)
