"""Shared fixtures: real Stratus servers in subprocesses, reached over 127.0.0.1.

`server` is one server shared by the whole session (fresh room ids keep tests apart);
`make_server(**settings)` starts a private one with config overrides, e.g.
`make_server(scratch={"max_clients_per_room": 2})`.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

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
    """A `python -m server` subprocess with its own config file and data directory."""

    def __init__(self, workdir: Path, settings: dict | None = None, port: int | None = None,
                 open_files: int | None = None, args: list[str] | None = None):
        self.workdir = workdir
        self.args = list(args or [])  # extra command-line arguments, e.g. ["--workers", "2"]
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) of the server process
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
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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
                with urllib.request.urlopen(self.http_url + "/healthz", timeout=1) as reply:
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
