"""Start-up configuration: command line, config file errors, environment overrides, defaults."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.__main__ import load_config
from server.config import ConfigError
from tests.conformance.helpers import http_get
from tests.conftest import free_port, write_toml

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the overrides the server reads, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PORT", "HOST", "STRATUS_DATA_DIR", "STRATUS_LOG_LEVEL",
                        "STRATUS_REDIS_URL")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


async def run_server(args: list[str], cwd: Path, env: dict[str, str] | None = None,
                     timeout: float = 15) -> tuple[int, str]:
    """Run `python -m server ARGS` to completion; (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", *args, cwd=cwd, env=env or clean_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"python -m server {args} did not exit") from None
    return proc.returncode, out.decode(errors="replace")


class Running:
    """A server subprocess started from the command line, for port/host checks."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", *args], cwd=cwd, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

    def healthy_on(self, port: int, timeout: float = 15) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(self.proc.stdout.read().decode(errors="replace"))
            try:
                return http_get(f"http://127.0.0.1:{port}", "/healthz")[0] == 200
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def launch(tmp_path):
    started: list[Running] = []

    def factory(args: list[str], env: dict[str, str] | None = None) -> Running:
        running = Running(args, tmp_path, env or clean_env())
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


async def test_help_describes_options(tmp_path):
    """`python -m server --help` exits 0 and lists the command-line options."""
    code, out = await run_server(["--help"], tmp_path)
    assert code == 0
    for option in ("--config", "--port", "--host", "--log-level", "--workers"):
        assert option in out


BAD_CONFIGS = {
    "unknown key": ("[server]\nbogus_setting = 1\n", "bogus_setting"),
    "wrong type": ('[server]\nport = "eighty"\n', "port"),
    "bad choice": ('[store]\nbackend = "redis"\n', "backend"),
    "unknown table": ("[nonsense]\nx = 1\n", "nonsense"),
    "invalid TOML": ("[server\nport = 1\n", "TOML"),
    "bad trusted proxy": ('[server]\ntrusted_proxies = ["10.0.0.0/8", "not-an-ip"]\n',
                          "trusted_proxies"),
    "missing blocked_rooms_file": ('[scratch]\nblocked_rooms_file = "/nonexistent/blocked.txt"\n',
                                   "blocked_rooms_file"),
    "missing username filter": ('[scratch]\nusername_filters = ["/nonexistent/filter"]\n',
                                "username_filters"),
}

MORE_BAD_SETTINGS = [
    ("scratch", "allow_delete", "yes"),
    ("scratch", "invalid_room_close_code", 4003),
    ("scratch", "coalesce", "some"),
    ("server", "port", 70000),
    ("scratch", "max_rooms", 0),
    ("server", "forwarded_for", "middle"),
    ("server", "log_level", "loud"),
    ("store", "flush_interval", -1),
    ("cluster", "backend", "redis-without-a-module"),
    ("server", "workers", 0),
    ("cluster", "redis_url", "http://127.0.0.1:6379"),
    ("cluster", "node_id", "two words"),
    ("cluster", "node_timeout", 0),
    ("cluster", "require_redis_at_start", "yes"),
    ("history", "enabled", "on"),
    ("history", "keep", 0),
    ("history", "max_limit", 100_001),
    ("history", "days", 7),
    ("server", "log_format", "xml"),
    ("server", "tls_cert", "cert.pem"),  # without tls_key
    ("server", "tls_key", "key.pem"),  # without tls_cert
    ("http", "metrics", "on"),
]

SHARED_BACKEND = "tests.server.unshared_cluster:UnsharedCluster"
WORKERS_REFUSED = {
    "local backend": ({}, ("[server] workers", "[cluster] backend")),
    "any free port": ({"server": {"port": 0}, "store": {"backend": "memory"},
                       "cluster": {"backend": SHARED_BACKEND}}, ("[server] port", "workers")),
    "one SQLite file": ({"cluster": {"backend": SHARED_BACKEND}},
                        ("[server] workers", "[store] backend")),
}


@pytest.mark.parametrize("settings, keys", WORKERS_REFUSED.values(), ids=WORKERS_REFUSED.keys())
def test_several_workers_refused_where_they_cannot_share(tmp_path, settings, keys):
    """workers > 1 is refused naming the keys with the local backend, port 0 or a shared SQLite."""
    path = tmp_path / "workers.toml"
    write_toml(path, {"server": {"port": 9080, **settings.pop("server", {})}, **settings})
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={}, overrides={"server": {"workers": 2}})
    for key in keys:
        assert key in str(refused.value)
    load_config(path, env={}, overrides={"server": {"workers": 1}})  # one worker is fine


def test_several_workers_accepted_on_redis_with_the_default_store_setting(tmp_path):
    """workers > 1 on the Redis backend is accepted with [store] left at its sqlite default."""
    path = tmp_path / "workers.toml"
    write_toml(path, {"server": {"port": 9080, "workers": 2}, "cluster": {"backend": "redis"}})
    config = load_config(path, env={})
    assert config.server.workers == 2 and config.store.backend == "sqlite"


@pytest.mark.parametrize("table, key, value", MORE_BAD_SETTINGS)
def test_more_bad_settings_name_the_key(tmp_path, table, key, value):
    """Other wrong types, choices and ranges are refused with a message naming the key."""
    path = tmp_path / "bad.toml"
    write_toml(path, {table: {key: value}})
    with pytest.raises(ConfigError, match=key):
        load_config(path, env={})


async def test_bad_config_stops_startup_with_exit_2(tmp_path):
    """Each invalid config file makes start-up fail with exit code 2 and names the setting."""
    port = free_port()

    async def check(name: str, text: str, key: str) -> None:
        path = tmp_path / f"{name.replace(' ', '_')}.toml"
        path.write_text(text, encoding="utf-8")
        code, out = await run_server(["--config", str(path), "--port", str(port),
                                      "--host", "127.0.0.1"], tmp_path)
        assert code == 2, f"{name}: exit {code}\n{out}"
        assert key in out, f"{name}: {key!r} not in\n{out}"
        assert "Traceback" not in out, f"{name}:\n{out}"

    await asyncio.gather(*(check(name, text, key) for name, (text, key) in BAD_CONFIGS.items()))
    assert refused(port)  # nothing was left listening


async def test_missing_config_file_exits_2(tmp_path):
    """A --config path that does not exist stops start-up with exit code 2 and names it."""
    missing = tmp_path / "nope.toml"
    code, out = await run_server(["--config", str(missing)], tmp_path)
    assert code == 2
    assert str(missing) in out


async def test_bad_environment_and_flags_exit_2(tmp_path):
    """A non-numeric PORT or a bad --log-level also stops start-up with exit code 2."""
    (code_env, out_env), (code_flag, out_flag) = await asyncio.gather(
        run_server([], tmp_path, env=clean_env(PORT="http")),
        run_server(["--log-level", "loud"], tmp_path),
    )
    assert code_env == 2 and "PORT" in out_env
    assert code_flag == 2 and "log-level" in out_flag


def test_port_and_host_from_environment(launch, tmp_path):
    """PORT and HOST from the environment override the config file."""
    config = tmp_path / "c.toml"
    file_port, env_port = free_port(), free_port()
    config.write_text(f'[server]\nhost = "0.0.0.0"\nport = {file_port}\ndata_dir = "d"\n')
    running = launch(["--config", str(config)],
                     env=clean_env(PORT=str(env_port), HOST="127.0.0.1"))
    assert running.healthy_on(env_port)
    assert refused(file_port)


def test_redis_url_from_environment_selects_the_redis_backend():
    """STRATUS_REDIS_URL sets [cluster] redis_url and picks backend = "redis"."""
    config = load_config(None, env={"STRATUS_REDIS_URL": "redis://cache:6380/2"})
    assert config.cluster.backend == "redis"
    assert config.cluster.redis_url == "redis://cache:6380/2"
    assert load_config(None, env={}).cluster.backend == "local"


def test_redis_flag_runs_a_node_on_that_redis(launch, tmp_path, redis_server):
    """--redis URL starts a node of the cluster at that Redis (it registers itself there)."""
    port = free_port()
    running = launch(["--redis", redis_server.url, "--port", str(port), "--host", "127.0.0.1"])
    assert running.healthy_on(port)
    assert redis_server.client().keys("stratus:node:*")


def test_port_flag_wins_over_environment(launch, tmp_path):
    """--port on the command line wins over the PORT environment variable."""
    env_port, flag_port = free_port(), free_port()
    running = launch(["--port", str(flag_port), "--host", "127.0.0.1"],
                     env=clean_env(PORT=str(env_port), HOST="127.0.0.1"))
    assert running.healthy_on(flag_port)
    assert refused(env_port)


def test_no_config_file_listens_on_9080(launch, tmp_path):
    """Without a config file or overrides the server listens on port 9080."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", 9080))
        except OSError:
            pytest.skip("port 9080 is busy")
    running = launch([])
    assert running.healthy_on(9080)
    assert (tmp_path / "data").is_dir()  # data_dir "data", relative to the working directory


def test_shipped_config_toml_equals_builtin_defaults():
    """The repository's config.toml loads cleanly and holds exactly the built-in defaults."""
    shipped = dataclasses.asdict(load_config(ROOT / "config.toml", env={}))
    builtin = dataclasses.asdict(load_config(env={}))
    shipped.pop("source")
    builtin.pop("source")
    assert shipped == builtin


def stopped_output(running: Running) -> str:
    """Stop a launched server and return everything it printed."""
    running.proc.terminate()
    out, _ = running.proc.communicate(timeout=10)
    return out.decode(errors="replace")


def test_config_toml_in_working_directory_is_loaded(launch, tmp_path):
    """Without --config, config.toml in the working directory is loaded, and the log says so."""
    port = free_port()
    write_toml(tmp_path / "config.toml",
               {"server": {"host": "127.0.0.1", "port": port, "status_page": False}})
    running = launch([])
    assert running.healthy_on(port)
    assert http_get(f"http://127.0.0.1:{port}", "/")[0] == 404  # status_page = false
    out = stopped_output(running)
    assert f"Configuration: {tmp_path / 'config.toml'} (config.toml in the working directory)" \
        in out, out


def test_without_config_toml_the_log_says_built_in_defaults(launch, tmp_path):
    """With no --config and no config.toml beside it, the server says it runs on defaults."""
    port = free_port()
    running = launch(["--port", str(port), "--host", "127.0.0.1"])
    assert running.healthy_on(port)
    assert http_get(f"http://127.0.0.1:{port}", "/")[0] == 200  # the default status page
    out = stopped_output(running)
    assert "Configuration: built-in defaults" in out, out
    assert (tmp_path / "data").is_dir()  # the default data_dir, relative to the working dir


def test_explicit_config_wins_over_config_toml_in_working_directory(launch, tmp_path):
    """--config FILE is loaded instead of ./config.toml, and the log names FILE."""
    local_port, chosen_port = free_port(), free_port()
    write_toml(tmp_path / "config.toml", {"server": {"host": "127.0.0.1", "port": local_port}})
    chosen = tmp_path / "chosen.toml"
    write_toml(chosen, {"server": {"host": "127.0.0.1", "port": chosen_port}})
    running = launch(["--config", str(chosen)])
    assert running.healthy_on(chosen_port)
    assert refused(local_port)
    assert f"Configuration: {chosen} (--config)" in stopped_output(running)


async def test_invalid_config_toml_in_working_directory_exits_2(tmp_path):
    """A broken ./config.toml stops start-up with exit code 2 and a message naming the file."""
    (tmp_path / "config.toml").write_text("[server]\nport = \"eighty\"\n", encoding="utf-8")
    code, out = await run_server([], tmp_path)
    assert code == 2, out
    assert str(tmp_path / "config.toml") in out and "port" in out, out
    assert "Traceback" not in out


def test_repository_root_runs_on_its_config_toml(tmp_path):
    """Started from the repository root, the server loads the shipped config.toml (defaults)."""
    port = free_port()
    env = clean_env(STRATUS_DATA_DIR=str(tmp_path / "data"))
    running = Running(["--port", str(port), "--host", "127.0.0.1"], ROOT, env)
    try:
        assert running.healthy_on(port)
        out = stopped_output(running)
    finally:
        running.stop()
    assert f"Configuration: {ROOT / 'config.toml'} (config.toml in the working directory)" in out
