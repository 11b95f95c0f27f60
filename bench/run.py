"""Run benchmark scenarios against targets, pinned, repeated; print medians side by side.

    python bench/run.py --target stratus --scenario classroom --repeat 3
    python bench/run.py --target stratus,relay,cloudlink --scenario classroom,bigroom
    python bench/run.py --all                      # every scenario x stratus, relay, cloudlink
    python bench/run.py --target stratus --scenario classroom --set scratch.batch_hz=30

Targets: stratus (python -m server, in-memory store), stratus-sqlite (default store),
stratus-base (the same from another checkout, `--base DIR`: before/after comparisons),
stratus-exp (the same from `--exp DIR`, for experiments), relay (bench/relay.py, asyncio),
relay-uvloop, cloudlink (CloudLink 0.2.0.1, own venv), turbowarp (TurboWarp's Node
cloud-server, bench/.turbowarp, started by bench/turbowarp_server.js), stratus-redis (one
node on the Redis backend, with a redis-server of its own) and stratus-2node (two nodes on two
ports sharing one redis-server; the generator spreads every room over both, see CLUSTERS).
A target may carry variants after `+`: `TABLE.KEY=VALUE` is a stratus config override for that
target only, `NAME=VALUE` with an upper-case NAME an environment variable of its server, e.g.
`--target stratus-base+scratch.batch_hz=60,stratus-base+scratch.batch_hz=120,turbowarp`.
Scenarios: classroom, bigroom, burst, burst50, idle, idle10k (see loadgen.PRESETS), ramp,
ramp-bigroom (see RAMPS), flood-scratch and flood-cl4 (classroom plus one flooder, see FLOODS).

The server runs under `taskset -c 0`, the generator (bench/loadgen.py, bench/.venv; with
`--client c` bench/.bin/loadgen, built from bench/cgen/loadgen.c by bench/setup.sh) under
`taskset -c 1` (`--server-cpus`, `--gen-cpus`; redis-server under `--redis-cpus`, by default the
server's). Every repetition starts a fresh server on a fresh port. Repetitions interleave
targets (rep 1 of every target, then rep 2, ...) so that background load hits them alike.
Raw results: bench/out/*.json; server logs: bench/out/logs/.
Only stdlib here: run it with the project's python.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
GEN_PY = BENCH / ".venv" / "bin" / "python"
GEN_C = BENCH / ".bin" / "loadgen"  # bench/cgen/loadgen.c, built by bench/setup.sh
CL_PY = BENCH / ".venv-cloudlink" / "bin" / "python"
TW_DIR = BENCH / ".turbowarp"  # TurboWarp's cloud-server at a pinned commit, bench/setup.sh

TARGETS = ["stratus", "stratus-sqlite", "stratus-base", "stratus-exp", "relay", "relay-uvloop",
           "cloudlink", "turbowarp", "stratus-redis", "stratus-2node", "stratus-base-redis",
           "stratus-base-2node", "stratus-exp-redis", "stratus-exp-2node"]
# Targets that run several Stratus nodes on the Redis backend: name -> nodes. Each node is a
# `python -m server` on a port of its own (as two machines behind a load balancer would be);
# every run starts a fresh redis-server they share, stopped with them.
# The -base- and -exp- variants run the --base and --exp checkouts (before/after in one run).
CLUSTERS = {"stratus-redis": 1, "stratus-2node": 2, "stratus-base-redis": 1,
            "stratus-base-2node": 2, "stratus-exp-redis": 1, "stratus-exp-2node": 2}
SCENARIOS = ["classroom", "bigroom", "burst", "burst50", "idle", "idle10k", "ramp",
             "ramp-bigroom", "flood-scratch", "flood-cl4"]
# name: (generator scenario, flooder protocol). bench/flood.py runs beside the generator on
# its core at the lowest priority, sending as fast as TCP allows and reconnecting when closed.
FLOODS = {"flood-scratch": ("classroom", "scratch"), "flood-cl4": ("classroom", "cl4")}
# The flooder starts this many seconds after the generator, once its clients have joined (the
# generator's warmup then covers the change), so the window measures a flood in full swing.
FLOOD_START = 2.0
ALL_TARGETS = ["stratus", "relay", "cloudlink"]
ALL_SCENARIOS = ["classroom", "bigroom", "burst", "burst50", "idle", "idle10k", "ramp",
             "ramp-bigroom"]
RAMP_ROOMS = [1, 2, 5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 400, 600, 800, 1000]
# at most 127 senders: a room holds 128 variables (one per sender, plus the barrier's)
RAMP_SENDERS = [10, 20, 30, 40, 60, 80, 100, 120]
# CPU lists for taskset (set from --server-cpus, --gen-cpus, --redis-cpus in main)
SERVER_CORE = "0"
GEN_CORE = "1"
REDIS_CORE = "0"


# --------------------------------------------------------------------------- machine state
def cpu_times() -> tuple[float, float]:
    """(busy, softirq+irq) core-seconds of the whole machine so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    tck = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iow, irq, softirq, steal = v[:8]
    return (user + nice + system + steal) / tck, (irq + softirq) / tck


def wait_quiet(limit: float, max_wait: float) -> float:
    """Wait until the machine's busy time is below `limit` cores; return the last load seen."""
    deadline = time.monotonic() + max_wait
    load = 0.0
    while True:
        b0, _ = cpu_times()
        time.sleep(0.5)
        b1, _ = cpu_times()
        load = (b1 - b0) / 0.5
        if load < limit or time.monotonic() > deadline:
            return load
        print(f"  (waiting for a quiet machine: {load:.2f} cores busy)", file=sys.stderr)
        time.sleep(2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- servers
def parse_target(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """`name+table.key=value+ENV=value` -> (name, config overrides, environment)."""
    name, *variants = spec.split("+")
    sets: list[str] = []
    env: dict[str, str] = {}
    for v in variants:
        key, eq, value = v.partition("=")
        if not eq or not key:
            raise SystemExit(f"target variant {v!r} in {spec!r}: want KEY=VALUE")
        if "." in key:
            sets.append(v)
        elif key.isupper():
            env[key] = value
        else:
            raise SystemExit(f"target variant {v!r}: TABLE.KEY=VALUE or UPPER_CASE_ENV=VALUE")
    return name, sets, env


def knows_key(checkout: Path, key: str) -> bool:
    """Whether another checkout's server config has `key` (older ones refuse unknown keys)."""
    try:
        return key in (checkout / "server" / "config.py").read_text()
    except OSError:
        return False


def stratus_config(path: Path, port: int, data: Path, backend: str, sets: list[str],
                   base: bool = False) -> None:
    """`base`: the checkout may predate max_connections_per_ip, so leave it out."""
    tables: dict[str, dict[str, object]] = {
        "server": {"host": "127.0.0.1", "port": port, "log_level": "warning",
                   "data_dir": str(data)},
        "store": {"backend": backend},
        # bigroom puts 500 clients in one room; the protocol's default limit is 128
        "scratch": {"max_clients_per_room": 1000},
    }
    if not base:  # a checkout from before the key existed would refuse it
        # every generated client comes from 127.0.0.1
        tables["server"]["max_connections_per_ip"] = 0
    for item in sets:
        key, _, raw = item.partition("=")
        table, _, name = key.partition(".")
        try:
            value: object = json.loads(raw)
        except ValueError:
            value = raw
        tables.setdefault(table, {})[name] = value
    lines = []
    for table, kv in tables.items():
        lines.append(f"[{table}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in kv.items()]
    path.write_text("\n".join(lines) + "\n")


class Server:
    def __init__(self, spec: str, sets: list[str], tag: str, base: Path | None = None,
                 exp: Path | None = None, home: Path | None = None) -> None:
        target, own_sets, env = parse_target(spec)
        self.target = target
        self.port = free_port()
        self.workers = workers_of(sets + own_sets)
        self.tmp = Path(tempfile.mkdtemp(prefix="stratus-bench-"))
        (OUT / "logs").mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in spec)
        self.log_path = OUT / "logs" / f"{tag}-{safe}.log"
        py = sys.executable
        if target.startswith("stratus"):
            cfg = self.tmp / "bench.toml"
            backend = "sqlite" if target == "stratus-sqlite" else "memory"
            cwd = home or ROOT
            flavour = target.split("-")[1] if target.count("-") else ""
            if flavour in ("base", "exp"):
                cwd = base if flavour == "base" else exp
                if cwd is None:
                    raise SystemExit(f"target {target} needs --{flavour} DIR (a checkout)")
            stratus_config(cfg, self.port, self.tmp / "data", backend, sets + own_sets,
                           base=not knows_key(cwd, "max_connections_per_ip"))
            cmd = [py, "-m", "server", "--config", str(cfg)]
        elif target.startswith("relay"):
            cmd = [py, str(BENCH / "relay.py"), "--port", str(self.port)]
            if target == "relay-uvloop":
                cmd.append("--uvloop")
            cwd = BENCH
        elif target == "cloudlink":
            cmd, cwd = [str(CL_PY), str(BENCH / "cloudlink_server.py"), "--port",
                        str(self.port)], BENCH
        elif target == "turbowarp":
            cmd, cwd = ["node", str(BENCH / "turbowarp_server.js"), str(TW_DIR),
                        str(self.port), "1000"], TW_DIR
            env = {"NODE_ENV": "production", **env}
        else:
            raise SystemExit(f"unknown target {target}")
        self.cmd = ["taskset", "-c", SERVER_CORE, *cmd]
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env} if env else None)
        self.pid = self.proc.pid  # taskset execs the server: same pid
        self._wait_ready()

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited early; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if self.target == "cloudlink":
                        break
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    # turbowarp serves static files only: any HTTP answer (404) means ready
                    ok = b"HTTP/1.1 " if self.target == "turbowarp" else b"HTTP/1.1 200"
                    if s.recv(64).startswith(ok):
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"{self.target} not ready in {timeout}s; see {self.log_path}")
        # `server.workers=N`: every worker binds the port itself; wait until all listen
        while listeners(self.port) < self.workers and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited early; see {self.log_path}")
            time.sleep(0.1)
        time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


def workers_of(sets: list[str]) -> int:
    """[server] workers from the config overrides (the last one wins)."""
    workers = 1
    for item in sets:
        key, _, raw = item.partition("=")
        if key == "server.workers":
            workers = int(raw)
    return workers


def listeners(port: int) -> int:
    """Listening TCP sockets on `port` (several with SO_REUSEPORT: one per worker)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.readlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


class Redis:
    """A redis-server for one run: fresh port and directory, pinned to --redis-cpus."""

    def __init__(self, tag: str, extra: list[str]) -> None:
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="stratus-bench-redis-"))
        self.log_path = OUT / "logs" / f"{tag}-redis.log"
        cmd = ["taskset", "-c", REDIS_CORE, "redis-server", "--port", str(self.port),
               "--bind", "127.0.0.1", "--dir", str(self.tmp), "--logfile", str(self.log_path),
               "--daemonize", "no", *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid  # taskset execs redis-server: same pid
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server not ready in 10 s; see {self.log_path}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)


class Deployment:
    """What one run of a target starts: its server, or for CLUSTERS targets a redis-server and
    one Stratus node per port on the Redis backend."""

    def __init__(self, spec: str, args: argparse.Namespace, tag: str) -> None:
        name = parse_target(spec)[0]
        self.redis: Redis | None = None
        self.servers: list[Server] = []
        try:
            if name in CLUSTERS:
                (OUT / "logs").mkdir(parents=True, exist_ok=True)
                self.redis = Redis(tag, args.redis_arg)
                sets = [*args.set, "cluster.backend=redis", f"cluster.redis_url={self.redis.url}"]
                for node in range(CLUSTERS[name]):
                    self.servers.append(Server(spec, sets, f"{tag}-node{node}", args.base,
                                               args.exp, args.stratus))
            else:
                self.servers.append(Server(spec, args.set, tag, args.base, args.exp,
                                           args.stratus))
        except BaseException:
            self.stop()
            raise

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]

    def exited(self) -> dict[str, int]:
        """Processes that ended during the run, with their exit codes."""
        ended = {f"server {i}": server.proc.returncode for i, server in enumerate(self.servers)
                 if server.proc.poll() is not None}
        if self.redis is not None and self.redis.proc.poll() is not None:
            ended["redis-server"] = self.redis.proc.returncode
        return ended

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.stop()


# --------------------------------------------------------------------------- one run
def run_loadgen(target: str, scenario: str, args: argparse.Namespace, extra: list[str],
                tag: str) -> dict:
    """One measurement; repeated (up to --retries) while other processes used the machine."""
    best: dict | None = None
    for attempt in range(args.retries + 1):
        load = wait_quiet(args.quiet_cores, args.quiet_wait)
        r = run_once(target, scenario, args, extra, f"{tag}-a{attempt}")
        r["load_before"] = round(load, 2)
        r["attempts"] = attempt + 1
        if "flood_cpu_pct" in r and isinstance(r.get("other_cpu_pct"), int | float):
            # the flooder is part of the scenario, not background noise
            r["other_cpu_pct"] = round(max(0.0, r["other_cpu_pct"] - r["flood_cpu_pct"]), 1)
        other = r.get("other_cpu_pct", 0.0) or 0.0
        if best is None or other < best.get("other_cpu_pct", 0.0):
            best = r
        if other <= args.max_other:
            break
        print(f"  ({target} {scenario}: other processes used {other:.0f}% of a core, "
              "measuring again)", file=sys.stderr, flush=True)
    assert best is not None
    best["noisy"] = (best.get("other_cpu_pct", 0.0) or 0.0) > args.max_other
    return best


def run_once(target: str, scenario: str, args: argparse.Namespace, extra: list[str],
             tag: str) -> dict:
    srv = Deployment(target, args, tag)
    flooder: subprocess.Popen | None = None
    try:
        gen = [str(GEN_C)] if args.client == "c" else [str(GEN_PY), str(BENCH / "loadgen.py")]
        gen_scenario, flood_protocol = FLOODS.get(scenario, (scenario, None))
        urls = [arg for url in srv.urls for arg in ("--url", url)]
        cmd = ["taskset", "-c", GEN_CORE, *gen, *urls, "--scenario", gen_scenario,
               "--server-pid", ",".join(map(str, srv.pids)),
               "--client", args.client, "--warmup", str(args.warmup),
               "--duration", str(args.duration), *extra]
        if srv.redis is not None:
            cmd += ["--redis-pid", str(srv.redis.pid)]
        if parse_target(target)[0] in ("cloudlink", "turbowarp") and scenario.startswith("idle"):
            cmd += ["--barrier-timeout", "120"]
        limit = args.warmup + args.duration + 400
        if flood_protocol is not None:
            flooder = subprocess.Popen(
                ["taskset", "-c", GEN_CORE, "nice", "-n", "19", sys.executable,
                 str(BENCH / "flood.py"), "--url", srv.urls[0], "--protocol", flood_protocol,
                 "--reconnect", "--start-after", str(FLOOD_START), "--seconds", str(limit)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
        try:
            res = json.loads(p.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            res = {"error": f"loadgen failed rc={p.returncode}: {p.stderr[-2000:]}"}
        if flooder is not None:
            res.update(stop_flooder(flooder))
        for process, code in srv.exited().items():
            res.setdefault("errors", {})[f"{process} exited"] = code
        if isinstance(res.get("redis_cpu_us_per_line"), int | float) and isinstance(
                res.get("server_cpu_us_per_line"), int | float):
            res["total_cpu_us_per_line"] = round(
                res["server_cpu_us_per_line"] + res["redis_cpu_us_per_line"], 2)
    finally:
        if flooder is not None and flooder.poll() is None:
            flooder.kill()
            flooder.wait()
        srv.stop()
    res["target"] = target
    return res


def stop_flooder(flooder: subprocess.Popen) -> dict:
    """Stop bench/flood.py; its figures plus the CPU it used (% of one core, whole run)."""
    with open(f"/proc/{flooder.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    with open("/proc/uptime") as f:
        alive = float(f.read().split()[0]) - started
    flooder.send_signal(signal.SIGTERM)
    try:
        out, err = flooder.communicate(timeout=10)
        result = json.loads(out.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        flooder.kill()
        out, err = flooder.communicate()
        return {"flood_error": (err or "")[-500:]}
    result["flood_cpu_pct"] = round(100 * cpu / alive, 1) if alive > 0 else None
    return result


# --------------------------------------------------------------------------- aggregation
COLS_TRAFFIC = [
    ("delivered_per_s", "delivered/s", "{:.0f}"),
    ("server_cpu_pct", "srv CPU %", "{:.0f}"),
    ("server_cpu_us_per_line", "srv µs/line", "{:.2f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.1f}"),
    ("incomplete", "incomplete", "{:.0f}"),
    ("lines_per_frame", "lines/frame", "{:.1f}"),
    ("gen_cpu_pct", "gen CPU %", "{:.0f}"),
    ("other_cpu_pct", "other CPU %", "{:.0f}"),
]
COLS_IDLE = [
    ("connected", "connected", "{:.0f}"),
    ("joins_per_s", "joins/s", "{:.0f}"),
    ("server_cpu_us_per_join", "srv µs/join", "{:.0f}"),
    ("rss_per_conn_kb", "RSS KiB/conn", "{:.1f}"),
    ("server_rss_before_mb", "RSS before MiB", "{:.1f}"),
    ("server_rss_after_mb", "RSS after MiB", "{:.1f}"),
    ("gen_cpu_pct", "gen CPU %", "{:.0f}"),
    ("other_cpu_pct", "other CPU %", "{:.0f}"),
]


def median_of(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if isinstance(r.get(key), int | float)]
    return statistics.median(vals) if vals else None


# Shown when a run has them: Redis's own CPU (CLUSTERS targets) and, with clients spread over
# several nodes, the freshness of the pairs whose writer is on another node than the receiver.
COLS_CLUSTER = [
    ("redis_cpu_pct", "redis CPU %", "{:.0f}"),
    ("redis_cpu_us_per_line", "redis µs/line", "{:.2f}"),
    ("total_cpu_us_per_line", "srv+redis µs/line", "{:.2f}"),
    ("cross_node_p50_ms", "cross-node p50 ms", "{:.2f}"),
    ("cross_node_p99_ms", "cross-node p99 ms", "{:.1f}"),
]

COLS_FLOOD = [
    ("flood_sent_per_s", "flooder sent/s", "{:.0f}"),
    ("flood_rate_limited", "flooder E:116", "{:.0f}"),
    ("flood_connections", "flooder conns", "{:.0f}"),
]


def table(scenario: str, by_target: dict[str, list[dict]], ref: str | None) -> str:
    cols = COLS_IDLE if scenario.startswith("idle") else COLS_TRAFFIC
    if scenario in FLOODS:
        cols = cols + COLS_FLOOD
    cols = cols + [col for col in COLS_CLUSTER
                   if any(col[0] in r for runs in by_target.values() for r in runs)]
    ratio_key = "server_cpu_us_per_join" if scenario.startswith("idle") else \
        "server_cpu_us_per_line"
    head = ["target", "runs"] + [c[1] for c in cols]
    if ref:
        head.append(f"CPU/unit ÷ {ref}")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    refv = median_of(by_target.get(ref, []), ratio_key) if ref else None
    for target, runs in by_target.items():
        ok = [r for r in runs if "error" not in r]
        row = [target, f"{len(ok)}/{len(runs)}"]
        for key, _, fmt in cols:
            v = median_of(ok, key)
            row.append("—" if v is None else fmt.format(v))
        if ref:
            v = median_of(ok, ratio_key)
            row.append("—" if v is None or not refv else f"{v / refv:.2f}")
        out.append("| " + " | ".join(row) + " |")
    notes = []
    for target, runs in by_target.items():
        for i, r in enumerate(runs):
            bad = {k: r[k] for k in ("error", "closes", "errors") if r.get(k)}
            if bad:
                notes.append(f"- {target} run {i + 1}: {json.dumps(bad)[:300]}")
            if r.get("noisy"):
                notes.append(f"- {target} run {i + 1}: noisy (other processes used "
                             f"{r.get('other_cpu_pct')}% of a core)")
            if (r.get("gen_cpu_pct") or 0) > 90:
                notes.append(f"- {target} run {i + 1}: generator CPU {r['gen_cpu_pct']}% "
                             "(generator-bound: figures understate the server)")
    return "\n".join(out + notes)


# --------------------------------------------------------------------------- ramp
# name: (base scenario, generator flag that grows, its steps, column title)
RAMPS = {
    # classroom-shaped load (10 clients/room, 5 Hz each) with more and more rooms
    "ramp": ("classroom", "--rooms", "ramp_rooms", "rooms"),
    # one room of 500 clients with more and more of them sending at 10 Hz
    "ramp-bigroom": ("bigroom", "--senders", "ramp_senders", "senders"),
}


def ramp(name: str, targets: list[str], args: argparse.Namespace,
         tag: str) -> tuple[str, dict]:
    """Grow one dimension of a scenario until p99 freshness, completeness or the generator
    gives out; report the largest delivered/s with p99 < 50 ms."""
    base, flag, steps_attr, title = RAMPS[name]
    rows = [f"| target | {title} | offered sets/s | delivered/s | p50 ms | p99 ms | srv CPU % | "
            "srv µs/line | lines/frame | gen CPU % | incomplete | other CPU % | redis CPU % |",
            "|" + "---|" * 13]
    summary: dict[str, dict] = {}
    for target in targets:
        best = None
        prev = 0.0
        for step in getattr(args, steps_attr):
            runs = []
            for rep in range(args.ramp_repeat):
                r = run_loadgen(target, base, args,
                                [flag, str(step), "--warmup", str(args.ramp_warmup),
                                 "--duration", str(args.ramp_duration)],
                                f"{tag}-{name}{step}-r{rep}")
                runs.append(r)
            d = median_of(runs, "delivered_per_s") or 0.0
            p99 = median_of(runs, "p99_ms")
            inc = median_of(runs, "incomplete")
            g = median_of(runs, "gen_cpu_pct") or 0.0
            vals = [(step, "{:.0f}"), (median_of(runs, "offered_sets_per_s"), "{:.0f}"),
                    (d, "{:.0f}"), (median_of(runs, "p50_ms"), "{:.2f}"), (p99, "{:.1f}"),
                    (median_of(runs, "server_cpu_pct"), "{:.0f}"),
                    (median_of(runs, "server_cpu_us_per_line"), "{:.2f}"),
                    (median_of(runs, "lines_per_frame"), "{:.1f}"), (g, "{:.0f}"),
                    (inc, "{:.0f}"), (median_of(runs, "other_cpu_pct"), "{:.0f}"),
                    (median_of(runs, "redis_cpu_pct"), "{:.0f}")]
            rows.append("| " + target + " | " + " | ".join(
                "—" if v is None else f.format(v) for v, f in vals) + " |")
            print(rows[-1], flush=True)
            ok = p99 is not None and p99 < 50 and not inc and all("error" not in r for r in runs)
            if ok and (best is None or d > best["delivered_per_s"]):
                best = {title: step, "delivered_per_s": d, "p99_ms": p99,
                        "gen_cpu_pct": g}
            if not ok or d < prev * 1.03 or g > 95:
                if g > 95:
                    rows.append(f"| {target} | stop: generator saturated ({g:.0f}% CPU) |"
                                + " |" * 11)
                break
            prev = d
        summary[target] = best or {}
    lines = [f"| target | max sustained delivered/s (p99 < 50 ms) | at {title} | p99 ms | "
             "gen CPU % |", "|---|---|---|---|---|"]
    for t, b in summary.items():
        if b:
            lines.append(f"| {t} | {b['delivered_per_s']:.0f} | {b[title]} | "
                         f"{b['p99_ms']:.1f} | {b['gen_cpu_pct']:.0f} |")
        else:
            lines.append(f"| {t} | — | — | — | — |")
    return "\n".join(rows) + "\n\n" + "\n".join(lines), summary


# --------------------------------------------------------------------------- main
def machine_info(root: Path = ROOT) -> str:
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=False).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "server"],
                               capture_output=True, text=True, check=False).stdout.strip()
        rev += " (server/ modified)" if dirty else ""
    except OSError:
        rev = "?"
    return (f"{platform.node()} {platform.system()} {platform.release()}, {os.cpu_count()}x {cpu}, "
            f"{mem:.0f} GiB, Python {platform.python_version()}; stratus commit {rev}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="stratus", help=f"comma list of {', '.join(TARGETS)}")
    ap.add_argument("--scenario", default="classroom", help=f"comma list of {', '.join(SCENARIOS)}")
    ap.add_argument("--all", action="store_true",
                    help=f"targets {','.join(ALL_TARGETS)} x scenarios {','.join(ALL_SCENARIOS)}")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--client", default="c", choices=["c", "picows", "websockets"],
                    help="generator: c (bench/.bin/loadgen, the default), or loadgen.py "
                    "with picows or websockets")
    ap.add_argument("--base", type=Path, default=None,
                    help="checkout the stratus-base target runs `python -m server` in")
    ap.add_argument("--stratus", type=Path, default=None,
                    help="checkout the stratus and stratus-sqlite targets run `python -m server` "
                    "in (default: the one this script is in)")
    ap.add_argument("--exp", type=Path, default=None,
                    help="checkout the stratus-exp target runs `python -m server` in")
    ap.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                    help="stratus config override, e.g. scratch.batch_hz=30 (repeatable)")
    ap.add_argument("--ref", default=None,
                    help="target the CPU ratio column divides by (default: relay if run, "
                    "else turbowarp)")
    ap.add_argument("--ramp-rooms", default=",".join(map(str, RAMP_ROOMS)))
    ap.add_argument("--ramp-senders", default=",".join(map(str, RAMP_SENDERS)))
    ap.add_argument("--ramp-repeat", type=int, default=1)
    ap.add_argument("--ramp-warmup", type=float, default=2.0)
    ap.add_argument("--ramp-duration", type=float, default=5.0)
    ap.add_argument("--quiet-cores", type=float, default=0.3,
                    help="wait before each run until the machine uses fewer cores than this")
    ap.add_argument("--quiet-wait", type=float, default=120.0, help="max seconds to wait for it")
    ap.add_argument("--max-other", type=float, default=25.0,
                    help="measure again when other processes used more than this %% of a core")
    ap.add_argument("--retries", type=int, default=2, help="how often to measure again")
    ap.add_argument("--loadgen-arg", action="append", default=[],
                    help="extra argument passed to the generator (repeatable, use =)")
    ap.add_argument("--server-cpus", default="0",
                    help="taskset CPU list of the servers (default 0; e.g. 0,1 for "
                    "server.workers=2, shared with the generator)")
    ap.add_argument("--gen-cpus", default="1", help="taskset CPU list of the generator")
    ap.add_argument("--redis-cpus", default=None,
                    help="taskset CPU list of redis-server (default: --server-cpus)")
    ap.add_argument("--redis-arg", action="append", default=[],
                    help="extra redis-server argument for CLUSTERS targets (repeatable, use =), "
                    "e.g. --redis-arg=--appendonly --redis-arg=yes")
    args = ap.parse_args()
    global SERVER_CORE, GEN_CORE, REDIS_CORE
    SERVER_CORE, GEN_CORE = args.server_cpus, args.gen_cpus
    REDIS_CORE = args.redis_cpus or args.server_cpus
    args.ramp_rooms = [int(x) for x in args.ramp_rooms.split(",")]
    args.ramp_senders = [int(x) for x in args.ramp_senders.split(",")]
    targets = ALL_TARGETS if args.all else args.target.split(",")
    scenarios = ALL_SCENARIOS if args.all else args.scenario.split(",")
    for t in targets:
        if parse_target(t)[0] not in TARGETS:
            raise SystemExit(f"unknown target {t!r}; one of {TARGETS}")
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit(f"unknown scenario {s!r}; one of {SCENARIOS}")
    if args.client == "c":
        if not GEN_C.exists():
            raise SystemExit("bench/.bin/loadgen missing: run bench/setup.sh")
    elif not GEN_PY.exists():
        raise SystemExit("bench/.venv missing: run bench/setup.sh")
    names = {parse_target(t)[0] for t in targets}
    if "cloudlink" in names and not CL_PY.exists():
        raise SystemExit("bench/.venv-cloudlink missing: run bench/setup.sh")
    if names & CLUSTERS.keys() and subprocess.run(["sh", "-c", "command -v redis-server"],
                                                  capture_output=True).returncode:
        raise SystemExit("redis-server missing: apt-get install redis-server")
    if "turbowarp" in names and not (TW_DIR / "node_modules").exists():
        raise SystemExit("bench/.turbowarp missing: run bench/setup.sh (needs node and npm)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    OUT.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.ref is None:
        args.ref = "relay" if "relay" in targets else "turbowarp"
    ref = args.ref if args.ref in targets and len(targets) > 1 else None
    info = machine_info(args.stratus or ROOT)
    report = [f"# run {stamp}", "", f"machine: {info}",
              f"command: python bench/run.py {' '.join(sys.argv[1:])}", ""]
    raw: dict = {"stamp": stamp, "argv": sys.argv[1:], "machine": info, "results": {}}
    for scenario in scenarios:
        if scenario in RAMPS:
            text, summary = ramp(scenario, targets, args, stamp)
            raw["results"][scenario] = summary
            report += [f"## {scenario}", "", text, ""]
            print("\n".join(report[-3:]), flush=True)
            continue
        by_target: dict[str, list[dict]] = {t: [] for t in targets}
        for rep in range(args.repeat):
            for target in targets:
                r = run_loadgen(target, scenario, args, args.loadgen_arg,
                                f"{stamp}-{scenario}-r{rep}")
                by_target[target].append(r)
                brief = {k: r.get(k) for k in ("delivered_per_s", "server_cpu_us_per_line",
                                               "p99_ms", "joins_per_s", "rss_per_conn_kb",
                                               "gen_cpu_pct", "other_cpu_pct", "error")
                         if r.get(k) is not None}
                print(f"  {scenario} {target} rep {rep + 1}: {brief}", file=sys.stderr,
                      flush=True)
        raw["results"][scenario] = by_target
        report += [f"## {scenario}", "", table(scenario, by_target, ref), ""]
        print("\n".join(report[-4:]), flush=True)
    (OUT / f"{stamp}.json").write_text(json.dumps(raw, indent=1))
    (OUT / f"{stamp}.md").write_text("\n".join(report) + "\n")
    print(f"\nraw results: {OUT / (stamp + '.json')}\nreport: {OUT / (stamp + '.md')}")


if __name__ == "__main__":
    main()
