"""Drive real Scratch 3 runtimes (npm scratch-vm in Node) from asyncio tests.

Each `ScratchVM` is one `node tests/interop/node/vm_host.js` subprocess running a project with a
TurboWarp-style cloud provider connected to our server::

    async with ScratchVM(server.url, project_bytes, project_id=room) as vm:
        await vm.greenflag()
        await vm.set_var("☁ score", 5)          # goes out like a project's "set" block
        await vm.wait_for_var("☁ reply", "42")  # or a predicate

Setup: `npm ci --prefix tests/interop/node` (Node >= 20). `node` is found on PATH, or set
STRATUS_NODE to the binary. STRATUS_VM_LOG=warn|info|debug shows scratch-vm's own log on the
host's stderr (which is collected and shown in errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

NODE_DIR = Path(__file__).resolve().parent / "node"
HOST_SCRIPT = NODE_DIR / "vm_host.js"
SETUP_HINT = "run `npm ci --prefix tests/interop/node` (needs Node >= 20 and npm)"

_MISSING = object()


class ScratchVMError(RuntimeError):
    """A failure of the Node host or a command; the message includes the host's stderr tail."""


class ScratchVMUnavailable(ScratchVMError):
    """Node or the npm packages are missing."""


def node_binary() -> str:
    """Path of the node binary (STRATUS_NODE, else `node` on PATH)."""
    configured = os.environ.get("STRATUS_NODE")
    if configured:
        return configured
    found = shutil.which("node")
    if not found:
        raise ScratchVMUnavailable(f"`node` not found on PATH (or set STRATUS_NODE); {SETUP_HINT}")
    return found


def check_setup() -> str:
    """Raise ScratchVMUnavailable with instructions unless node and node_modules are ready."""
    node = node_binary()
    for package in ("scratch-vm", "scratch-storage", "ws", "minilog"):
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            raise ScratchVMUnavailable(
                f"{NODE_DIR / 'node_modules' / package} is missing: {SETUP_HINT}"
            )
    return node


def _matcher(expected: Any) -> Callable[[Any], bool]:
    if callable(expected):
        return expected
    return lambda value: value == expected


class ScratchVM:
    """One headless Scratch runtime with a cloud connection, as an async context manager.

    project: .sb3 bytes or a path. user/project_id: the cloud handshake fields. turbo: run in
    turbo mode; fps: 30 (Scratch's normal speed, the default) or 60. throttle_ms: the client-side
    send throttle (50 like the TurboWarp GUI; 0 sends every update). reconnect: reconnect after
    a close like the GUI (never after 4002/4004). connect: "auto" (only if the project has cloud
    variables, like the GUI), "always" or "never". wait_connected: __aenter__/start() also wait
    for the socket to open. user_agent/origin: request headers (a browser-like User-Agent is
    sent by default).

    Every event of the host is kept in `events`; `received` holds each received line (parsed
    JSON, or the raw text if it was not JSON) and `sent` each message the provider sent.
    """

    def __init__(
        self,
        url: str | None,
        project: bytes | str | os.PathLike,
        *,
        project_id: str | None = None,
        user: str = "player123",
        turbo: bool = False,
        fps: int = 30,
        throttle_ms: float = 50,
        reconnect: bool = True,
        connect: str = "auto",
        wait_connected: bool = True,
        user_agent: str | None = None,
        origin: str | None = None,
        start_timeout: float = 60.0,
        command_timeout: float = 30.0,
        log_level: str | None = None,
        name: str | None = None,
    ):
        self.url = url
        self.project = project
        self.project_id = project_id
        self.user = user
        self.turbo = turbo
        self.fps = fps
        self.throttle_ms = throttle_ms
        self.reconnect = reconnect
        self.connect_mode = connect
        self.wait_connected = wait_connected
        self.user_agent = user_agent
        self.origin = origin
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self.log_level = log_level
        self.name = name or f"vm-{user}"

        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict] = []
        self.received: list[Any] = []
        self.sent: list[Any] = []
        self.ready_info: dict | None = None
        self.connected = False
        self.close_codes: list[int] = []
        self._stderr: deque[str] = deque(maxlen=400)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._exit_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ScratchVM:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def _argv(self, node: str, project_path: Path) -> list[str]:
        argv = [node, str(HOST_SCRIPT), "--project", str(project_path)]
        argv += ["--connect", self.connect_mode, "--user", self.user]
        argv += ["--fps", str(self.fps), "--throttle-ms", str(self.throttle_ms)]
        if self.url is not None:
            argv += ["--url", self.url]
        if self.project_id is not None:
            argv += ["--project-id", str(self.project_id)]
        if self.turbo:
            argv.append("--turbo")
        if not self.reconnect:
            argv.append("--no-reconnect")
        if self.user_agent is not None:
            argv += ["--user-agent", self.user_agent]
        if self.origin is not None:
            argv += ["--origin", self.origin]
        if self.log_level is not None:
            argv += ["--log-level", self.log_level]
        return argv

    async def start(self) -> ScratchVM:
        node = check_setup()
        if isinstance(self.project, (bytes, bytearray)):
            self._tmpdir = tempfile.TemporaryDirectory(prefix="stratus-vm-")
            project_path = Path(self._tmpdir.name) / "project.sb3"
            project_path.write_bytes(bytes(self.project))
        else:
            project_path = Path(self.project)
        self.proc = await asyncio.create_subprocess_exec(
            *self._argv(node, project_path),
            cwd=NODE_DIR,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"{self.name}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{self.name}-stderr"),
        ]
        self.ready_info = await self.wait_for_event("ready", timeout=self.start_timeout)
        will_connect = self.connect_mode == "always" or (
            self.connect_mode == "auto" and self.ready_info.get("cloud")
        )
        if self.wait_connected and will_connect:
            await self.wait_for_event("connected", timeout=self.start_timeout)
        return self

    async def close(self, timeout: float = 5.0) -> int | None:
        """Stop the host (closing its cloud connection) and return its exit code."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                proc.stdin.write(b'{"cmd":"exit"}\n')
                await proc.stdin.drain()
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 2)
            task.cancel()
        self._tasks = []
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
        return proc.returncode if proc else None

    # ------------------------------------------------------------------ I/O with the host

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def _error(self, message: str) -> ScratchVMError:
        tail = self.stderr[-6000:].rstrip()
        details = f"\n--- node stderr ({self.name}) ---\n{tail}" if tail else ""
        return ScratchVMError(f"{self.name}: {message}{details}")

    async def _read_stderr(self) -> None:
        assert self.proc and self.proc.stderr
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self._stderr.append(line.decode("utf-8", "replace"))

    async def _read_stdout(self) -> None:
        assert self.proc and self.proc.stdout
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    self._stderr.append(f"[non-JSON stdout] {line.decode('utf-8', 'replace')}")
                    continue
                self._dispatch(message)
        finally:
            code = await self.proc.wait()
            # Give the stderr reader a moment to collect the last words.
            await asyncio.sleep(0.05)
            self._exit_error = f"node host exited with code {code}"
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(self._error(self._exit_error))
            self._pending.clear()
            self._changed.set()

    def _dispatch(self, message: dict) -> None:
        if "event" not in message:
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                if message.get("ok"):
                    future.set_result(message.get("result"))
                else:
                    future.set_exception(self._error(str(message.get("error"))))
            return
        message["t"] = time.monotonic()
        self.events.append(message)
        event = message["event"]
        if event == "recv":
            try:
                self.received.append(json.loads(message["line"]))
            except ValueError:
                self.received.append(message["line"])
        elif event == "send":
            self.sent.append(json.loads(message["data"]))
        elif event == "connected":
            self.connected = True
        elif event == "closed":
            self.connected = False
            self.close_codes.append(message.get("code"))
        elif event == "fatal":
            self._stderr.append(f"[fatal] {message.get('message')}\n")
        self._changed.set()

    async def request(self, cmd: str, timeout: float | None = None, **params: Any) -> Any:
        """Send one command to the host and return its result."""
        if self.proc is None:
            raise ScratchVMError(f"{self.name}: not started")
        if self._exit_error:
            raise self._error(self._exit_error)
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        data = json.dumps({"id": request_id, "cmd": cmd, **params}, ensure_ascii=False)
        try:
            self.proc.stdin.write(data.encode("utf-8") + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self._pending.pop(request_id, None)
            raise self._error(f"cannot send {cmd!r}: {exc}") from exc
        try:
            return await asyncio.wait_for(future, timeout or self.command_timeout)
        except TimeoutError as exc:
            self._pending.pop(request_id, None)
            raise self._error(f"no reply to {cmd!r}") from exc

    # ------------------------------------------------------------------ commands

    async def greenflag(self) -> None:
        await self.request("greenflag")

    async def stop_all(self) -> None:
        await self.request("stop")

    async def get_var(self, name: str, target: str | None = None) -> Any:
        return await self.request("get_var", name=name, target=target)

    async def get_vars(self, target: str | None = None) -> dict[str, Any]:
        return await self.request("get_vars", target=target)

    async def set_var(self, name: str, value: Any, target: str | None = None) -> None:
        """Set a variable as a "set [name] to (value)" block would (cloud ones go out)."""
        await self.request("set_var", name=name, value=value, target=target)

    async def get_list(self, name: str, target: str | None = None) -> list:
        return await self.request("get_list", name=name, target=target)

    async def set_list(self, name: str, items: list, target: str | None = None) -> None:
        await self.request("set_list", name=name, value=list(items), target=target)

    async def broadcast(self, name: str) -> int:
        """Start the "when I receive" scripts for `name`; returns how many started."""
        return await self.request("broadcast", name=name)

    async def status(self) -> dict:
        return await self.request("status")

    async def set_turbo(self, on: bool) -> None:
        await self.request("set_turbo", on=on)

    async def disconnect(self) -> None:
        """Close the cloud connection for good (like leaving the project page)."""
        await self.request("disconnect")

    async def connect(self, wait: bool = True, timeout: float = 30.0) -> None:
        """Open a new cloud connection (a new provider)."""
        count = sum(1 for e in self.events if e["event"] == "connected")
        await self.request("connect")
        if wait:
            await self.wait_for_event("connected", timeout=timeout, after=count)

    async def drop_connection(self, code: int | None = None) -> None:
        """Close the socket (with `code`, or abruptly without a close frame); the provider then
        reconnects like the GUI unless reconnect=False."""
        await self.request("close_socket", code=code)

    # ------------------------------------------------------------------ waiting

    async def wait_for_event(
        self,
        event: str,
        predicate: Callable[[dict], bool] | None = None,
        timeout: float = 10.0,
        after: int = 0,
    ) -> dict:
        """The first event of that type (skipping the first `after` ones) matching predicate."""
        deadline = time.monotonic() + timeout
        while True:
            seen = 0
            for message in list(self.events):
                if message["event"] != event:
                    continue
                seen += 1
                if seen > after and (predicate is None or predicate(message)):
                    return message
            if self._exit_error:
                raise self._error(f"{self._exit_error} while waiting for event {event!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"timed out after {timeout}s waiting for event {event!r}")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError, TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_for_received(
        self, name: str, expected: Any = _MISSING, timeout: float = 10.0
    ) -> Any:
        """Wait until a `set` of `name` (matching value or predicate) arrives from the server;
        returns its value."""
        match = (lambda value: True) if expected is _MISSING else _matcher(expected)

        def predicate(message: dict) -> bool:
            try:
                data = json.loads(message["line"])
            except ValueError:
                return False
            return (
                isinstance(data, dict)
                and data.get("method") == "set"
                and data.get("name") == name
                and match(data.get("value"))
            )

        found = await self.wait_for_event("recv", predicate, timeout=timeout)
        return json.loads(found["line"]).get("value")

    async def wait_for_var(
        self,
        name: str,
        expected: Any,
        timeout: float = 10.0,
        target: str | None = None,
        interval: float = 0.02,
    ) -> Any:
        """Poll a variable until it equals `expected` (or `expected(value)` is true)."""
        match = _matcher(expected)
        deadline = time.monotonic() + timeout
        value: Any = _MISSING
        while True:
            value = await self.get_var(name, target)
            if match(value):
                return value
            if time.monotonic() >= deadline:
                raise self._error(
                    f"timed out after {timeout}s waiting for {name!r}: last value {value!r}"
                )
            await asyncio.sleep(interval)
