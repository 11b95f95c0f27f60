"""Scratch-cloud load generator (one process, uvloop; picows or websockets client).

Runs ONE measurement against an already running server and prints one JSON object (the last line
of stdout). bench/run.py starts the servers, pins them and aggregates repetitions; run this
directly only to poke at a server by hand:

    bench/.venv/bin/python bench/loadgen.py --url ws://127.0.0.1:9080/ --scenario classroom \\
        --server-pid PID

Phases: connect + upgrade + handshake every client (bounded concurrency) -> per-room barrier
(member 0 sets "☁ sync"; wait until every other member has it, which proves the server has
processed every handshake) -> warmup (sending) -> measurement window (sending) -> stop sending
-> drain (until every receiver holds the last value of every variable, or --drain-timeout) ->
completeness check -> close.

Each client publishes its own variables ("☁ v<member>_<k>"): a single writer per variable keeps
"the last value sent" well defined (with several writers the server keeps whichever it handled
last, §7). A value is the per-variable sequence number ("0", "1", ...); the generator remembers
the send time of every (room, variable, seq), so freshness is measured at each receiver as the
time from a send to the receipt of that value or a newer one of the same variable.

Several nodes: `--url` given N times spreads every room over N servers (member m connects to
the (m mod N)-th URL), and the freshness of pairs whose writer and receiver are on different
nodes is also reported on its own (cross_node_p50_ms, cross_node_p99_ms). `--server-pid` takes
a comma list (CPU and RSS summed over them and their children); `--redis-pid` is measured apart
(redis_cpu_pct, redis_cpu_us_per_line) and left out of other_cpu_pct.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import resource
import sys
import time

# name -> dict of defaults; bench/run.py uses the same table
PRESETS: dict[str, dict] = {
    # 50 rooms x 10 clients; every client sets its own variable at 5 Hz
    "classroom": dict(rooms=50, clients=10, senders=10, rate=5.0, burst=1),
    # one room of 500 clients, 10 of them set their own variable at 10 Hz
    "bigroom": dict(rooms=1, clients=500, senders=10, rate=10.0, burst=1),
    # 20 rooms x 5 clients; once a second each client writes 20 distinct variables back-to-back
    "burst": dict(rooms=20, clients=5, senders=5, rate=1.0, burst=20),
    # the same bursts in 4 rooms of 50 (5 senders each): what a server does per line when a
    # burst has an audience, rather than per incoming message
    "burst50": dict(rooms=4, clients=50, senders=5, rate=1.0, burst=20),
    # handshaken idle connections (10 per room)
    "idle": dict(rooms=500, clients=10, senders=0, rate=0.0, burst=1),
    "idle10k": dict(rooms=1000, clients=10, senders=0, rate=0.0, burst=1),
}

RES = 20_000  # freshness histogram buckets per second (50 us)
HMAX = 20 * RES  # 20 s; later samples land in the last bucket
FIND = re.compile(rb'"name":"([^"\\]*(?:\\.[^"\\]*)*)","value":"?(-?[0-9]+)').findall
perf = time.perf_counter

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_cpu(pid: int) -> float:
    """utime+stime (s) of pid and its live children."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except OSError:
            pass
    return total


def pids_cpu(pids: list[int]) -> float:
    """utime+stime (s) of several processes and their children."""
    return sum(proc_cpu(pid) for pid in pids)


def proc_rss(pid: int) -> int:
    total = 0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                for c in f.read().split():
                    out.append(int(c))
                    out.extend(children(int(c)))
    except OSError:
        pass
    return out


def machine_cpu() -> tuple[float, float]:
    """(user+nice+system+steal, irq+softirq) core-seconds of the whole machine so far."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK, (v[5] + v[6]) / CLK_TCK


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def self_stime() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def pct(hist: list[int], q: float) -> float | None:
    n = sum(hist)
    if not n:
        return None
    want = q * n
    acc = 0
    for i, c in enumerate(hist):
        acc += c
        if acc >= want:
            return (i + 0.5) / RES * 1000.0  # ms, bucket midpoint
    return HMAX / RES * 1000.0


class Room:
    __slots__ = ("idx", "rid", "clients", "names", "keys", "send_t", "owner")

    def __init__(self, idx: int, rid: str) -> None:
        self.idx = idx
        self.rid = rid
        self.clients: list[Client] = []
        self.names: list[str] = []
        self.keys: dict[bytes, int] = {}  # name as it may appear on the wire -> var index
        self.send_t: list[list[float]] = []  # per var: send time of each seq
        self.owner: list[int] = []  # per var: member index of its writer

    def add_var(self, name: str, owner: int) -> int:
        vi = len(self.names)
        self.names.append(name)
        self.keys[name.encode()] = vi
        self.keys[json.dumps(name)[1:-1].encode()] = vi  # \u-escaped form (ujson, ensure_ascii)
        self.send_t.append([])
        self.owner.append(owner)
        return vi


class Client:
    __slots__ = ("room", "member", "user", "own", "last", "prefix", "tx", "close", "frag",
                 "closed_code", "closer")

    def __init__(self, room: Room, member: int) -> None:
        self.room = room
        self.member = member
        self.user = f"player{room.idx * 1000 + member}"
        self.own: list[int] = []
        self.last: list[int] = []
        self.prefix: dict[int, bytes] = {}
        self.tx = None  # callable(bytes): send one text frame
        self.closer = None
        self.frag: list[bytes] | None = None
        self.closed_code: int | None = None


class Gen:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.hist = [0] * (HMAX + 1)
        self.nodes = len(a.url)
        self.hist_cross = [0] * (HMAX + 1)  # pairs whose writer is on another node
        self.lag = [0] * (HMAX + 1)
        self.w0 = float("inf")  # sends at or after w0 give freshness samples
        self.lines = 0  # delivered lines (receiver != writer)
        self.echo = 0  # lines about a receiver's own variable (CloudLink echoes)
        self.stale = 0  # lines not newer than what the receiver had
        self.unknown = 0  # lines whose name we do not know
        self.frames = 0
        self.sends = 0
        self.closes: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.rooms: list[Room] = []
        self.clients: list[Client] = []

    # ---------------------------------------------------------------- receive path
    def on_data(self, c: Client, data: bytes) -> None:
        now = perf()
        self.frames += 1
        room = c.room
        keys = room.keys
        last = c.last
        own = c.own
        hist = self.hist
        w0 = self.w0
        nodes = self.nodes
        node = c.member % nodes
        m = FIND(data)
        if len(m) != data.count(b"\n") + 1:
            m = self.slow_parse(data)
        n = 0
        for name, val in m:
            vi = keys.get(name)
            if vi is None:
                self.unknown += 1
                continue
            if vi in own:
                self.echo += 1
                continue
            n += 1
            seq = int(val)
            prev = last[vi]
            if seq <= prev:
                self.stale += 1
                continue
            last[vi] = seq
            st = room.send_t[vi]
            cross = nodes > 1 and room.owner[vi] % nodes != node
            for s in range(prev + 1, seq + 1):
                t = st[s]
                if t >= w0:
                    d = int((now - t) * RES)
                    hist[d if d < HMAX else HMAX] += 1
                    if cross:
                        self.hist_cross[d if d < HMAX else HMAX] += 1
        self.lines += n

    def slow_parse(self, data: bytes) -> list[tuple[bytes, bytes]]:
        out = []
        for line in data.split(b"\n"):
            try:
                msg = json.loads(line)
            except ValueError:
                self.errors["non-json line"] = self.errors.get("non-json line", 0) + 1
                continue
            if not isinstance(msg, dict) or msg.get("method") != "set":
                continue
            name, val = msg.get("name"), msg.get("value")
            if isinstance(name, str) and isinstance(val, str | int) and str(val).isascii():
                out.append((name.encode(), str(val).encode()))
        return out

    def on_close(self, c: Client, code: int) -> None:
        if c.closed_code is None:
            c.closed_code = code
            self.closes[str(code)] = self.closes.get(str(code), 0) + 1

    # ---------------------------------------------------------------- send path
    def send(self, c: Client, vi: int) -> None:
        st = c.room.send_t[vi]
        seq = len(st)
        st.append(perf())
        c.tx(c.prefix[vi] + str(seq).encode() + b'"}\n')
        self.sends += 1

    # ---------------------------------------------------------------- connections
    def setup(self) -> None:
        a = self.a
        run = a.run_id
        for r in range(a.rooms):
            room = Room(r, f"bench-{run}-{r}")
            room.add_var("☁ sync", 0)
            for m in range(a.clients):
                c = Client(room, m)
                room.clients.append(c)
                self.clients.append(c)
                if m < a.senders:
                    for k in range(a.burst):
                        c.own.append(room.add_var(f"☁ v{m}_{k}", m))
            room.clients[0].own.append(0)
            for c in room.clients:
                c.own = frozenset(c.own)
                c.last = [-1] * len(room.names)
                pid = json.dumps(room.rid, ensure_ascii=False)
                for vi in c.own:
                    nm = json.dumps(room.names[vi], ensure_ascii=False)
                    # TurboWarp GUI message shape: method, user, project_id, name, value + "\n"
                    c.prefix[vi] = (
                        f'{{"method":"set","user":"{c.user}","project_id":{pid},'
                        f'"name":{nm},"value":"'
                    ).encode()
            self.rooms.append(room)

    async def connect_all(self) -> float:
        a = self.a
        sem = asyncio.Semaphore(a.concurrency)
        connect = self.connect_picows if a.client == "picows" else self.connect_websockets

        async def one(c: Client) -> None:
            async with sem:
                for attempt in range(3):
                    try:
                        await connect(c)
                        break
                    except Exception as e:  # noqa: BLE001
                        k = f"connect: {type(e).__name__}: {e}"[:120]
                        self.errors[k] = self.errors.get(k, 0) + 1
                        if attempt == 2:
                            return
                        await asyncio.sleep(0.2)
                pid = json.dumps(c.room.rid, ensure_ascii=False)
                c.tx(f'{{"method":"handshake","user":"{c.user}","project_id":{pid}}}\n'.encode())

        t0 = perf()
        await asyncio.gather(*(one(c) for c in self.clients))
        return perf() - t0

    async def connect_picows(self, c: Client) -> None:
        from picows import WSCloseCode, WSListener, WSMsgType, ws_connect

        gen = self
        TEXT, CONT, CLOSE = WSMsgType.TEXT, WSMsgType.CONTINUATION, WSMsgType.CLOSE

        class L(WSListener):
            def on_ws_frame(self, t, frame):  # noqa: ANN001
                mt = frame.msg_type
                if mt is TEXT:
                    if frame.fin:
                        gen.on_data(c, frame.get_payload_as_bytes())
                    else:
                        c.frag = [frame.get_payload_as_bytes()]
                elif mt is CONT and c.frag is not None:
                    c.frag.append(frame.get_payload_as_bytes())
                    if frame.fin:
                        data = b"".join(c.frag)
                        c.frag = None
                        gen.on_data(c, data)
                elif mt is CLOSE:
                    code = frame.get_close_code()
                    gen.on_close(c, int(getattr(code, "value", code)))
                    t.send_close(code)
                    t.disconnect()

            def on_ws_disconnected(self, t):  # noqa: ANN001
                gen.on_close(c, 1006)

        t, _ = await ws_connect(
            L,
            self.url_of(c),
            extra_headers={"User-Agent": "stratus-bench/1.0"},
            websocket_handshake_timeout=30,
            max_frame_size=16 * 1024 * 1024,
        )
        send = t.send

        def tx(b: bytes) -> None:
            send(TEXT, b)

        def closer() -> None:
            if not t.is_disconnected:
                t.send_close(WSCloseCode.OK)
                t.disconnect()

        c.tx = tx
        c.closer = closer

    async def connect_websockets(self, c: Client) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        ws = await connect(
            self.url_of(c),
            compression=None,
            max_size=None,
            ping_interval=None,
            open_timeout=30,
            user_agent_header="stratus-bench/1.0",
        )
        proto = ws.protocol

        def tx(b: bytes) -> None:
            proto.send_text(b)
            ws.send_data()

        async def reader() -> None:
            try:
                while True:
                    self.on_data(c, await ws.recv(decode=False))
            except ConnectionClosed:
                code = ws.close_code
                self.on_close(c, 1006 if code is None else code)

        task = asyncio.ensure_future(reader())

        def closer() -> None:
            task.cancel()
            ws.transport.abort()

        c.tx = tx
        c.closer = closer

    def url_of(self, c: Client) -> str:
        """The node a client connects to: member m of every room to the (m mod N)-th URL."""
        return self.a.url[c.member % self.nodes]

    async def barrier(self, timeout: float) -> float:
        t0 = perf()
        rooms = [r for r in self.rooms if len(r.clients) > 1]
        for r in rooms:
            if r.clients[0].tx is not None:
                self.send(r.clients[0], 0)
        deadline = t0 + timeout
        while perf() < deadline:
            pending = 0
            for r in rooms:
                want = len(r.send_t[0]) - 1
                for c in r.clients[1:]:
                    if c.last[0] < want and c.closed_code is None and c.tx is not None:
                        pending += 1
            if not pending:
                return perf() - t0
            await asyncio.sleep(0.005)
        self.errors["barrier timeout"] = pending
        return perf() - t0

    # ---------------------------------------------------------------- sending schedule
    async def drive(self, t_start: float, t_stop: float) -> None:
        """Fire every sender at its rate until t_stop.

        Phases are random (seeded) by default, like real clients that start whenever their
        users press the green flag; `--phases even` spreads them evenly instead, which puts
        a room's senders exactly period/senders apart: the worst case for batching.
        """
        a = self.a
        senders = [c for c in self.clients if c.member < a.senders and c.tx is not None]
        if not senders or a.rate <= 0:
            await asyncio.sleep(max(0.0, t_stop - perf()))
            return
        period = 1.0 / a.rate
        n = len(senders)
        # interleave rooms so consecutive sends hit different rooms
        senders.sort(key=lambda c: (c.member, c.room.idx))
        if a.phases == "even":
            phase = [period * i / n for i in range(n)]
        else:
            # Each sender draws its own phase; the schedule walks senders in phase order.
            rng = random.Random(a.seed)
            drawn = sorted((rng.uniform(0.0, period), j) for j in range(n))
            senders = [senders[j] for _, j in drawn]
            phase = [p for p, _ in drawn]
        vis = [sorted(c.own - {0}) for c in senders]
        i = 0
        k = 0
        lag = self.lag
        send = self.send
        tick = a.tick
        due = t_start + phase[0]
        woke = perf()
        while True:
            now = perf()
            if now >= t_stop:
                return
            # loop lag: how late this tick woke up (a busy generator shows here)
            d = int(max(0.0, now - woke) * RES)
            lag[d if d < HMAX else HMAX] += 1
            while due <= now:
                c = senders[i]
                if c.closed_code is None:
                    for vi in vis[i]:
                        send(c, vi)
                i += 1
                if i == n:
                    i = 0
                    k += 1
                due = t_start + k * period + phase[i]
            # fixed ticks: asyncio.sleep() of less than the loop's clock resolution would spin
            woke = perf() + tick
            await asyncio.sleep(tick)

    def incomplete(self) -> tuple[int, int]:
        bad = total = 0
        for r in self.rooms:
            finals = [len(st) - 1 for st in r.send_t]
            for c in r.clients:
                if c.tx is None or c.closed_code is not None:
                    continue
                last = c.last
                for vi, f in enumerate(finals):
                    if f < 0 or vi in c.own:
                        continue
                    total += 1
                    if last[vi] != f:
                        bad += 1
        return bad, total

    # ---------------------------------------------------------------- main
    async def run(self) -> dict:
        a = self.a
        spid = a.server_pid
        spids = a.server_pids
        rpid = a.redis_pid
        self.setup()
        gc.collect()
        gc.disable()
        res: dict = {"scenario": a.scenario, "client": a.client, "params": {
            k: getattr(a, k) for k in ("rooms", "clients", "senders", "rate", "burst",
                                       "warmup", "duration")}}
        res["n_clients"] = len(self.clients)
        rss0 = sum(proc_rss(p) for p in spids) if spid else None
        cpu_j0 = pids_cpu(spids)
        rcpu_j0 = proc_cpu(rpid) if rpid else 0.0
        t_j0, m_j0, g_j0 = perf(), machine_cpu()[0], self_cpu()
        join_t = await self.connect_all()
        connected = sum(1 for c in self.clients if c.tx is not None)
        bar_t = await self.barrier(a.barrier_timeout)
        cpu_j1 = pids_cpu(spids)
        res["connected"] = connected
        res["join_s"] = round(join_t, 3)
        res["barrier_s"] = round(bar_t, 3)
        res["joins_per_s"] = round(connected / (join_t + bar_t), 1)
        if spid:
            res["server_cpu_us_per_join"] = round((cpu_j1 - cpu_j0) / max(1, connected) * 1e6, 1)
        if a.senders == 0 or a.rate <= 0:
            await asyncio.sleep(a.settle)
            rss1 = sum(proc_rss(p) for p in spids) if spid else None
            if spid:
                res["server_rss_before_mb"] = round(rss0 / 2**20, 1)
                res["server_rss_after_mb"] = round(rss1 / 2**20, 1)
                res["rss_per_conn_kb"] = round((rss1 - rss0) / max(1, connected) / 1024, 2)
            el = perf() - t_j0
            gcpu = self_cpu() - g_j0
            other = (machine_cpu()[0] - m_j0 - gcpu - (pids_cpu(spids) - cpu_j0)
                     - ((proc_cpu(rpid) - rcpu_j0) if rpid else 0.0))
            res["gen_cpu_pct"] = round(100 * gcpu / el, 1)
            res["other_cpu_pct"] = round(100 * max(0.0, other) / el, 1)
            res["closes"] = dict(self.closes)
            res["errors"] = dict(self.errors)
            await self.close_all()
            return res

        t_start = perf()
        t_w0 = t_start + a.warmup
        t_w1 = t_w0 + a.duration
        loop = asyncio.get_running_loop()
        snap: dict = {}

        def mark0() -> None:
            self.w0 = perf()
            snap.update(t=self.w0, lines=self.lines, sends=self.sends, frames=self.frames,
                        gcpu=self_cpu(), gsys=self_stime(), scpu=pids_cpu(spids),
                        rcpu=proc_cpu(rpid) if rpid else 0.0, mcpu=machine_cpu())
            self.lag[:] = [0] * len(self.lag)

        def mark1() -> None:
            t = perf()
            snap.update(t1=t, lines1=self.lines, sends1=self.sends, frames1=self.frames,
                        gcpu1=self_cpu(), gsys1=self_stime(), scpu1=pids_cpu(spids),
                        rcpu1=proc_cpu(rpid) if rpid else 0.0, mcpu1=machine_cpu())

        loop.call_at(loop.time() + (t_w0 - perf()), mark0)
        loop.call_at(loop.time() + (t_w1 - perf()), mark1)
        await self.drive(t_start, t_w1)
        while "t1" not in snap:
            await asyncio.sleep(0.001)
        # drain: wait until every receiver has the final values
        t_d = perf()
        while perf() - t_d < a.drain_timeout:
            bad, total = self.incomplete()
            if not bad:
                break
            await asyncio.sleep(0.02)
        bad, total = self.incomplete()
        win = snap["t1"] - snap["t"]
        lines = snap["lines1"] - snap["lines"]
        sends = snap["sends1"] - snap["sends"]
        scpu = snap["scpu1"] - snap["scpu"]
        gcpu = snap["gcpu1"] - snap["gcpu"]
        rcpu = snap["rcpu1"] - snap["rcpu"]
        nrecv = a.clients - 1
        busy = snap["mcpu1"][0] - snap["mcpu"][0]
        irq = snap["mcpu1"][1] - snap["mcpu"][1]
        res.update(
            window_s=round(win, 3),
            offered_sets_per_s=round(sends / win, 1),
            expected_lines_per_s=round(sends * nrecv / win, 1),
            delivered_per_s=round(lines / win, 1),
            frames_per_s=round((snap["frames1"] - snap["frames"]) / win, 1),
            lines_per_frame=round(lines / max(1, snap["frames1"] - snap["frames"]), 2),
            p50_ms=pct(self.hist, 0.50),
            p99_ms=pct(self.hist, 0.99),
            p999_ms=pct(self.hist, 0.999),
            max_ms=_hmax(self.hist),
            **({"nodes": self.nodes, "cross_node_p50_ms": pct(self.hist_cross, 0.50),
                "cross_node_p99_ms": pct(self.hist_cross, 0.99),
                "cross_node_samples": sum(self.hist_cross)} if self.nodes > 1 else {}),
            fresh_samples=sum(self.hist),
            incomplete=bad,
            checked_pairs=total,
            drain_s=round(perf() - t_d, 3),
            tick_lag_p99_ms=pct(self.lag, 0.99),
            gen_cpu_pct=round(100 * gcpu / win, 1),
            gen_sys_pct=round(100 * (snap["gsys1"] - snap["gsys"]) / win, 1),
            gen_cpu_us_per_line=round(gcpu / max(1, lines) * 1e6, 2),
            # CPU used by anything but server and generator (other people's work on this box)
            other_cpu_pct=round(100 * max(0.0, busy - gcpu - scpu - rcpu) / win, 1),
            softirq_cpu_pct=round(100 * irq / win, 1),
            echo_lines=self.echo,
            stale_lines=self.stale,
            unknown_lines=self.unknown,
            closes=dict(self.closes),
            errors=dict(self.errors),
        )
        if spid:
            res.update(
                server_cpu_pct=round(100 * scpu / win, 1),
                server_cpu_us_per_line=round(scpu / max(1, lines) * 1e6, 2),
                server_rss_mb=round(sum(proc_rss(p) for p in spids) / 2**20, 1),
            )
        if rpid:
            res.update(redis_cpu_pct=round(100 * rcpu / win, 1),
                       redis_cpu_us_per_line=round(rcpu / max(1, lines) * 1e6, 2))
        await self.close_all()
        return res

    async def close_all(self) -> None:
        for c in self.clients:
            if c.closer is not None:
                try:
                    c.closer()
                except Exception:  # noqa: BLE001, S110
                    pass
        await asyncio.sleep(0.2)


def _hmax(hist: list[int]) -> float | None:
    for i in range(len(hist) - 1, -1, -1):
        if hist[i]:
            return (i + 1) / RES * 1000.0
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", required=True, action="append",
                    help="a server; give it N times to spread every room over N nodes")
    ap.add_argument("--scenario", default="classroom", choices=sorted(PRESETS))
    ap.add_argument("--server-pid", default="0",
                    help="for CPU and RSS (from /proc): a pid or a comma list, summed")
    ap.add_argument("--redis-pid", type=int, default=0, help="Redis's CPU, reported apart")
    ap.add_argument("--client", default="picows", choices=["picows", "websockets"])
    for k in ("rooms", "clients", "senders", "burst"):
        ap.add_argument(f"--{k}", type=int)
    ap.add_argument("--rate", type=float, help="sends (bursts) per second per sender")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=2.0, help="idle: wait before reading RSS")
    ap.add_argument("--drain-timeout", type=float, default=5.0)
    ap.add_argument("--barrier-timeout", type=float, default=30.0)
    ap.add_argument("--tick", type=float, default=0.002, help="send-schedule tick (s)")
    ap.add_argument("--phases", choices=["random", "even"], default="random",
                    help="senders' phases: random (seeded, realistic) or evenly staggered")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random phases")
    ap.add_argument("--concurrency", type=int, default=64, help="connects in flight")
    ap.add_argument("--run-id", default=None)
    a = ap.parse_args(argv)
    a.server_pids = [int(p) for p in a.server_pid.split(",") if int(p)]
    a.server_pid = a.server_pids[0] if a.server_pids else 0
    for k, v in PRESETS[a.scenario].items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.senders = min(a.senders, a.clients)
    a.run_id = a.run_id or f"{os.getpid()}-{int(time.time())}"
    # hard bounds: every loop in here ends
    a.duration = min(a.duration, 300.0)
    a.warmup = min(a.warmup, 60.0)
    return a


def main() -> None:
    a = parse_args()
    import uvloop

    try:
        res = uvloop.run(asyncio.wait_for(Gen(a).run(), timeout=a.warmup + a.duration + 300))
    except TimeoutError:
        res = {"error": "generator timed out"}
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()
    os._exit(0)  # skip slow teardown of thousands of transports


if __name__ == "__main__":
    main()
