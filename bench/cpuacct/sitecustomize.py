"""Per-callback CPU accounting for a `python -m server` under load (a benchmark aid, not a
profiler): which part of the server spends the CPU, in thread CPU time, exactly.

Sampling profilers mislead on this load: py-spy counts wall-clock samples, so a line that
wakes another process on the same core (a socket write) collects the time it then waits
preempted, and perf cannot see Python frames on Python 3.11. This module wraps the entry
points of the server's work (client input, room flushes, the Redis link's reads and writes)
and sums `time.thread_time_ns()` around each call, nested ones included (a nested entry's time
is part of its caller's), and the time the garbage collector takes. It is loaded through
`PYTHONPATH`, as a bench target variant:

    python bench/run.py --scenario classroom --repeat 1 \
        --target 'stratus+PYTHONPATH=bench/cpuacct,stratus-2node+PYTHONPATH=bench/cpuacct'

Each server process writes `bench/out/cpuacct/<pid>.txt` when it exits. Each wrapped call
costs about 1 µs more (two clock reads), so compare the breakdowns, not the totals, with
unwrapped runs.
"""

from __future__ import annotations

import atexit
import collections
import gc
import os
import sys
import time
from pathlib import Path

# (module, class, method, label); a label's indentation shows what it is nested in.
ENTRY_POINTS = [
    ("server.connection", "Connection", "data_received", "client input"),
    ("protocols.scratch.engine", "ScratchSession", "receive", "  Scratch message"),
    ("server.rooms", "Room", "set", "    room set"),
    ("server.cluster.redis_rooms", "RedisBackplane", "publish", "      backplane publish"),
    ("server.fanout", "Fanout", "deliver", "        fan-out deliver"),
    ("server.fanout", "RoomOutbound", "flush", "room flush"),
    ("server.cluster.resp", "RespConnection", "data_received", "Redis input"),
    ("server.cluster.redis_link", "RedisCluster", "_pushed", "  pub/sub message"),
    ("server.cluster.redis_rooms", "RedisBackplane", "_received", "    room change"),
    ("server.cluster.redis_link", "RedisCluster", "_batch_done", "  batch replies"),
    ("server.cluster.redis_link", "RedisCluster", "_flush", "Redis writer"),
    ("server.cluster.redis_rooms", "RedisBackplane", "drain", "  backplane drain"),
]


def install(out_dir: Path) -> None:
    """Wrap every entry point that exists in this checkout; write the sums at exit."""
    import importlib

    clock = time.thread_time_ns
    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for module_name, class_name, method, label in ENTRY_POINTS:
        try:
            owner = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue  # an older checkout, or the local backend only
        original = getattr(owner, method)

        def wrapper(*args, _original=original, _label=label, **kwargs):
            started = clock()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_label] += clock() - started
                calls[_label] += 1

        setattr(owner, method, wrapper)
    collecting = [0]

    def garbage_collection(phase: str, info: dict) -> None:
        if phase == "start":
            collecting[0] = clock()
        else:
            label = f"garbage collection, gen {info['generation']}"
            spent[label] += clock() - collecting[0]
            calls[label] += 1

    gc.callbacks.append(garbage_collection)
    started = clock()

    def report() -> None:
        total = clock() - started
        times = os.times()
        out_dir.mkdir(parents=True, exist_ok=True)
        lines = [f"thread CPU {total / 1e6:.0f} ms (process user {times.user:.2f} s, "
                 f"system {times.system:.2f} s)"]
        labels = [entry[3] for entry in ENTRY_POINTS]
        labels += sorted(label for label in calls if label.startswith("garbage"))
        for label in labels:
            if calls[label]:
                lines.append(f"{label:28s} {spent[label] / 1e6:9.1f} ms {calls[label]:9d} calls "
                             f"{spent[label] / calls[label] / 1e3:7.2f} µs/call")
        (out_dir / f"{os.getpid()}.txt").write_text("\n".join(lines) + "\n")

    atexit.register(report)


if sys.orig_argv[1:3] == ["-m", "server"]:
    # `python -m server` puts its directory on sys.path only after site runs.
    sys.path.insert(0, os.getcwd())
    install(Path(os.getcwd()) / "bench" / "out" / "cpuacct")
