#!/usr/bin/env bash
# Create the benchmark's virtualenvs (idempotent). Needs python3.11+ with venv, and PyPI.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/pip install -q -r requirements.txt
if [ ! -x .venv-cloudlink/bin/python ]; then "$PY" -m venv .venv-cloudlink; fi
.venv-cloudlink/bin/pip install -q -r requirements-cloudlink.txt
echo "bench venvs ready: bench/.venv (generator), bench/.venv-cloudlink (CloudLink target)"
