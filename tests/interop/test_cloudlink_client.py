"""Interop with the PyPI `cloudlink==0.2.0.1` Python client: a happy-path round trip.

That client needs websockets < 14 (it crashes on >= 14, CL4 spec §10 #20), so it runs in its
own virtual environment, cached under tests/.venvs/cloudlink (git-ignored by a .gitignore the
test writes there), and never touches the test suite's environment. Its scripts run in
subprocesses with timeouts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

VENVS = ROOT / "tests" / ".venvs"
VENV = VENVS / "cloudlink"
PACKAGES = ["cloudlink==0.2.0.1", "websockets==10.4"]

# One CloudLink client: handshake (its own init_handshake listener), setid, then either wait for
# a gmsg ("listen") or send one and wait for its own copy ("send"). Events are JSON lines.
CLIENT_SCRIPT = r'''
import asyncio, json, os, sys
from cloudlink import client as make_client

url, name, mode, text = sys.argv[1:5]
client = make_client()

def event(**fields):
    print(json.dumps(fields), flush=True)

def finish():
    event(kind="done")
    client.disconnect()
    asyncio.get_running_loop().call_later(3, os._exit, 0)  # in case the loop does not end

@client.on_connect
async def connected():
    event(kind="connected")
    await client.protocol.set_username(name)

@client.on_username_set
async def named(id, username, uuid):
    event(kind="named", id=id, username=username, uuid=uuid)
    if mode == "send":
        client.send_packet({"cmd": "gmsg", "val": text})

@client.on_gmsg
async def got(message):
    event(kind="gmsg", val=message["val"], rooms=message.get("rooms"))
    if message["val"] == text:
        finish()

@client.on_ulist
async def users(message):
    event(kind="ulist", mode=message.get("mode"), val=message.get("val"))

client.run(host=url)
'''


def pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def cloudlink_python() -> Path:
    """The venv's interpreter, creating the venv (once) with the pinned client packages."""
    python = VENV / "bin" / "python"
    marker = VENV / ".installed"
    if marker.exists() and marker.read_text() == " ".join(PACKAGES) and python.exists():
        return python
    VENVS.mkdir(parents=True, exist_ok=True)
    (VENVS / ".gitignore").write_text("*\n")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         *PACKAGES],
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        if not pypi_reachable():
            pytest.skip("PyPI is unreachable: cannot install cloudlink==0.2.0.1 into its venv")
        pytest.fail(f"pip install {' '.join(PACKAGES)} failed:\n{result.stderr}")
    marker.write_text(" ".join(PACKAGES))
    return python


class ClientProcess:
    """A cloudlink client script in a subprocess, read line by line."""

    def __init__(self, python: Path, script: Path, url: str, name: str, mode: str, text: str):
        self.proc = subprocess.Popen(
            [str(python), str(script), url, name, mode, text],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={key: value for key, value in os.environ.items() if key != "PYTHONPATH"},
        )
        self.events: list[dict] = []

    def wait_for(self, kind: str, timeout: float = 15.0, **fields) -> dict:
        """The first event of `kind` (with these field values), reading more as needed."""

        def wanted(event: dict) -> bool:
            return event["kind"] == kind and all(event.get(k) == v for k, v in fields.items())

        deadline = time.monotonic() + timeout
        for event in self.events:
            if wanted(event):
                return event
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            self.events.append(event)
            if wanted(event):
                return event
        self.proc.kill()
        raise AssertionError(f"no {kind!r} event; got {self.events!r}\n{self.proc.stderr.read()}")

    def finish(self, timeout: float = 15.0) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the cloudlink client did not exit") from None
        finally:
            self.proc.stdout.close()
            self.proc.stderr.close()


def test_cloudlink_python_client_round_trip(server, tmp_path):
    """The cloudlink 0.2.0.1 client handshakes, sets its username and exchanges a gmsg."""
    python = cloudlink_python()
    version = subprocess.run(
        [str(python), "-c", "import websockets; print(websockets.__version__)"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    assert version == "10.4"
    script = tmp_path / "cl_client.py"
    script.write_text(CLIENT_SCRIPT)
    text = f"hello from alice {os.urandom(4).hex()}"

    bob = ClientProcess(python, script, server.url, "bob", "listen", text)
    assert bob.wait_for("connected")  # on_connect fires only after I:100 on init_handshake
    named = bob.wait_for("named")
    assert named["username"] == "bob" and named["id"].isdigit() and named["uuid"]

    alice = ClientProcess(python, script, server.url, "alice", "send", text)
    alice.wait_for("connected")
    assert alice.wait_for("named")["username"] == "alice"
    assert alice.wait_for("gmsg", val=text)["rooms"] == "default"  # the sender's own copy
    assert bob.wait_for("gmsg", val=text)["rooms"] == "default"
    added = [e for e in bob.events if e["kind"] == "ulist" and e["mode"] == "add"]
    assert any(e["val"]["username"] == "alice" for e in added)
    alice.wait_for("done")
    bob.wait_for("done")
    alice.finish()
    bob.finish()
