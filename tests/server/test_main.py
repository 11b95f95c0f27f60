"""The command line's health check (`python -m server healthcheck`, the container's
HEALTHCHECK) against real servers, plain and TLS (see test_tls.py for the latter)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, ServerProcess, free_port, write_toml


def healthcheck(config) -> subprocess.CompletedProcess:
    """Run `python -m server healthcheck --config CONFIG` to completion."""
    return subprocess.run([sys.executable, "-m", "server", "healthcheck", "--config",
                           str(config), "--timeout", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_healthy_server_passes(tmp_path):
    """A running server passes its health check (same config file: same port)."""
    proc = ServerProcess(tmp_path).start()
    try:
        done = healthcheck(proc.config_path)
    finally:
        proc.stop()
    assert done.returncode == 0, done.stderr


def test_no_server_fails_with_the_reason(tmp_path):
    """With nothing listening the check exits 1 and says where it looked."""
    port = free_port()
    config = tmp_path / "config.toml"
    write_toml(config, {"server": {"port": port}})
    done = healthcheck(config)
    assert done.returncode == 1
    assert f"127.0.0.1 port {port}" in done.stderr


def test_broken_config_fails(tmp_path):
    """A config the server would refuse fails the check with the configuration error."""
    config = tmp_path / "config.toml"
    config.write_text("[server]\nbogus = 1\n")
    done = healthcheck(config)
    assert done.returncode == 1 and "bogus" in done.stderr
