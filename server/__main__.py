"""The composition root and command line.

`python -m server [--config FILE] [--host H] [--port P] [--log-level L] [--redis URL]
[--workers N]` runs the server (with N > 1, as N supervised worker processes on one port: see
server/supervisor.py);
`python -m server keygen --scheme ec|rsa --out PATH [--force]` creates a sprite-handshake key;
`python -m server healthcheck [--config FILE]` asks the server that config describes for
/healthz (plain or TLS) and exits 0 if it is healthy (the container's HEALTHCHECK).
`python -m server migrate-store --to redis://...` copies the SQLite store into Redis.

This is the one module that wires concrete protocols, the bridge, the operator surfaces
(`ops`) and plugins to the core (`build_server`) and declares their config tables
(`CONFIG_TABLES`): the core (`server.*`) imports no protocol, plugin or `ops` module, and
protocols import no plugin.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from ops.admin import AdminApi, AdminSection, Counters
from ops.dashboard import Dashboard
from ops.history import HistoryApi
from ops.metrics import Metrics
from ops.public import PublicVariables
from plugins.sprites import keygen
from protocols.bridge import Bridge, BridgeSection
from protocols.cl4 import Cl4Options
from protocols.cl4.endpoint import Cl4Protocol
from protocols.scratch import ScratchProtocol, ScratchSection

from . import __version__
from .app import Server, serve
from .backplane import Cluster
from .cluster import migrate
from .config import Config, ConfigError, new_config
from .config import load_config as load_core_config
from .logformat import configure_logging
from .plugins import import_object
from .store import StoreError
from .supervisor import Supervisor, WorkerLink

# The protocols' and operator surfaces' tables of config.toml.
CONFIG_TABLES: dict[str, type] = {
    "admin": AdminSection,
    "scratch": ScratchSection,
    "cl4": Cl4Options,
    "bridge": BridgeSection,
}


def default_config() -> Config:
    """Built-in defaults for every table (the core's and the protocols')."""
    return new_config(CONFIG_TABLES)


def load_config(path=None, env=None, overrides=None) -> Config:
    """`server.config.load_config` with the protocols' tables declared."""
    return load_core_config(path, env, overrides, CONFIG_TABLES)


# Cluster engines by [cluster] backend name; any other value is a "module:Attr" name. Each is
# a class called with the [cluster] table (imported only when chosen: `redis` is needed only
# by the Redis engine).
CLUSTERS = {
    "local": "server.backplane:LocalCluster",
    "redis": "server.cluster.redis_link:RedisCluster",
}


def cluster_engine(backend: str) -> Callable[..., Cluster]:
    """The cluster engine class that [cluster] backend names (ValueError naming the key)."""
    try:
        return import_object(CLUSTERS.get(backend, backend))
    except ValueError as exc:
        raise ValueError(f"[cluster] backend: {exc}") from None


def build_server(config: Config) -> Server:
    """A server with both protocols (CL4 is offered the first message first; Scratch takes
    the rest), the bridge between them when [bridge] enabled, the admin API (with an [admin]
    token), the live dashboard at "/" ([http] dashboard), the public read API ([http]
    public_variables), Scratch's GET /logs when [history] enabled, Prometheus metrics at
    /metrics when [http] metrics, and the [cluster] engine."""
    cl4 = Cl4Protocol(config.cl4)
    scratch = ScratchProtocol(config.scratch)
    components: list = [cl4, scratch]
    if config.bridge.enabled:
        components.append(Bridge(config.bridge, scratch, cl4))
    # One set of traffic counters for the admin API's stats and the dashboard.
    counters = Counters()
    components.append(AdminApi(config.admin, counters=counters))
    components.append(Dashboard(config.http, config.server.status_page, counters))
    components.append(PublicVariables(config.http.public_variables))
    components.append(HistoryApi(config.history, scratch))
    if config.http.metrics:
        components.append(Metrics())
    cluster = cluster_engine(config.cluster.backend)(config.cluster)
    return Server(config, components, cluster)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Stratus cloud-variable server for Scratch/TurboWarp projects.",
        epilog="Sprite handshake keys: python -m server keygen --help. Health check: "
               "python -m server healthcheck --help",
    )
    parser.add_argument("--config", help="TOML config file (see config.toml for every key); "
                        "default: config.toml in the working directory, if there is one")
    parser.add_argument("--host", help="address to listen on (overrides config and HOST)")
    parser.add_argument("--port", type=int, help="port to listen on (overrides config and PORT)")
    parser.add_argument("--redis", metavar="URL",
                        help="serve rooms from Redis at URL, with every other node using it "
                        "(sets [cluster] redis_url and backend = \"redis\"; or "
                        "STRATUS_REDIS_URL)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="log verbosity (overrides config)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="server processes sharing the port, supervised by this one "
                        "(overrides [server] workers; more than 1 needs a [cluster] backend "
                        "that shares rooms, e.g. --redis URL)")
    parser.add_argument("--version", action="version", version=f"Stratus {__version__}")
    return parser


def event_loop_factory(choice: str):
    """The event loop to run on: uvloop when installed (or required), else asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("[server] event_loop = uvloop, but uvloop is not installed") from None
        return None
    return uvloop.new_event_loop


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: every client holds a socket."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def config_file(explicit: str | None) -> tuple[Path | None, str]:
    """The config file to load and how start-up should describe it.

    Without --config, ./config.toml is used when it exists, so "edit config.toml and restart"
    works from the directory the server runs in (the repository's own copy holds the defaults).
    """
    if explicit is not None:
        return Path(explicit), f"{explicit} (--config)"
    local = Path.cwd() / "config.toml"
    if local.is_file():
        return local, f"{local} (config.toml in the working directory)"
    return None, "built-in defaults (no --config, no config.toml in the working directory)"


# Where a health check connects when the server listens on every interface.
LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def healthcheck(argv: list[str]) -> int:
    """`python -m server healthcheck`: 0 if GET /healthz answers 200, else 1 (the reason on
    stderr). The port, address and TLS come from the same config, environment and defaults
    the server reads; the certificate is not verified (the check is about this process)."""
    parser = argparse.ArgumentParser(prog="python -m server healthcheck",
                                     description="Exit 0 if the configured server is healthy.")
    parser.add_argument("--config", help="the server's TOML config file (as for the server)")
    parser.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    args = parser.parse_args(argv)
    path, _ = config_file(args.config)
    try:
        section = load_config(path).server
    except ConfigError as exc:
        print(f"stratus healthcheck: configuration error: {exc}", file=sys.stderr)
        return 1
    host = LOOPBACK.get(section.host, section.host)
    if section.tls_cert:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, section.port, timeout=args.timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, section.port, timeout=args.timeout)
    try:
        connection.request("GET", "/healthz")
        reply = connection.getresponse()
        body = reply.read(1000).decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        print(f"stratus healthcheck: {host} port {section.port}: {exc}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    if reply.status != 200:
        print(f"stratus healthcheck: {reply.status} {body}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["keygen"]:  # `python -m server keygen ...` (see plugins/sprites/keygen.py)
        return keygen.main(argv[1:])
    if argv[:1] == ["healthcheck"]:
        return healthcheck(argv[1:])
    if argv[:1] == ["migrate-store"]:  # `python -m server migrate-store --to redis://...`
        return migrate.main(argv[1:], load_config)
    args = build_parser().parse_args(argv)
    overrides: dict[str, dict] = {"server": {}}
    for key in ("host", "port", "log_level", "workers"):
        value = getattr(args, key)
        if value is not None:
            overrides["server"][key] = value
    if args.redis is not None:
        overrides["cluster"] = {"redis_url": args.redis, "backend": "redis"}
    config_path, config_origin = config_file(args.config)
    try:
        config = load_config(config_path, overrides=overrides)
    except ConfigError as exc:
        print(f"stratus: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        loop_factory = event_loop_factory(config.server.event_loop)
    except ConfigError as exc:
        print(f"stratus: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.server.log_level, config.server.log_format)
    logging.getLogger("stratus").info("Configuration: %s", config_origin)
    raise_open_file_limit()  # before any worker starts: they inherit the limit
    if config.server.workers > 1:
        # By module name: see server/supervisor.py for why not the function itself. With TLS,
        # SIGHUP reloads the certificate: every worker gets it.
        forward = (signal.SIGHUP,) if config.server.tls_cert else ()
        return Supervisor(config.server.workers, "server.__main__:run_worker", config,
                          worker_stop_timeout(config), forward,
                          config.server.worker_hang_timeout).run()
    return run(config, loop_factory)


def fatal(config: Config, message: str) -> None:
    """Report why the server cannot run: a log record with JSON logs (they stay parseable to
    the last line), else the plain "stratus: ..." line on stderr."""
    if config.server.log_format == "json":
        logging.getLogger("stratus").critical(message)
    else:
        print(f"stratus: {message}", file=sys.stderr)


def run(config: Config, loop_factory, link: WorkerLink | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the exit code (a refusal to start is reported, not raised)."""
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(_serve(config, link))
    except StoreError as exc:
        fatal(config, str(exc))
        return exc.exit_code
    except ValueError as exc:  # settings that are only checked while loading (files, lists)
        fatal(config, f"configuration error: {exc}")
        return 2
    except OSError as exc:
        fatal(config, f"cannot start: {exc}")
        return 1
    return 0


async def _serve(config: Config, link: WorkerLink | None) -> None:
    # Built inside the loop: the server's shutdown event belongs to it.
    server = build_server(config)
    if link is None:
        await serve(server)
        return
    link.watch(asyncio.get_running_loop(), server.request_shutdown)
    await serve(server, started=link.started)


def run_worker(index: int, config: Config, link: WorkerLink) -> None:
    """One worker process of `--workers N` (the `Supervisor`'s target): a whole server of its
    own on the shared port; its exit code is `run`'s."""
    # A Ctrl-C in a terminal reaches every process of the group; until the server's own
    # handlers are installed it must not end a starting worker with a traceback (the
    # supervisor sends SIGTERM to every worker in any case).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.server.log_level, config.server.log_format,
                      f"worker-{index}[{os.getpid()}]")
    if config.cluster.node_id:
        # Every worker is a node of the cluster: one node id set for the host would make the
        # workers take each other's messages for their own.
        config.replace_table("cluster", node_id=f"{config.cluster.node_id}-{index}")
    sys.exit(run(config, event_loop_factory(config.server.event_loop), link))


def worker_stop_timeout(config: Config) -> float:
    """How long the supervisor waits for a stopping worker before killing it: the graceful
    shutdown's own bounds (`Server.shutdown`: clients, rooms still loading, the store's last
    write) plus a margin."""
    return min(config.server.close_timeout, 3.0) + 2 * config.store.shutdown_write_timeout + 5.0


if __name__ == "__main__":
    sys.exit(main())
