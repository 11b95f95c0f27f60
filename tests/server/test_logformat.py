"""Log formats (server/logformat.py): the JSON formatter on its own, and a real server process
run with `log_format = "json"` whose every output line is parsed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from server.logformat import JsonFormatter
from tests.conformance.cl4_client import Cl4, status
from tests.conformance.helpers import (
    close_all,
    expect_close,
    handshake_text,
    joined,
    recv,
    set_text,
    ws_connect,
)
from tests.conftest import ROOT, ServerProcess, write_toml
from tests.server.plugin_fixtures import append_plugins


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("stratus.test", logging.WARNING, __file__, 1, message, args,
                             exc_info)


def test_json_record_has_the_shipper_fields():
    """A record is one object: ISO 8601 UTC time, level, logger and the formatted message."""
    line = JsonFormatter().format(record("%d clients in %s", 3, "room"))
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message"}
    assert entry["level"] == "WARNING" and entry["logger"] == "stratus.test"
    assert entry["message"] == "3 clients in room"
    assert entry["time"].endswith("Z")
    when = datetime.fromisoformat(entry["time"])
    assert when.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - when) < timedelta(seconds=5)


def test_json_record_of_a_worker_names_it():
    """In a worker of `--workers N` every JSON record says which worker wrote it."""
    entry = json.loads(JsonFormatter("worker-2[4242]").format(record("started")))
    assert entry["worker"] == "worker-2[4242]" and entry["message"] == "started"


def test_json_record_carries_the_exception():
    """A record logged with an exception has its traceback in `exception`, on the same line."""
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        line = JsonFormatter().format(record("write failed", exc_info=sys.exc_info()))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "write failed"
    assert entry["exception"].startswith("Traceback")
    assert "RuntimeError: disk on fire" in entry["exception"]


def test_control_characters_cannot_break_the_line():
    """Newlines and escape sequences in a message stay inside one JSON line."""
    line = JsonFormatter().format(record("evil %s", "a\nb\x1b[2J\r"))
    assert "\n" not in line and "\x1b" not in line and "\r" not in line
    assert json.loads(line)["message"] == "evil a\nb\x1b[2J\r"


async def test_server_logs_json_lines(tmp_path):
    """A server with log_format = "json" writes only JSON objects, with client text escaped
    and a plugin's exception as `exception`."""
    proc = ServerProcess(tmp_path, {"server": {"log_format": "json", "log_level": "debug"}})
    append_plugins(proc.config_path, [{"use": "tests.server.plugin_fixtures:Introspect"}])
    proc.start()
    try:
        room = "evil\nroom\x1b[2J"
        client = await joined(proc.url, room, "player")
        # The handshake is handled once the room is loaded (off the loop): a set sent after
        # it reaching a second member proves the join (and its log line) happened.
        await client.send(set_text("☁ seen", 1))
        watcher = await joined(proc.url, room, "watcher")
        assert "seen" in str(await recv(watcher))
        cl4 = await Cl4.open(proc.url, "c", quiet=False)
        await cl4.handshake()
        await cl4.send({"cmd": "boom", "listener": "b"})
        await cl4.expect(status("E:105 | Internal server error", "b"))
        await close_all(client, cl4.ws)
    finally:
        proc.stop()
    lines = proc.log().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    assert any(entry["message"].startswith("Stratus ") and "listening" in entry["message"]
               for entry in entries)
    joins = [entry for entry in entries if "joined" in entry["message"]]
    assert joins and all("\x1b" not in entry["message"] and "\n" not in entry["message"]
                         for entry in joins)
    assert "evil\\x0aroom\\x1b[2J" in joins[0]["message"]
    failures = [entry for entry in entries if "exception" in entry]
    assert any("RuntimeError: plugin bug" in entry["exception"] for entry in failures)


async def test_refused_client_text_stays_escaped_in_json(tmp_path):
    """A client refused for a blocked room id is logged in JSON like any other line."""
    proc = ServerProcess(tmp_path, {"server": {"log_format": "json", "log_level": "debug"},
                                    "scratch": {"blocked_rooms": ["blocked"]}})
    proc.start()
    try:
        client = await ws_connect(proc.url)
        await client.send(handshake_text("blocked", "player"))
        await expect_close(client, 4004)
    finally:
        proc.stop()
    entries = [json.loads(line) for line in proc.log().splitlines()]
    assert any("4004" in entry["message"] and entry["logger"] == "stratus.scratch"
               for entry in entries)


def test_fatal_start_error_is_a_json_line(tmp_path):
    """A start-up failure after the config loaded ends the JSON log with a CRITICAL line."""
    config = tmp_path / "config.toml"
    write_toml(config, {"server": {"host": "127.0.0.1", "port": 0, "log_format": "json",
                                   "data_dir": str(tmp_path / "data"),
                                   "tls_cert": str(tmp_path / "missing.pem"),
                                   "tls_key": str(tmp_path / "missing.key")}})
    done = subprocess.run([sys.executable, "-m", "server", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    entries = [json.loads(line) for line in done.stderr.splitlines()]
    assert entries[-1]["level"] == "CRITICAL"
    assert "configuration error" in entries[-1]["message"]
    assert "tls_cert" in entries[-1]["message"]
