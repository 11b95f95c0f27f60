#!/usr/bin/env bash
# Create the benchmark's virtualenvs and build the C generator (idempotent). Needs python3.11+
# with venv, PyPI, and gcc (installed with apt-get when missing).
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
echo "bench ready: bench/.venv (generator), bench/.venv-cloudlink (CloudLink target)," \
    "bench/.bin/loadgen (C generator, --client c)"
