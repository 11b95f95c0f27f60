#!/usr/bin/env bash
# perf profile of one server during a classroom run (not part of run.py; see RESULTS.md).
#   bench/experiments/profile.sh stratus DIR [TABLE.KEY=VALUE ...]   # python -m server in DIR
#   bench/experiments/profile.sh turbowarp                           # bench/.turbowarp
# Server on core 0, bench/.bin/loadgen on core 1 (classroom, 3 s warmup + 20 s window),
# `perf record -g` on the server pid for 10 s of the window; reports in bench/out/perf-*.txt.
set -eu
cd "$(dirname "$0")/.."
what=$1; shift
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
stamp=$(date +%Y%m%d-%H%M%S)
out=out/perf-$stamp-$what
mkdir -p out
if [ "$what" = turbowarp ]; then
    NODE_ENV=production taskset -c 0 node turbowarp_server.js .turbowarp "$port" 1000 \
        >"$out.log" 2>&1 &
else
    dir=$(realpath "$1"); shift
    cfg=$(mktemp --suffix=.toml)
    python3 -c 'import sys; from pathlib import Path; sys.path.insert(0, "."); import run
run.stratus_config(Path(sys.argv[1]), int(sys.argv[2]), Path("/tmp/unused"), "memory", sys.argv[3:])' \
        "$cfg" "$port" "$@"
    (cd "$dir" && exec taskset -c 0 python3 -m server --config "$cfg") >"$out.log" 2>&1 &
fi
pid=$!
sleep 2
taskset -c 1 .bin/loadgen --url "ws://127.0.0.1:$port/" --scenario classroom --server-pid "$pid" \
    --warmup 3 --duration 20 >"$out.json" &
gen=$!
sleep 8
if [ -n "${PYSPY:-}" ]; then  # PYSPY=path/to/py-spy: Python stacks instead (collapsed)
    "$PYSPY" record --nonblocking -r 250 -d 10 -f raw -o "$out.pyspy" -p "$pid" >/dev/null 2>&1
    wait "$gen"; kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$out.pyspy"; exit 0
fi
perf record -F 1999 -g -p "$pid" -o "$out.data" -- sleep 10 2>/dev/null
wait "$gen"
kill "$pid"; wait "$pid" 2>/dev/null || true
r() { perf report -i "$out.data" --stdio -g none "$@" 2>/dev/null | grep -v '^#' | grep -v '^$'; }
r --no-children --sort dso >"$out-dso.txt" || true
r --no-children --sort dso,sym | head -60 >"$out-sym.txt" || true
# inclusive shares of the kernel paths: write/send (with the receiver's loopback RX in softirq),
# read, epoll, netfilter
k='do_syscall_64|ksys_write|tcp_sendmsg$|do_softirq|net_rx_action|tcp_v4_rcv|nf_hook_slow'
k="$k|nf_conntrack_in|ksys_read|tcp_recvmsg$|do_epoll_wait|schedule$|sock_def_readable|writev"
r --children --sort sym | grep -E "$k" >"$out-children.txt" || true
python3 -c 'import json, sys; d = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print({k: d.get(k) for k in ("delivered_per_s", "server_cpu_pct", "server_cpu_us_per_line",
       "p50_ms", "p99_ms", "lines_per_frame", "frames_per_s", "other_cpu_pct")})' "$out.json"
echo "$out-dso.txt $out-sym.txt $out-children.txt"
