"""Shared fixtures: real Stratus servers in subprocesses, reached over 127.0.0.1.

`server` is one server shared by the whole session (fresh room ids keep tests apart);
`make_server(**settings)` starts a private one with config overrides, e.g.
`make_server(scratch={"max_clients_per_room": 2})`. `redis_server` is a real redis-server;
`start_backend("local" | "redis", ...)` and `make_backend` give one server, or two nodes on
one Redis behind a round-robin proxy, for tests that run over both backends.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, settings: dict) -> None:
    """Write a two-level dict of settings as TOML tables ({"table": {"key": value}})."""
    lines = []
    for table, keys in settings.items():
        lines.append(f"[{table}]")
        for key, value in keys.items():
            if isinstance(value, dict):
                continue
            lines.append(f"{key} = {toml_value(value)}")
        for key, value in keys.items():
            if isinstance(value, dict):
                lines.append(f"[{table}.{key}]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in value.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


class ServerProcess:
    """A `python -m server` subprocess with its own config file and data directory.

    With `client_tls` (a client context trusting the server's certificate) the server is
    reached over wss:// and https://.
    """

    def __init__(self, workdir: Path, settings: dict | None = None, port: int | None = None,
                 open_files: int | None = None, client_tls: ssl.SSLContext | None = None,
                 args: list[str] | None = None):
        self.workdir = workdir
        self.args = list(args or [])  # extra command-line arguments, e.g. ["--workers", "2"]
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) of the server process
        self.client_tls = client_tls
        self.port = port or free_port()
        self.data_dir = workdir / "data"
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "server.log"
        merged = {
            "server": {"host": "127.0.0.1", "port": self.port, "data_dir": str(self.data_dir)}
        }
        for table, keys in (settings or {}).items():
            merged.setdefault(table, {}).update(keys)
        write_toml(self.config_path, merged)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'wss' if self.client_tls else 'ws'}://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.client_tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it while it runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--config", str(self.config_path), *self.args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=self._limit_open_files if self.open_files else None,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=1,
                                            context=self.client_tls) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy:\n{self.log()}")

    def _limit_open_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """One server with default settings, shared by the session."""
    proc = ServerProcess(tmp_path_factory.mktemp("shared-server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path):
    """Factory for private servers with config overrides; all are stopped after the test."""
    started: list[ServerProcess] = []

    def factory(port: int | None = None, workdir: Path | None = None,
                open_files: int | None = None, args: list[str] | None = None,
                **settings) -> ServerProcess:
        directory = workdir or tmp_path / f"server{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        proc = ServerProcess(directory, settings, port=port, open_files=open_files,
                             args=args).start()
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.stop()


@pytest.fixture
def room() -> str:
    """A room (project) id no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


# Redis and clusters of server processes


class RedisServer:
    """A real `redis-server` (Debian package) on a free port in its own directory, with an
    append-only file so a restart keeps its data; stopped by PID."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, fresh: bool = False, timeout: float = 10.0) -> RedisServer:
        """Start it (with `fresh`, in a new empty directory: Redis lost its data)."""
        executable = shutil.which("redis-server")
        if executable is None:
            missing = ("redis-server is not installed (tests/run installs it: "
                       "apt-get install redis-server)")
            if os.environ.get("CI"):
                pytest.fail(missing)
            pytest.skip(missing)
        if fresh:
            self.workdir = self.workdir.with_name(self.workdir.name + "-fresh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.workdir), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
             "--protected-mode", "no", "--daemonize", "no",
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early: {self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer: {self.log()}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def client(self) -> redis.Redis:
        """A synchronous client, to look at what the nodes stored."""
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        try:
            return (self.workdir / "redis.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def redis_server(tmp_path) -> RedisServer:
    """A real redis-server for this test, stopped after it."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def redis_settings(redis: RedisServer, node_timeout: float = 10.0, **settings) -> dict:
    """Server settings for a node of the Redis cluster at `redis`, plus `settings`."""
    merged = {key: dict(value) for key, value in settings.items()}
    merged.setdefault("cluster", {}).update(
        {"backend": "redis", "redis_url": redis.url, "node_timeout": node_timeout})
    return merged


class RoundRobinProxy:
    """A TCP load balancer without sticky sessions: each new connection goes to the next
    backend port. Runs its own event loop in a thread."""

    def __init__(self, ports: list[int]):
        self.ports = ports
        self.port = free_port()
        self._next = 0
        self._refusing = False  # `cut`: connections are dropped until `restore`
        self._open: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port))
        self._ready.set()
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    async def _accept(self, reader, writer) -> None:
        if self._refusing:
            writer.close()
            return
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(source, sink) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                try:
                    sink.write_eof()
                except (OSError, RuntimeError):
                    sink.close()

        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._open.difference_update((writer, up_writer))
            writer.close()
            up_writer.close()

    def cut(self) -> None:
        """Drop every connection through the proxy and refuse new ones (a network cut)."""
        def drop() -> None:
            self._refusing = True
            for writer in list(self._open):
                writer.transport.abort()
        self._loop.call_soon_threadsafe(drop)

    def restore(self) -> None:
        """Accept connections again after `cut`."""
        self._loop.call_soon_threadsafe(setattr, self, "_refusing", False)

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


class Cluster:
    """Two Stratus nodes on one Redis behind a round-robin proxy: `url` spreads consecutive
    clients over the nodes, as a load balancer without sticky sessions does."""

    def __init__(self, redis: RedisServer, nodes: list[ServerProcess]):
        self.redis = redis
        self.nodes = nodes
        self.proxy = RoundRobinProxy([node.port for node in nodes])
        self.port = self.proxy.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.proxy.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    def log(self) -> str:
        return "\n".join(node.log() for node in self.nodes)

    def stop(self) -> None:
        self.proxy.stop()
        for node in self.nodes:
            node.stop()
        self.redis.stop()


BACKENDS = ["local", "redis"]


def start_backend(backend: str, workdir: Path, **settings):
    """A server for `backend`: one process ("local"), or two nodes on a fresh Redis behind a
    round-robin proxy ("redis"). Both have `url`, `http_url`, `log()` and `stop()`."""
    if backend == "local":
        return ServerProcess(workdir, settings).start()
    redis = RedisServer(workdir / "redis").start()
    nodes = []
    try:
        for index in range(2):
            directory = workdir / f"node{index}"
            directory.mkdir(parents=True, exist_ok=True)
            nodes.append(ServerProcess(directory, redis_settings(redis, **settings)).start())
    except BaseException:
        for node in nodes:
            node.stop()
        redis.stop()
        raise
    return Cluster(redis, nodes)


@pytest.fixture
def make_backend(tmp_path):
    """Factory: `make_backend(backend, **settings)`; everything is stopped after the test."""
    started = []

    def factory(backend: str, **settings):
        directory = tmp_path / f"{backend}{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        started.append(start_backend(backend, directory, **settings))
        return started[-1]

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def make_redis_node(tmp_path):
    """Factory for Redis-backed nodes: `make_redis_node(redis, **settings)`; stopped after."""
    started: list[ServerProcess] = []

    def factory(redis: RedisServer, node_timeout: float = 10.0, **settings) -> ServerProcess:
        directory = tmp_path / f"node{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        node = ServerProcess(directory, redis_settings(redis, node_timeout, **settings))
        started.append(node)
        return node.start()

    yield factory
    for node in started:
        node.stop()
