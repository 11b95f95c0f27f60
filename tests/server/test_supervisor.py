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
from types import SimpleNamespace

import pytest

from server.supervisor import RestartDelay, describe_exit
from tests.conformance.cl4_client import Cl4, drain
from tests.conformance.cl4_client import close_all as close_cl4
from tests.conformance.helpers import (
    close_all,
    expect_close,
    http_get,
    joined,
    recv,
    set_line,
    set_text,
    ws_connect,
)
from tests.conftest import ROOT, ServerProcess, free_port, redis_settings
from tests.server.test_config import clean_env, run_server
from tests.server.test_tls import Authority, served_serial
from tests.server.unshared_cluster import BACKEND as TEST_ONLY_BACKEND

# Supervision does not need shared rooms: the test-only cluster engine lets workers start without
# Redis (see tests/server/unshared_cluster.py); the memory store keeps SQLite out of it.
WORKER_SETTINGS = {"store": {"backend": "memory"}, "cluster": {"backend": TEST_ONLY_BACKEND}}


# Pure helpers


def test_exit_described_by_code_or_signal():
    """The supervisor's log says how a worker ended: its exit code or the signal's name."""
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by signal SIGKILL"
    assert describe_exit(-signal.SIGSEGV) == "killed by signal SIGSEGV"


def test_restart_delay_doubles_for_a_crash_loop_and_resets_when_stable():
    """Restart delays double while a worker dies young, up to a cap, and reset once it ran long."""
    delay = RestartDelay()
    delays = [delay.after_death(ran_for=1.0) for _ in range(10)]
    assert delays[:4] == [RestartDelay.FIRST, 2 * RestartDelay.FIRST, 4 * RestartDelay.FIRST,
                          8 * RestartDelay.FIRST]
    assert delays[-1] == RestartDelay.LONGEST
    assert delay.after_death(ran_for=RestartDelay.STABLE_AFTER) == RestartDelay.FIRST


# Real processes


def worker_pids(server: ServerProcess, count: int = 2, timeout: float = 10.0) -> dict[int, int]:
    """Worker index -> pid of the running workers, once all `count` listen (from the log)."""
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


def wait_logged(server: ServerProcess, text: str, timeout: float = 10.0) -> None:
    """Wait until the server's log has `text`."""
    deadline = time.monotonic() + timeout
    while text not in server.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert text in server.log(), server.log()


def kill_leftovers(pids) -> None:
    """Stop workers a failed test left behind (by pid)."""
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def server_sockets(port: int) -> dict[int, str]:
    """Client port -> socket inode of every established connection to `port`, server side."""
    sockets = {}
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01 = ESTABLISHED
                sockets[int(fields[2].rsplit(":", 1)[1], 16)] = fields[9]
    return sockets


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process `pid` holds open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_by_pid(port: int, pids) -> dict[int, int]:
    """How many established TCP connections on `port` (server side) each process holds."""
    inodes = set(server_sockets(port).values())
    return {pid: len(socket_inodes(pid) & inodes) for pid in pids}


def worker_serving(client, port: int, pids) -> int:
    """The pid of the worker that holds a websockets client's connection."""
    inode = server_sockets(port)[client.transport.get_extra_info("sockname")[1]]
    [pid] = [pid for pid in pids if inode in socket_inodes(pid)]
    return pid


async def one_client_per_worker(server: ServerProcess, room: str, pids) -> dict[int, object]:
    """Worker pid -> a client joined to `room` on that worker (extra clients are closed)."""
    chosen: dict[int, object] = {}
    extra = []
    for attempt in range(40):
        client = await joined(server.url, room, f"user{attempt}")
        pid = worker_serving(client, server.port, pids)
        if pid in chosen:
            extra.append(client)
        else:
            chosen[pid] = client
        if len(chosen) == len(pids):
            break
    await close_all(*extra)
    assert len(chosen) == len(pids), "the kernel never chose one of the workers"
    return chosen


async def worker_1_replaced_and_serving(server: ServerProcess, pids: dict[int, int],
                                        room: str) -> None:
    """Worker 1 runs under a new pid, worker 2 under its old one, and the new worker 1 gets
    some of the port's new clients."""
    deadline = time.monotonic() + 10
    while (restarted := worker_pids(server))[1] == pids[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert restarted[1] != pids[1] and restarted[2] == pids[2], server.log()
    clients = [await joined(server.url, f"{room}-{n}", f"user{n}") for n in range(24)]
    try:
        held = established_by_pid(server.port, restarted.values())
        assert held[restarted[1]] > 0, held
    finally:
        await close_all(*clients)


@pytest.fixture
def workers(make_server):
    """A `--workers 2` server with the test-only cluster engine; leftover workers are killed."""
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
    """`--workers 2` with the local backend exits 2 naming [server] workers, [cluster] backend."""
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
    """A SIGKILLed worker is logged and replaced; the port answers meanwhile; the new one serves."""
    server = workers()
    pids = worker_pids(server)
    os.kill(pids[1], signal.SIGKILL)
    # Connections the kernel had already queued for the killed worker die with it; once it is
    # gone (the supervisor has reaped it: every thread has let go of its socket), the other
    # worker answers every new one while the first is down.
    wait_logged(server, f"worker 1 (pid {pids[1]}) killed by signal SIGKILL")
    for _ in range(20):
        assert http_get(server.http_url, "/healthz")[0] == 200
    await worker_1_replaced_and_serving(server, pids, room)


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
    """SIGTERM to the supervisor: clients get 1001, every worker exits, the supervisor exits 0."""
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


async def test_ctrl_c_in_a_terminal_stops_every_process_cleanly(tmp_path):
    """Ctrl-C (SIGINT to the whole process group) stops supervisor and workers, exit 0."""
    config = tmp_path / "config.toml"
    port = free_port()
    config.write_text(
        f'[server]\nhost = "127.0.0.1"\nport = {port}\nworkers = 2\n'
        f'[store]\nbackend = "memory"\n[cluster]\nbackend = "{TEST_ONLY_BACKEND}"\n'
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        # A session of its own: the group's SIGINT must not reach the test runner.
        proc = subprocess.Popen([sys.executable, "-m", "server", "--config", str(config)],
                                cwd=ROOT, env=clean_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = SimpleNamespace(log=lambda: log_path.read_text(errors="replace"))
    try:
        pids = worker_pids(server)
        os.killpg(proc.pid, signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 10) == 0, server.log()
        wait_gone(pids.values(), 2)
        assert "Traceback" not in server.log() and "all workers stopped" in server.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_leftovers(int(pid) for pid in re.findall(r"started \(pid (\d+)\)", server.log()))


@pytest.fixture
def started_servers():
    """Servers a test started itself; stopped after it, leftover workers killed."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        pids = re.findall(r"worker \d+ started \(pid (\d+)\)", server.log())
        server.stop()
        kill_leftovers(int(pid) for pid in pids)


async def test_sighup_reloads_the_certificate_in_every_worker(started_servers, tmp_path):
    """With TLS, SIGHUP to the supervisor reloads the certificate in both workers; it lives on."""
    authority = Authority(tmp_path)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.install("first.stratus.test", cert_file, key_file)
    settings = {table: dict(keys) for table, keys in WORKER_SETTINGS.items()}
    settings["server"] = {"tls_cert": str(cert_file), "tls_key": str(key_file)}
    (tmp_path / "server").mkdir()
    server = ServerProcess(tmp_path / "server", settings, args=["--workers", "2"],
                           client_tls=authority.client_context())
    started_servers.append(server.start())
    pids = list(worker_pids(server).values())
    second = authority.install("second.stratus.test", cert_file, key_file)
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while server.log().count("TLS certificate reloaded") < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert server.log().count("TLS certificate reloaded") == 2, server.log()
    assert server.proc.poll() is None
    context = authority.client_context()
    clients = [await ws_connect(f"wss://127.0.0.1:{server.port}", ssl=context)
               for _ in range(16)]
    try:
        served = {worker_serving(client, server.port, pids) for client in clients}
        assert served == set(pids)  # both workers answered, each with the new certificate
        assert {served_serial(client) for client in clients} == {second.serial_number}
    finally:
        await close_all(*clients)


async def test_workers_stop_when_the_supervisor_is_killed(workers):
    """Workers of a SIGKILLed supervisor shut down instead of holding the port as orphans."""
    server = workers()
    pids = worker_pids(server)
    server.proc.kill()
    server.proc.wait()
    wait_gone(pids.values(), 10)
    assert f"the supervisor is gone (pid {server.proc.pid})" in server.log()
    with pytest.raises(OSError):
        http_get(server.http_url, "/healthz")


async def test_worker_failing_to_start_stops_start_up_with_its_exit_code(tmp_path):
    """Workers that cannot bind the port stop start-up with their reason and exit 1, no retries."""
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


# On the Redis backend: the workers serve the same rooms


@pytest.fixture
def redis_workers(make_server, redis_server):
    """`--workers 2` nodes of a Redis cluster on a real redis-server; leftovers are killed."""
    started: list[ServerProcess] = []

    def start(**settings) -> ServerProcess:
        server = make_server(args=["--workers", "2"], **redis_settings(redis_server, **settings))
        started.append(server)
        return server

    yield start
    for server in started:
        pids = re.findall(r"worker \d+ started \(pid (\d+)\)", server.log())
        server.stop()
        kill_leftovers(int(pid) for pid in pids)


async def test_two_workers_on_redis_serve_one_room_both_ways(redis_workers, room):
    """On Redis, a client on each worker sees the other's writes; late joiners get them dumped."""
    server = redis_workers()
    pids = list(worker_pids(server).values())
    clients = await one_client_per_worker(server, room, pids)
    first, second = (clients[pid] for pid in pids)
    await asyncio.sleep(0.3)  # each worker's join reaches the other through Redis
    await first.send(set_text("☁ score", 7))
    assert await recv(second) == set_line("☁ score", 7)
    await second.send(set_text("☁ lives", 3))
    assert await recv(first) == set_line("☁ lives", 3)
    late = await one_client_per_worker(server, room, pids)
    for client in late.values():
        dump = sorted(str(await recv(client)).split("\n"))
        assert dump == sorted([set_line("☁ score", 7), set_line("☁ lives", 3)])
    await close_all(first, second, *late.values())


async def test_workers_are_distinct_cluster_nodes(redis_workers, room):
    """A node_id set for the host gets each worker's number, so the workers still share rooms."""
    server = redis_workers(cluster={"node_id": "classroom-host"})
    pids = list(worker_pids(server).values())
    log = server.log()
    assert "cluster node classroom-host-1" in log and "cluster node classroom-host-2" in log, log
    clients = await one_client_per_worker(server, room, pids)
    first, second = (clients[pid] for pid in pids)
    await asyncio.sleep(0.3)
    await first.send(set_text("☁ seen", 1))
    assert await recv(second) == set_line("☁ seen", 1)
    await close_all(first, second)


async def test_room_keeps_working_when_a_worker_on_redis_is_killed(redis_workers, room):
    """On Redis, a SIGKILLed worker's replacement shares the room and its values with the other."""
    server = redis_workers()
    pids = worker_pids(server)
    clients = await one_client_per_worker(server, room, list(pids.values()))
    survivor = clients[pids[2]]
    await asyncio.sleep(0.3)
    await clients[pids[1]].send(set_text("☁ before", 1))
    assert await recv(survivor) == set_line("☁ before", 1)
    os.kill(pids[1], signal.SIGKILL)
    wait_logged(server, f"worker 1 (pid {pids[1]}) killed by signal SIGKILL")
    deadline = time.monotonic() + 10
    while (restarted := worker_pids(server))[1] == pids[1] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert restarted[1] != pids[1], server.log()
    newcomers = await one_client_per_worker(server, room, list(restarted.values()))
    on_new_worker = newcomers[restarted[1]]
    assert await recv(on_new_worker) == set_line("☁ before", 1)  # its dump, from Redis
    await asyncio.sleep(0.3)
    await on_new_worker.send(set_text("☁ after", 2))
    assert await recv(survivor) == set_line("☁ after", 2)
    await close_all(survivor, *newcomers.values())


async def test_cl4_clients_on_two_workers_reach_each_other(redis_workers):
    """CL4 on two workers on Redis: a gmsg and a pmsg by name cross from one worker to the other."""
    server = redis_workers()
    pids = list(worker_pids(server).values())
    chosen: dict[int, Cl4] = {}
    extra = []
    for _ in range(40):
        client = await Cl4.open(server.url, quiet=False)
        pid = worker_serving(client.ws, server.port, pids)
        if pid in chosen:
            extra.append(client)
        else:
            chosen[pid] = client
        if len(chosen) == len(pids):
            break
    await close_cl4(*extra)
    alice, bob = (chosen[pid] for pid in pids)
    for client, name in ((alice, "alice"), (bob, "bob")):
        await client.handshake()
        await client.setid(name)
    await asyncio.sleep(0.3)  # each worker's presence reaches the other through Redis
    await drain(alice, bob)
    await alice.send({"cmd": "gmsg", "val": "hello"})
    for client in (bob, alice):  # gmsg reaches the sender too
        await client.expect({"cmd": "gmsg", "val": "hello", "rooms": "default"})
    await bob.send({"cmd": "pmsg", "val": "psst", "id": "alice"})
    message = await alice.recv()
    assert message["cmd"] == "pmsg" and message["val"] == "psst", message
    await close_cl4(alice, bob)


async def test_a_stuck_worker_is_killed_and_restarted(workers, room):
    """A worker whose event loop stops turning (SIGSTOP here: alive, serving nobody) is logged
    as stuck after worker_hang_timeout, killed and restarted; the other worker is untouched and
    the new one serves."""
    server = workers(server={"worker_hang_timeout": 1.5})
    pids = worker_pids(server)
    os.kill(pids[1], signal.SIGSTOP)
    try:
        wait_logged(server, f"worker 1 (pid {pids[1]}) has not answered for", timeout=10)
        wait_logged(server, f"worker 1 (pid {pids[1]}) killed by signal SIGKILL")
        await worker_1_replaced_and_serving(server, pids, room)
        assert f"worker 2 (pid {pids[2]}) has not answered" not in server.log()
    finally:
        kill_leftovers([pids[1]])


async def test_a_busy_worker_is_not_taken_for_a_stuck_one(workers, room):
    """Beats come from the loop between clients' messages: a worker under steady traffic for
    longer than worker_hang_timeout is never killed."""
    server = workers(server={"worker_hang_timeout": 1.0})
    worker_pids(server)
    clients = [await joined(server.url, room, f"user{n}") for n in range(6)]
    try:
        deadline = time.monotonic() + 3.0
        count = 0
        while time.monotonic() < deadline:
            for client in clients:
                await client.send(set_text("☁ busy", count))
                count += 1
            await asyncio.sleep(0.005)
    finally:
        await close_all(*clients)
    assert "has not answered" not in server.log(), server.log()
