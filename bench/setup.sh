#!/usr/bin/env bash
# Create the benchmark's virtualenvs, build the C generator and check out TurboWarp's
# cloud-server (idempotent). Needs python3.11+ with venv, PyPI, gcc (installed with apt-get when
# missing), git, and node + npm for the turbowarp target (skipped with a note when missing).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if ! command -v gcc >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq gcc libc6-dev
fi
mkdir -p .bin
if [ ! -x .bin/loadgen ] || [ cgen/loadgen.c -nt .bin/loadgen ]; then
    gcc -O2 -Wall -Wextra -std=c11 -o .bin/loadgen cgen/loadgen.c
fi
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q -r requirements.txt
if [ ! -x .venv-cloudlink/bin/python ]; then "$PY" -m venv .venv-cloudlink; fi
.venv-cloudlink/bin/pip install -q -r requirements-cloudlink.txt
# TurboWarp's cloud-server, pinned (not on npm): bench/.turbowarp, run by bench/turbowarp_server.js.
# TURBOWARP_REPO may name a local clone or bare mirror to fetch the commit from instead.
TW_COMMIT=a0b29ec472fd7669ea814a802369b0e358c6a99f  # 2025-06-04, "Update GitHub Actions workflows"
TW_REPO=${TURBOWARP_REPO:-https://github.com/TurboWarp/cloud-server}
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "node/npm missing: the turbowarp target is not set up" >&2
elif [ "$(cat .turbowarp/.commit 2>/dev/null)" != "$TW_COMMIT" ] \
        || [ ! -d .turbowarp/node_modules/ws ]; then
    tmp=$(mktemp -d)
    git init -q --bare "$tmp/git"
    git --git-dir="$tmp/git" fetch -q --depth 1 "$TW_REPO" "$TW_COMMIT"
    rm -rf .turbowarp && mkdir .turbowarp
    git --git-dir="$tmp/git" archive "$TW_COMMIT" | tar -x -C .turbowarp
    rm -rf "$tmp"
    # exact versions from its package-lock.json; ws's optional native helpers (bufferutil,
    # utf-8-validate) load their bundled linux-x64 prebuilds, no compiler needed
    (cd .turbowarp && npm ci --omit=dev --no-audit --no-fund --loglevel=error)
    echo "$TW_COMMIT" > .turbowarp/.commit
fi
echo "bench ready: bench/.venv (generator), bench/.venv-cloudlink (CloudLink target)," \
    "bench/.bin/loadgen (C generator, --client c), bench/.turbowarp (TurboWarp cloud-server)"
