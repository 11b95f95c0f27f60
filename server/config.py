"""Configuration: built-in defaults, an optional TOML file, environment and command-line overrides.

Every table of `config.toml` is a dataclass here; the defaults below are the documented ones.
Invalid settings stop start-up with a `ConfigError` naming the key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocols.cl4.options import Cl4Options


class ConfigError(ValueError):
    """A setting is missing, unknown or invalid; the message names the key."""


def _choice(*options: Any):
    return {"choices": options}


def _at_least(minimum: float):
    return {"min": minimum}


@dataclass
class ServerSection:
    host: str = "0.0.0.0"
    port: int = field(default=9080, metadata={"min": 0, "max": 65535})
    log_level: str = field(default="info", metadata=_choice("debug", "info", "warning", "error"))
    data_dir: str = "data"
    max_message_bytes: int = field(default=1_048_576, metadata=_at_least(1024))
    max_connections: int = field(default=0, metadata=_at_least(0))
    max_connections_per_ip: int = field(default=256, metadata=_at_least(0))
    reserved_fds: int = field(default=64, metadata=_at_least(8))
    max_frames_per_second: float = field(default=1000.0, metadata=_at_least(0.0))
    frame_burst: int = field(default=200, metadata=_at_least(1))
    max_bytes_per_second: int = field(default=4_194_304, metadata=_at_least(0))
    handshake_timeout: float = field(default=30.0, metadata=_at_least(0.1))
    ping_interval: float = field(default=30.0, metadata=_at_least(0.1))
    close_timeout: float = field(default=5.0, metadata=_at_least(0.0))
    write_buffer_high: int = field(default=262_144, metadata=_at_least(1024))
    trusted_proxies: list[str] = field(default_factory=list)
    forwarded_for: str = field(default="first", metadata=_choice("first", "last"))
    status_page: bool = True
    event_loop: str = field(default="auto", metadata=_choice("auto", "asyncio", "uvloop"))


@dataclass
class StoreSection:
    backend: str = field(default="sqlite", metadata=_choice("sqlite", "memory"))
    sqlite_file: str = "stratus.sqlite3"
    flush_interval: float = field(default=1.0, metadata=_at_least(0.01))
    room_idle_timeout: float = field(default=3600.0, metadata=_at_least(0.0))
    retry_max_interval: float = field(default=5.0, metadata=_at_least(0.01))
    shutdown_write_timeout: float = field(default=5.0, metadata=_at_least(0.0))
    startup_check_timeout: float = field(default=10.0, metadata=_at_least(0.0))
    max_idle_rooms: int = field(default=1000, metadata=_at_least(0))


@dataclass
class ScratchSection:
    batch_hz: float = field(default=60.0, metadata=_at_least(0.0))
    burst_window_ms: float = field(default=2.0, metadata={"min": 0.0, "max": 1000.0})
    coalesce: str = field(default="latest", metadata=_choice("latest", "all"))
    max_pending_lines: int = field(default=4096, metadata=_at_least(1))
    messages_per_second: float = field(default=10_000.0, metadata=_at_least(0.0))
    message_burst: int = field(default=1000, metadata=_at_least(1))
    max_variables_per_room: int = field(default=128, metadata=_at_least(1))
    max_clients_per_room: int = field(default=128, metadata=_at_least(1))
    max_rooms: int = field(default=16384, metadata=_at_least(1))
    max_room_id_length: int = field(default=999, metadata=_at_least(1))
    max_value_length: int = field(default=100_000, metadata=_at_least(1))
    invalid_room_close_code: int = field(default=4004, metadata=_choice(4000, 4004))
    blocked_rooms: list[str] = field(default_factory=list)
    blocked_rooms_file: str = ""
    cookie_tripwire: bool = True
    require_user_agent: bool = False
    user_agent_message: str = (
        "Please provide a valid User-Agent header with contact information. If you use a cloud "
        "variable library, contact the author to find out how to do that."
    )
    username_filters: list[str] = field(default_factory=lambda: ["builtin:impersonation"])
    allow_delete: bool = False
    allow_rename: bool = False
    allow_non_numeric_values: bool = False
    split_newline_messages: bool = False
    strict_variable_names: bool = False


@dataclass
class BridgeSection:
    enabled: bool = False
    rooms: list[str] = field(default_factory=lambda: ["*"])


@dataclass
class Config:
    """The whole configuration."""

    server: ServerSection = field(default_factory=ServerSection)
    store: StoreSection = field(default_factory=StoreSection)
    scratch: ScratchSection = field(default_factory=ScratchSection)
    cl4: Cl4Options = field(default_factory=Cl4Options)
    bridge: BridgeSection = field(default_factory=BridgeSection)
    # [[plugins]] tables: use = "module:Class", optional rooms = [globs], then the plugin's
    # own settings. Checked when the plugins load.
    plugins: list[dict[str, Any]] = field(default_factory=list)
    source: str = "built-in defaults"

    @property
    def data_dir(self) -> Path:
        return Path(self.server.data_dir)


_SECTIONS = {
    f.name: f.type for f in dataclasses.fields(Config) if f.name not in ("source", "plugins")
}


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
    section_type = _SECTIONS.get(table)
    if section_type is None:
        known = ", ".join([f"[{name}]" for name in _SECTIONS] + ["[[plugins]]"])
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
        setattr(config, table, dataclasses.replace(section, **checked))
    except ValueError as exc:  # a section's own consistency check
        raise ConfigError(f"{origin}: {exc}") from None


def _validate(config: Config, origin: str) -> None:
    for network in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(
                f"{origin}: [server] trusted_proxies has {network!r}, which is not an IP address "
                "or CIDR block"
            ) from None


def load_config(
    path: str | Path | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    """Defaults, then the TOML file, then environment variables, then `overrides` (CLI flags)."""
    config = Config()
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
    ):
        raw = environ.get(variable)
        if raw:
            try:
                from_env.setdefault(table, {})[key] = convert(raw)
            except ValueError:
                raise ConfigError(f"environment variable {variable}={raw!r} is invalid") from None
    for table, values in from_env.items():
        _apply(config, table, values, "environment")
    for table, values in (overrides or {}).items():
        _apply(config, table, values, "command line")
    _validate(config, config.source)
    return config
