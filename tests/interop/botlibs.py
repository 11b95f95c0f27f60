"""Run the Python cloud-variable bot libraries in child processes and drive them from tests.

scratchattach and scratchcommunication are synchronous and start their own (non-daemon)
threads that block in socket reads. Running each bot in its own process keeps those threads
out of pytest: a test talks to the child over JSON lines on stdin/stdout, and the child is
always killed at the end, whatever the library is doing.

The same file is the child program: `python botlibs.py '<json config>'`.

Commands (parent → child, one JSON object a line, answered by {"id", "result" | "error"}):

    set        {"name", "value"}      the library's own set call
    set_many   {"values": {...}}      scratchattach `set_vars` (several sets in one frame)
    get        {"name"}               the library's own get call (scratchcommunication)
    listen     {}                     start the library's event handler; events are pushed
    read_stream {"timeout"}           scratchattach: open an event stream and read one message
    quit       {}                     shut the library down, then exit

Events (child → parent): {"event": {"name": ..., "value": ...}} for every `set` the
library's event API reports, with the name as the library gives it (without "☁ ").
Anything the libraries print goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LIBRARIES = ("scratchattach", "scratchcommunication")
CONTACT = "stratus-tests@127.0.0.1"
HERE = Path(__file__).resolve()


def library_python() -> str:
    """The interpreter that has the bot libraries (STRATUS_BOTLIBS_PYTHON overrides)."""
    return os.environ.get("STRATUS_BOTLIBS_PYTHON") or sys.executable


def missing_libraries(python: str | None = None) -> list[str]:
    """Which of the bot libraries the interpreter cannot import."""
    python = python or library_python()
    if python == sys.executable:
        return [name for name in LIBRARIES if importlib.util.find_spec(name) is None]
    missing = []
    for name in LIBRARIES:
        probe = subprocess.run(
            [python, "-c", f"import {name}"], capture_output=True, timeout=60, check=False
        )
        if probe.returncode:
            missing.append(name)
    return missing


# Parent side


class BotError(Exception):
    """A command failed inside the bot process."""


class Bot:
    """A bot library instance in a child process, connected to `url` in `room`."""

    def __init__(self, library: str, url: str, room: str, **options: Any):
        self.library = library
        self.config = {"library": library, "url": url, "room": room, **options}
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.stderr = bytearray()
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self, timeout: float = 30.0) -> Bot:
        """Start the child and wait until the library has connected."""
        self.proc = await asyncio.create_subprocess_exec(
            library_python(),
            str(HERE),
            json.dumps(self.config),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"},
        )
        ready = asyncio.get_running_loop().create_future()
        self._pending[-1] = ready
        self._tasks = [
            asyncio.create_task(self._read_stdout()),
            asyncio.create_task(self._read_stderr()),
        ]
        try:
            await asyncio.wait_for(ready, timeout)
        except BaseException:
            await self.kill()
            raise
        return self

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "event" in message:
                self.events.put_nowait(message["event"])
                continue
            future = self._pending.pop(message.get("id", -1), None)
            if future is None or future.done():
                continue
            if "error" in message:
                future.set_exception(BotError(message["error"]))
            else:
                future.set_result(message.get("result"))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BotError(f"bot exited:\n{self.log()}"))

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while chunk := await self.proc.stderr.read(65536):
            self.stderr += chunk

    def log(self) -> str:
        """What the child and the library printed."""
        return self.stderr.decode(errors="replace")

    async def call(self, op: str, timeout: float = 20.0, **arguments: Any) -> Any:
        """Run one command in the child and return its result."""
        assert self.proc is not None and self.proc.stdin is not None
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        command = {"id": self._next_id, "op": op, **arguments}
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.library} {op} timed out\n{self.log()}") from None

    async def next_event(self, timeout: float = 10.0) -> dict:
        """The next `set` the library's event API reported."""
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.library} reported no event\n{self.log()}") from None

    async def wait_value(self, name: str, value: Any, timeout: float = 10.0) -> None:
        """Poll the library's get API until `name` holds `value`."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = await self.call("get", name=name)
            if seen == value:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.library} has {name!r} = {seen!r}, not {value!r}")

    async def stop(self, timeout: float = 8.0) -> None:
        """Ask the library to shut down; kill the child if it does not exit in time."""
        if self.proc is None or self.proc.returncode is not None:
            await self.kill()
            return
        with contextlib.suppress(Exception):
            await self.call("quit", timeout=timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 2.0)
        await self.kill()

    async def kill(self) -> None:
        """Kill the child (if alive) and stop reading from it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2.0)
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    async def __aenter__(self) -> Bot:
        return await self.start()

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()


# Child side


class Child:
    """Runs inside the child process: one library instance and the command loop."""

    def __init__(self, config: dict, out) -> None:
        self.config = config
        self.out = out
        self.lock = threading.Lock()
        self.cloud: Any = None
        self.handlers: list[Any] = []
        self.streams: list[Any] = []

    def emit(self, message: dict) -> None:
        with self.lock:
            self.out.write(json.dumps(message) + "\n")
            self.out.flush()

    def event(self, name: Any, value: Any) -> None:
        self.emit({"event": {"name": name, "value": value}})

    # Library setup

    def connect(self) -> None:
        library = self.config["library"]
        if library == "scratchattach":
            import scratchattach

            header = self.config.get("header", {"User-Agent": f"stratus-tests ({CONTACT})"})
            self.cloud = scratchattach.CustomCloud(
                project_id=self.config["room"],
                cloud_host=self.config["url"],
                header=header,
                length_limit=100000,
                username=self.config.get("username", "scratchattach"),
            )
            self.cloud.connect()
        elif library == "scratchcommunication":
            import scratchcommunication

            self.cloud = scratchcommunication.TwCloudConnection(
                project_id=self.config["room"],
                cloud_host=self.config["url"],
                contact_info=CONTACT,
                username=self.config.get("username", "player1000"),
                accept_strs=True,
                daemon_thread=True,
            )

            @self.cloud.on("set")
            def on_set(event) -> None:
                self.event(event.name, event.value)  # the name without "☁ "
        else:
            raise ValueError(f"unknown library {library!r}")

    # Commands

    def op_set(self, name: str, value: Any) -> None:
        if self.config["library"] == "scratchattach":
            self.cloud.set_var(name, value)
        else:
            self.cloud.set_variable(name=name, value=value)

    def op_set_many(self, values: dict) -> None:
        self.cloud.set_vars(values)

    def op_get(self, name: str) -> Any:
        if self.config["library"] == "scratchattach":
            return self.cloud.get_var(name)
        try:
            return self.cloud.get_variable(name=name)
        except KeyError:
            return None

    def op_listen(self) -> None:
        if self.config["library"] != "scratchattach":
            return  # scratchcommunication reports events from the start
        events = self.cloud.events()
        ready = threading.Event()

        @events.event
        def on_set(activity) -> None:
            self.event(activity.name, activity.value)  # the name without "☁ "

        @events.event
        def on_ready() -> None:
            ready.set()

        self.handlers.append(events)
        events.start(thread=True)
        ready.wait(10)
        # CloudEvents drops everything in its first 500 ms (meant for the connect dump).
        time.sleep(0.6)

    def op_read_stream(self, timeout: float = 5.0) -> list[dict]:
        stream = self.cloud.create_event_stream()
        self.streams.append(stream)
        stream.timeout = timeout
        return list(stream.read())

    def op_quit(self) -> None:
        for handler in self.handlers:
            handler.stop()
            handler.disconnect()
        for stream in self.streams:
            stream.close()
        if self.config["library"] == "scratchattach":
            self.cloud.disconnect()
        else:
            self.cloud.thread_running = False
            self.cloud.reconnect = False
            with contextlib.suppress(Exception):
                self.cloud.websocket.close(timeout=1)

    def serve(self) -> None:
        try:
            self.connect()
        except Exception as exc:
            self.emit({"id": -1, "error": f"connect failed: {type(exc).__name__}: {exc}"})
            return
        self.emit({"id": -1, "result": "ready"})
        for line in sys.stdin:
            command = json.loads(line)
            ident = command.pop("id")
            op = command.pop("op")
            try:
                result = getattr(self, f"op_{op}")(**command)
            except Exception as exc:  # reported to the test, which decides
                self.emit({"id": ident, "error": f"{type(exc).__name__}: {exc}"})
            else:
                self.emit({"id": ident, "result": result})
            if op == "quit":
                break


def child_main() -> None:
    # The protocol gets the real stdout; everything the libraries print goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    child = Child(json.loads(sys.argv[1]), out)
    try:
        child.serve()
    finally:
        out.flush()
        sys.stderr.flush()
        os._exit(0)  # library threads (non-daemon, blocked in recv) must not keep us alive


if __name__ == "__main__":
    child_main()
