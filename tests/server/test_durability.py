"""Storage faults as a user sees them, over real sockets and real files: a disk that fills up
while the server runs, damaged, empty, read-only or shared data dirs at start, and room ids and
variable names that only JavaScript strings can hold."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import pytest

from server.config import StoreSection
from server.store import open_store
from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    handshake_text,
    http_get,
    joined,
    raw_handshake,
    recv,
    recv_until,
    rooms_in_memory,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import ServerProcess
from tests.server.disks import fill, free, remount, small_tmpfs
from tests.server.test_lifecycle import wait_for

FAST = {"flush_interval": 0.05, "retry_max_interval": 0.2}
BIG = "9" * 20000  # a value that needs new pages on a full disk


@pytest.fixture
def disk(tmp_path):
    """A 600 KiB tmpfs for a server's data dir, unmounted after the test."""
    with small_tmpfs(tmp_path / "disk") as mount:
        yield mount


def on_disk(mount: Path) -> dict:
    """Settings that put a server's data dir on `mount` (its log and config stay elsewhere)."""
    return {"server": {"data_dir": str(mount / "data")}}


def health(srv: ServerProcess) -> tuple[int, str]:
    status, _, body = http_get(srv.http_url, "/healthz")
    return status, body.decode()


def refused_start(workdir: Path, **settings) -> tuple[int, str]:
    """Exit code and output of a server that must refuse to start."""
    workdir.mkdir(parents=True, exist_ok=True)
    proc = ServerProcess(workdir, settings)
    with pytest.raises(RuntimeError, match="exited early"):
        proc.start()
    return proc.proc.returncode, proc.log()


def assert_one_line(output: str, pattern: str) -> None:
    assert "Traceback" not in output
    # The start-up line naming the config file comes first; the refusal is the one line after.
    lines = [line for line in output.strip().splitlines()
             if " INFO stratus: Configuration: " not in line]
    assert len(lines) == 1, output
    assert re.fullmatch(pattern, lines[0]), lines[0]


async def set_and_relay(writer, reader, name: str, value: str) -> None:
    """`writer` sets a variable and `reader` (in the same room) receives it."""
    await writer.send(set_text(name, value))
    await recv_until(reader, lambda got: set_line(name, value) in got)


async def dump(url: str, room: str, user: str = "reader") -> list[str]:
    """The lines a new member of `room` receives on joining."""
    client = await joined(url, room, user)
    lines = str(await recv(client)).split("\n")
    await client.close()
    return lines


# A disk that fills up while the server runs


async def test_full_disk_keeps_values_reports_503_and_writes_them_later(disk, make_server, room):
    """Writes to a full disk wait in memory (/healthz 503 says why) and reach disk once freed."""
    srv = make_server(**on_disk(disk), store=FAST)
    a = await joined(srv.url, room, "player1")
    b = await joined(srv.url, room, "player2")
    await set_and_relay(a, b, "☁ old", "1")
    await asyncio.sleep(0.3)  # on disk
    await asyncio.to_thread(fill, disk)
    await set_and_relay(a, b, "☁ old", "2")
    await set_and_relay(a, b, "☁ new", BIG)
    await wait_for(lambda: "2 values" in health(srv)[1], timeout=5)
    assert health(srv) == (503, "store cannot be written (database or disk is full); 2 values "
                                "kept in memory, retrying\n")
    await asyncio.sleep(1.0)  # several retries fail, quietly
    await asyncio.to_thread(free, disk)
    await wait_for(lambda: health(srv) == (200, "ok\n"), timeout=5)
    await close_all(a, b)
    log = srv.log()
    assert len(re.findall(r"cannot write \d+ values to store", log)) == 1
    assert log.count("can be written again") == 1
    assert await asyncio.to_thread(srv.stop) == 0
    await asyncio.to_thread(srv.start)
    assert await dump(srv.url, room) == [set_line("☁ old", "2"), set_line("☁ new", BIG)]


async def test_room_with_unwritten_values_stays_in_memory(disk, make_server, room):
    """An idle room whose values are not on disk stays in memory, and comes back whole."""
    srv = make_server(**on_disk(disk), store={**FAST, "room_idle_timeout": 0.3})
    a = await joined(srv.url, room, "player1")
    b = await joined(srv.url, room, "player2")
    await asyncio.to_thread(fill, disk)
    await set_and_relay(a, b, "☁ x", BIG)
    await close_all(a, b)
    await wait_for(lambda: health(srv)[0] == 503, timeout=5)
    await asyncio.sleep(1.5)  # the janitor runs every second here
    assert rooms_in_memory(srv.http_url) == 1
    await asyncio.to_thread(free, disk)
    await wait_for(lambda: rooms_in_memory(srv.http_url) == 0, timeout=5)
    assert await dump(srv.url, room) == [set_line("☁ x", BIG)]


async def test_sigterm_while_writes_fail_exits_non_zero(disk, make_server, room):
    """A shutdown that cannot write pending values exits 1 with one line saying how many."""
    srv = make_server(**on_disk(disk), store={**FAST, "shutdown_write_timeout": 0.5})
    a = await joined(srv.url, room, "player1")
    b = await joined(srv.url, room, "player2")
    await asyncio.to_thread(fill, disk)
    await set_and_relay(a, b, "☁ x", BIG)
    await wait_for(lambda: health(srv)[0] == 503, timeout=5)
    assert await asyncio.to_thread(srv.stop, signal.SIGTERM) == 1
    log = srv.log()
    assert "Traceback" not in log
    assert re.search(r"^stratus: 1 values could not be written to store .*stratus\.sqlite3 and "
                     r"are lost \(.*full\)$", log, re.MULTILINE), log


# Start-up checks


def test_damaged_store_is_refused_with_exit_2(tmp_path):
    """A store with one overwritten 4 KiB page stops start-up with one line and exit code 2."""
    data = tmp_path / "data"
    store = open_store(StoreSection(), data)
    for number in range(300):
        store.save([("scratch", f"room{number}", [(f'"☁ v{i}"', i, "5") for i in range(20)],
                     [])])
    store.close()
    with open(data / "stratus.sqlite3", "r+b") as handle:
        handle.seek(5 * 4096)
        handle.write(b"\xab" * 4096)
    code, output = refused_start(tmp_path)
    assert code == 2
    assert_one_line(output, rf"stratus: store {re.escape(str(data))}/stratus\.sqlite3 is "
                            r"damaged: .+; restore it from a backup or move it away")


async def test_empty_store_file_is_reported(make_server, tmp_path, room):
    """A zero-byte store file is named in a warning; the server then works as with a new store."""
    (tmp_path / "server0" / "data").mkdir(parents=True)
    path = tmp_path / "server0" / "data" / "stratus.sqlite3"
    path.touch()
    srv = make_server()
    assert re.search(rf"WARNING stratus\.store: store file {re.escape(str(path))} is empty "
                     r"\(0 bytes\)", srv.log())
    a = await joined(srv.url, room)
    await a.send(set_text("☁ x", "1"))
    await expect_nothing(a)
    await a.close()


def test_read_only_data_dir_is_refused(disk, tmp_path):
    """A data dir on a read-only file system stops start-up with a one-line reason."""
    (disk / "data").mkdir()
    remount(disk, "ro")
    try:
        code, output = refused_start(tmp_path / "srv", **on_disk(disk))
    finally:
        remount(disk, "rw")
    assert code == 1
    assert_one_line(output, rf"stratus: data dir {re.escape(str(disk))}/data is not writable "
                            r"\(Read-only file system\); .+")


def test_full_data_dir_is_refused(disk, tmp_path):
    """A data dir without room for a write stops start-up with a one-line reason."""
    fill(disk)
    code, output = refused_start(tmp_path / "srv", **on_disk(disk))
    assert code == 1
    assert_one_line(output, rf"stratus: data dir {re.escape(str(disk))}/data is full: .+")


async def test_second_server_on_one_data_dir_is_refused(make_server, tmp_path):
    """A second server on a data dir in use refuses to start, naming the dir; the first runs on."""
    first = make_server()
    code, output = refused_start(tmp_path / "second",
                                 server={"data_dir": str(first.data_dir)})
    assert code == 1
    assert_one_line(output, rf"stratus: data dir {re.escape(str(first.data_dir))} is in use by "
                            rf"another Stratus server \(pid {first.proc.pid}\); .+")
    assert health(first) == (200, "ok\n")


# Room ids and names that only JS strings can hold


async def test_lone_surrogate_project_id_joins_and_persists(make_server):
    """A project id and a variable name holding lone surrogates join, relay and survive restart."""
    srv = make_server()
    name = "☁ \udc00"
    update = json.dumps({"method": "set", "name": name, "value": "5"})  # escapes surrogates
    a = await ws_connect(srv.url)
    b = await ws_connect(srv.url)
    await a.send(raw_handshake('"\\ud800"', '"player1"'))
    await b.send(raw_handshake('"\\ud800"', '"player2"'))
    await a.send(update)
    got = await recv(b)
    assert json.loads(got) == {"method": "set", "name": name, "value": "5"}
    await close_all(a, b)
    assert await asyncio.to_thread(srv.stop) == 0
    await asyncio.to_thread(srv.start)
    c = await ws_connect(srv.url)
    await c.send(raw_handshake('"\\ud800"', '"player3"'))
    assert json.loads(await recv(c)) == {"method": "set", "name": name, "value": "5"}
    other = await ws_connect(srv.url)
    await other.send(raw_handshake('"\\ufffd"', '"player4"'))
    await expect_nothing(other)  # a different room
    await close_all(c, other)


# Rooms read from disk


async def test_messages_sent_while_a_stored_room_loads_follow_the_join(make_server, room):
    """Sets sent right behind the handshake of a stored room apply after its values, in order."""
    srv = make_server(store={"flush_interval": 0.05})
    a = await joined(srv.url, room, "player1")
    for number in range(20):
        await a.send(set_text(f"☁ v{number}", str(number)))
    await a.close()
    await asyncio.to_thread(srv.restart)
    b = await ws_connect(srv.url)
    await b.send(raw_handshake(json.dumps(room), '"player2"'))
    for value in ("1", "2", "3"):
        await b.send(set_text("☁ v0", value))
    assert len(str(await recv(b)).split("\n")) == 20  # the dump, before anything else
    await expect_nothing(b)
    assert (await dump(srv.url, room))[0] == set_line("☁ v0", "3")
    await b.close()


async def test_sets_of_a_client_that_leaves_while_its_room_loads_count(make_server, room):
    """A client that sets values and leaves before its stored room is read still wrote them."""
    srv = make_server(store={"flush_interval": 0.05})
    a = await joined(srv.url, room, "player1")
    await a.send(set_text("☁ kept", "1"))
    await a.close()
    await asyncio.to_thread(srv.restart)
    bot = await ws_connect(srv.url)
    await bot.send(handshake_text(room, "bot"))
    await bot.send(set_text("☁ bot", "2"))
    await bot.close()
    assert await dump(srv.url, room) == [set_line("☁ kept", "1"), set_line("☁ bot", "2")]


async def test_concurrent_joins_of_a_stored_room_read_it_once(make_server, room):
    """Many clients joining a stored room at once all get its values; it is read once."""
    srv = make_server(server={"log_level": "debug"}, store={"flush_interval": 0.05})
    a = await joined(srv.url, room, "player1")
    await a.send(set_text("☁ x", "42"))
    await asyncio.sleep(0.3)
    await a.close()
    await asyncio.to_thread(srv.restart)
    clients = await asyncio.gather(*(joined(srv.url, room, f"player{i}") for i in range(20)))
    for client in clients:
        assert await recv(client) == set_line("☁ x", "42")
    await close_all(*clients)
    assert srv.log().count(f"room {room} created") == 2  # once before and once after restart


async def test_store_read_failure_closes_join_with_1011(make_server, room):
    """A room that cannot be read from a store damaged while running is refused with 1011."""
    srv = make_server(store={"flush_interval": 0.05, "room_idle_timeout": 0.1})
    a = await joined(srv.url, room, "player1")
    for number in range(100):
        await a.send(set_text(f"☁ v{number}", "7" * 1000))
    await a.close()
    await wait_for(lambda: rooms_in_memory(srv.http_url) == 0, timeout=5)
    path = srv.data_dir / "stratus.sqlite3"
    for damaged, start in ((path, 4096), (path.with_name(path.name + "-wal"), 32)):
        with open(damaged, "r+b") as handle:  # all but the headers
            size = handle.seek(0, 2)
            handle.seek(start)
            handle.write(b"\xab" * (size - start))
    b = await joined(srv.url, room, "player2")
    await expect_close(b, 1011)
    status, reason = health(srv)
    assert (status, reason) == (503, "store cannot be read (file is not a database)\n")
    assert "Traceback" not in srv.log()
