"""`--workers N`: N server processes on one port, supervised (restart, stop, refusal)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from server.supervisor import RestartDelay, describe_exit
from tests.conformance.helpers import close_all, expect_close, http_get, joined
from tests.conftest import ROOT, ServerProcess, free_port
from tests.server.test_config import clean_env, run_server
from tests.server.test_only_backplane import BACKEND as TEST_ONLY_BACKEND

# Supervision does not need shared rooms: the test-only backplane lets workers start without
# Redis (see tests/server/test_only_backplane.py); the memory store keeps SQLite out of it.
WORKER_SETTINGS = {"store": {"backend": "memory"}, "cluster": {"backend": TEST_ONLY_BACKEND}}


# Pure helpers


def test_exit_described_by_code_or_signal():
    """The supervisor's log says how a worker ended: its exit code or the signal's name."""
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by signal SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by signal SIGSEGV"


def test_restart_delay_doubles_for_a_crash_loop_and_resets_when_stable():
    """A worker dying young again and again waits longer each time, up to a cap; one that
    ran long gets a quick restart again."""
    delay = RestartDelay()
    delays = [delay.after_death(ran_for=1.0) for _ in range(10)]
    assert delays[:4] == [RestartDelay.FIRST, 2 * RestartDelay.FIRST, 4 * RestartDelay.FIRST,
                          8 * RestartDelay.FIRST]
    assert delays[-1] == RestartDelay.LONGEST
    assert delay.after_death(ran_for=RestartDelay.STABLE_AFTER) == RestartDelay.FIRST


# Real processes


def worker_pids(server: ServerProcess, count: int = 2, timeout: float = 10.0) -> dict[int, int]:
    """Worker index -> pid of the workers now running, once all `count` listen (from the
    supervisor's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        started = dict(re.findall(r"worker (\d+) started \(pid (\d+)\)", log))
        pids = {int(index): int(pid) for index, pid in started.items()}
        listening = {int(pid) for pid in re.findall(r"worker-\d+\[(\d+)\] stratus: Stratus .* "
                                                    r"listening on", log)}
        if len(pids) == count and set(pids.values()) <= listening:
            return pids
        time.sleep(0.05)
    raise AssertionError(f"{count} workers did not listen:\n{server.log()}")


def alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), f"still running: {[p for p in pids if alive(p)]}"


def kill_leftovers(pids) -> None:
    """Stop workers a failed test left behind (by pid)."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def established_by_pid(port: int, pids) -> dict[int, int]:
    """How many established TCP connections on `port` (server side) each process holds."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01 = ESTABLISHED
                inodes.add(fields[9])
    counts = {}
    for pid in pids:
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
        counts[pid] = held
    return counts


@pytest.fixture
def workers(make_server):
    """A `--workers 2` server with the test-only backplane; leftover workers are killed."""
    started: list[ServerProcess] = []

    def start(**settings) -> ServerProcess:
        merged = {table: dict(keys) for table, keys in WORKER_SETTINGS.items()}
        for table, keys in settings.items():
            merged.setdefault(table, {}).update(keys)
        server = make_server(args=["--workers", "2"], **merged)
        started.append(server)
        return server

    yield start
    for server in started:
        pids = re.findall(r"worker \d+ started \(pid (\d+)\)", server.log())
        server.stop()
        kill_leftovers(int(pid) for pid in pids)


async def test_local_backend_with_two_workers_is_refused_naming_both_keys(tmp_path):
    """`--workers 2` with the default local backend exits 2 with a message naming
    [server] workers and [cluster] backend."""
    code, out = await run_server(["--workers", "2", "--port", str(free_port())], tmp_path)
    assert code == 2, out
    assert "[server] workers" in out and "[cluster] backend" in out, out
    assert "Traceback" not in out


async def test_two_workers_share_the_port_and_both_get_clients(workers, room):
    """Clients of one port are spread over both workers, and each worker serves its own."""
    server = workers()
    pids = worker_pids(server)
    clients = [await joined(server.url, f"{room}-{n}", f"user{n}") for n in range(24)]
    try:
        held = established_by_pid(server.port, pids.values())
        assert all(count > 0 for count in held.values()), held
        assert sum(held.values()) == len(clients), held
    finally:
        await close_all(*clients)
    log = server.log()
    assert "worker-1[" in log and "worker-2[" in log, log


async def test_killed_worker_is_logged_and_restarted_while_the_port_answers(workers, room):
    """A worker killed with SIGKILL is logged with the signal and replaced; the port answers
    all along and the new worker serves clients."""
    server = workers()
    pids = worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    # Connections the kernel had already queued for the killed worker die with it; once it is
    # gone, the other worker answers every new one while the first is down.
    wait_gone([pids[1]], 5)
    for _ in range(20):
        assert http_get(server.http_url, "/healthz")[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        restarted = worker_pids(server)
        if restarted[1] != pids[1]:
            break
        time.sleep(0.05)
    assert restarted[1] != pids[1] and restarted[2] == pids[2], server.log()
    assert f"worker 1 (pid {pids[1]}) killed by signal SIGKILL" in server.log()
    clients = [await joined(server.url, f"{room}-{n}", f"user{n}") for n in range(24)]
    try:
        held = established_by_pid(server.port, restarted.values())
        assert held[restarted[1]] > 0, held
    finally:
        await close_all(*clients)


async def test_worker_dying_young_again_waits_longer(workers):
    """A worker that dies again soon after its restart is restarted after a longer delay."""
    server = workers()
    first = worker_pids(server)[2]
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while (second := worker_pids(server)[2]) == first and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(second, signal.SIGKILL)
    expected = (re.escape(f"worker 2 (pid {second}) killed by signal SIGKILL after ") + ".*"
                + re.escape(f"restarting it in {2 * RestartDelay.FIRST:.1f} s"))
    deadline = time.monotonic() + 5
    while not re.search(expected, server.log()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert re.search(expected, server.log()), server.log()


async def test_sigterm_stops_every_worker_gracefully_and_exits_0(workers, room):
    """SIGTERM to the supervisor: clients of both workers get 1001, every worker exits and
    the supervisor exits 0 within seconds."""
    server = workers()
    pids = worker_pids(server)
    clients = [await joined(server.url, f"{room}-{n}", f"user{n}") for n in range(16)]
    assert all(established_by_pid(server.port, pids.values()).values())
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*(expect_close(client, 1001, timeout=5, messages=0)
                           for client in clients))
    code = await asyncio.to_thread(server.proc.wait, 10)
    assert code == 0, server.log()
    assert time.monotonic() - started < 5
    wait_gone(pids.values(), 1)
    assert server.log().count("stratus: stopped") == 2, server.log()


async def test_workers_stop_when_the_supervisor_is_killed(workers):
    """If the supervisor dies without stopping them (SIGKILL), the workers shut down instead
    of holding the port as orphans."""
    server = workers()
    pids = worker_pids(server)
    server.proc.kill()
    server.proc.wait()
    wait_gone(pids.values(), 10)
    assert "the supervisor is gone" in server.log()
    with pytest.raises(OSError):
        http_get(server.http_url, "/healthz")


async def test_worker_failing_to_start_stops_start_up_with_its_exit_code(tmp_path):
    """When workers cannot start (the port is held by another program), the supervisor stops
    the others and exits with the worker's code and reason instead of restarting forever."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(
            f'[server]\nhost = "127.0.0.1"\nport = {port}\nworkers = 2\n'
            f'[store]\nbackend = "memory"\n[cluster]\nbackend = "{TEST_ONLY_BACKEND}"\n'
        )
        proc = subprocess.run([sys.executable, "-m", "server", "--config", str(config)],
                              cwd=ROOT, env=clean_env(), capture_output=True, text=True,
                              timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "cannot start" in out and "before it listened: stopping" in out, out
    assert "restarting" not in out
