"""Configuration: built-in defaults, an optional TOML file, environment and command-line overrides.

The core's tables ([server], [store], [http], [history], [cluster]) are dataclasses here; each
protocol (and operator surface) declares its own table as a dataclass of the same kind
([scratch], [cl4], [bridge], [admin]), and the composition root (`server.__main__`) hands them
to `load_config`. The defaults are the documented ones. Invalid settings stop start-up with a
`ConfigError` naming the key and what it accepts. Every table is frozen once loaded: components
resolve their settings at start and never re-read them.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the key."""


def choice(*options: Any):
    return {"choices": options}


def at_least(minimum: float):
    return {"min": minimum}


@dataclass(frozen=True)
class ServerSection:
    host: str = "0.0.0.0"
    port: int = field(default=9080, metadata={"min": 0, "max": 65535})
    log_level: str = field(default="info", metadata=choice("debug", "info", "warning", "error"))
    data_dir: str = "data"
    max_message_bytes: int = field(default=1_048_576, metadata=at_least(1024))
    max_connections: int = field(default=0, metadata=at_least(0))
    max_connections_per_ip: int = field(default=256, metadata=at_least(0))
    reserved_fds: int = field(default=64, metadata=at_least(8))
    max_frames_per_second: float = field(default=1000.0, metadata=at_least(0.0))
    frame_burst: int = field(default=200, metadata=at_least(1))
    max_bytes_per_second: int = field(default=4_194_304, metadata=at_least(0))
    handshake_timeout: float = field(default=30.0, metadata=at_least(0.1))
    ping_interval: float = field(default=30.0, metadata=at_least(0.1))
    close_timeout: float = field(default=5.0, metadata=at_least(0.0))
    write_buffer_high: int = field(default=262_144, metadata=at_least(1024))
    trusted_proxies: list[str] = field(default_factory=list)
    forwarded_for: str = field(default="first", metadata=choice("first", "last"))
    status_page: bool = True
    event_loop: str = field(default="auto", metadata=choice("auto", "asyncio", "uvloop"))
    # Server processes sharing the port (SO_REUSEPORT), supervised by the first one.
    workers: int = field(default=1, metadata={"min": 1, "max": 256})
    # Seconds a listening worker's event loop may stay stuck before the supervisor kills and
    # restarts it (0: never).
    worker_hang_timeout: float = field(default=30.0, metadata=at_least(0.0))
    # PEM files: with both set, the port serves wss:// and https:// (SIGHUP reloads them).
    tls_cert: str = ""
    tls_key: str = ""
    log_format: str = field(default="text", metadata=choice("text", "json"))


@dataclass(frozen=True)
class StoreSection:
    backend: str = field(default="sqlite", metadata=choice("sqlite", "memory"))
    sqlite_file: str = "stratus.sqlite3"
    flush_interval: float = field(default=1.0, metadata=at_least(0.01))
    room_idle_timeout: float = field(default=3600.0, metadata=at_least(0.0))
    retry_max_interval: float = field(default=5.0, metadata=at_least(0.01))
    shutdown_write_timeout: float = field(default=5.0, metadata=at_least(0.0))
    startup_check_timeout: float = field(default=10.0, metadata=at_least(0.0))
    max_idle_rooms: int = field(default=1000, metadata=at_least(0))


@dataclass(frozen=True)
class HttpSection:
    # Largest request body read (more is answered 413); the default fits a JSON value of
    # [scratch] max_value_length characters.
    max_body_bytes: int = field(default=262_144, metadata=at_least(0))
    # Seconds a plain HTTP request may take to arrive and be answered (408 / 503 after).
    request_timeout: float = field(default=10.0, metadata=at_least(0.1))
    # Serve GET /api/v1/projects/{id}/variables to anyone (CORS allowed): off by default.
    public_variables: bool = False
    # The live dashboard at "/" and its figures at /dashboard/stats.json (ops/dashboard.py);
    # off, "/" is the plain status page. [server] status_page = false turns both off.
    dashboard: bool = True
    # Seconds between the dashboard's samples, and how many seconds of them it keeps.
    dashboard_interval: float = field(default=2.0, metadata=at_least(0.25))
    dashboard_window: float = field(default=900.0, metadata={"min": 60.0, "max": 86_400.0})
    # Serve Prometheus metrics at GET /metrics (ops/metrics.py).
    metrics: bool = True


@dataclass(frozen=True)
class HistorySection:
    # Record who set, deleted or renamed each variable, stored with the room, and serve it as
    # Scratch's GET /logs (ops/history.py).
    enabled: bool = False
    keep: int = field(default=100, metadata={"min": 1, "max": 100_000})
    max_limit: int = field(default=1000, metadata={"min": 1, "max": 100_000})


@dataclass(frozen=True)
class ClusterSection:
    # "local" (one process), "redis", or a cluster engine named "module:Attr" (uvicorn-style).
    backend: str = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    node_id: str = ""  # "" = host name and process id
    require_redis_at_start: bool = False
    node_timeout: float = field(default=10.0, metadata=at_least(0.5))
    # Seconds a cluster-wide request (the admin API's) waits for the other nodes' replies.
    reply_timeout: float = field(default=2.0, metadata=at_least(0.05))

    def __post_init__(self) -> None:
        if self.backend not in ("local", "redis") and ":" not in self.backend:
            raise ValueError(f"[cluster] backend must be \"local\", \"redis\" or a "
                             f"\"module:Attr\" name, got {self.backend!r}")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("[cluster] redis_url must start with redis://, rediss:// or "
                             f"unix://, got {self.redis_url!r}")
        if any(char.isspace() for char in self.node_id):
            raise ValueError(f"[cluster] node_id must not contain spaces, got {self.node_id!r}")


@dataclass
class Config:
    """The whole configuration: the core's tables, then those protocols declare (`tables`)."""

    server: ServerSection = field(default_factory=ServerSection)
    store: StoreSection = field(default_factory=StoreSection)
    http: HttpSection = field(default_factory=HttpSection)
    history: HistorySection = field(default_factory=HistorySection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    # Protocol tables by name ("scratch", "cl4", "bridge"), each a frozen dataclass.
    tables: dict[str, Any] = field(default_factory=dict)
    # [[plugins]] tables: use = "module:Class", optional rooms = [globs], then the plugin's
    # own settings. Checked when the plugins load.
    plugins: list[dict[str, Any]] = field(default_factory=list)
    source: str = "built-in defaults"

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)

    def __getattr__(self, name: str) -> Any:
        # config.scratch, config.cl4, ...: a declared protocol table.
        tables = self.__dict__.get("tables")
        if tables is not None and name in tables:
            return tables[name]
        raise AttributeError(f"no config table [{name}]")

    def table(self, name: str) -> Any:
        """A protocol's table (its defaults if the file did not set it)."""
        return self.tables[name]

    def replace_table(self, name: str, **changes: Any) -> None:
        """Change settings of one table (tests and embedding code, before `Server.start`)."""
        if name in CORE_TABLES:
            setattr(self, name, dataclasses.replace(getattr(self, name), **changes))
        else:
            self.tables[name] = dataclasses.replace(self.tables[name], **changes)


CORE_TABLES: dict[str, type] = {
    "server": ServerSection,
    "store": StoreSection,
    "http": HttpSection,
    "history": HistorySection,
    "cluster": ClusterSection,
}


def new_config(tables: dict[str, type] | None = None) -> Config:
    """A configuration of defaults, with the declared protocol `tables`."""
    return Config(tables={name: kind() for name, kind in (tables or {}).items()})


def _type_name(annotation: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "list[str]": "a list of strings",
            "tuple[str, ...]": "a list of strings"}.get(annotation, annotation)


def _check_value(where: str, spec: dataclasses.Field, value: Any) -> Any:
    kind = spec.type
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "tuple[str, ...]": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }.get(kind, True)
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(kind)}, got {value!r}")
    if kind == "float":
        value = float(value)
    meta = spec.metadata
    if "choices" in meta and value not in meta["choices"]:
        options = ", ".join(repr(c) for c in meta["choices"])
        raise ConfigError(f"{where} must be one of {options}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where} must be at least {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where} must be at most {meta['max']}, got {value!r}")
    return value


def _apply(config: Config, table: str, values: dict[str, Any], origin: str) -> None:
    known_tables = [*CORE_TABLES, *config.tables]
    if table not in known_tables:
        known = ", ".join([f"[{name}]" for name in known_tables] + ["[[plugins]]"])
        raise ConfigError(f"{origin}: unknown table [{table}] (known tables: {known})")
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: [{table}] must be a table")
    section = getattr(config, table)
    fields = {f.name: f for f in dataclasses.fields(section)}
    checked = {}
    for key, value in values.items():
        where = f"{origin}: [{table}] {key}"
        if key not in fields:
            raise ConfigError(f"{where} is not a known setting (see config.toml for the list)")
        checked[key] = _check_value(where, fields[key], value)
    try:
        config.replace_table(table, **checked)
    except ValueError as exc:  # a section's own consistency check
        raise ConfigError(f"{origin}: {exc}") from None


def _validate(config: Config, origin: str) -> None:
    # Not prefixed with `origin`: the keys may come from the file, the environment or flags.
    _validate_workers(config.server.workers, config.server.port, config.store.backend,
                      config.cluster.backend)
    if bool(config.server.tls_cert) != bool(config.server.tls_key):
        given, missing = (("tls_cert", "tls_key") if config.server.tls_cert
                          else ("tls_key", "tls_cert"))
        raise ConfigError(
            f"{origin}: [server] {given} is set but {missing} is not: set both (PEM files of "
            "the certificate chain and its private key) to serve wss://, or neither"
        )
    for network in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"{origin}: [server] trusted_proxies has {network!r}, which is not an IP address "
                "or CIDR block"
            ) from None


def _validate_workers(workers: int, port: int, store: str, cluster: str) -> None:
    """Several worker processes need rooms shared between them and a port they can all bind."""
    if workers == 1:
        return
    if cluster == "local":
        raise ConfigError(
            f"[server] workers = {workers} needs a [cluster] backend that shares rooms "
            "between processes, but [cluster] backend = \"local\" keeps each room in one "
            "process (clients of one project would not see each other): set [cluster] "
            "backend = \"redis\" (or --redis URL), or [server] workers = 1"
        )
    if port == 0:
        raise ConfigError(
            f"[server] port = 0 (any free port) cannot be shared by [server] workers "
            f"= {workers}: each worker would get a port of its own; give a port number"
        )
    # The Redis engine keeps room values in Redis and opens no [store]; another engine named
    # "module:Attr" may open it (LocalCluster's subclasses do), and every worker would then
    # open the same SQLite file.
    if store == "sqlite" and cluster != "redis":
        raise ConfigError(
            f"[server] workers = {workers} with [store] backend = \"sqlite\" and [cluster] "
            f"backend = {cluster!r}: one SQLite file cannot be opened by several processes; "
            "set [cluster] backend = \"redis\" (values live in Redis), [store] backend = "
            "\"memory\" or [server] workers = 1"
        )


def load_config(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    tables: dict[str, type] | None = None,
) -> Config:
    """Defaults, then the TOML file, then environment variables, then `overrides` (CLI flags).

    `tables` declares the protocol tables (name -> frozen dataclass of defaults).
    """
    config = new_config(tables)
    if path is not None:
        origin = str(path)
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"config file {origin} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin} is not valid TOML: {exc}") from None
        for table, values in document.items():
            if table == "plugins":
                if not (isinstance(values, list) and all(isinstance(v, dict) for v in values)):
                    raise ConfigError(f"{origin}: plugins must be [[plugins]] tables")
                config.plugins = values
                continue
            _apply(config, table, values, origin)
        config.source = origin
    environ = os.environ if env is None else env
    from_env: dict[str, dict[str, Any]] = {}
    for variable, table, key, convert in (
        ("PORT", "server", "port", int),
        ("HOST", "server", "host", str),
        ("STRATUS_DATA_DIR", "server", "data_dir", str),
        ("STRATUS_LOG_LEVEL", "server", "log_level", str.lower),
        ("STRATUS_REDIS_URL", "cluster", "redis_url", str),
    ):
        raw = environ.get(variable)
        if raw:
            try:
                from_env.setdefault(table, {})[key] = convert(raw)
            except ValueError:
                raise ConfigError(f"environment variable {variable}={raw!r} is invalid") from None
    if "redis_url" in from_env.get("cluster", {}):
        from_env["cluster"]["backend"] = "redis"  # the URL alone selects the Redis backend
    for table, values in from_env.items():
        _apply(config, table, values, "environment")
    for table, values in (overrides or {}).items():
        _apply(config, table, values, "command line")
    _validate(config, config.source)
    return config
