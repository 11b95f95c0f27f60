"""`python -m server migrate-store --to redis://...`: copy a single node's SQLite store into Redis.

A one-shot command for moving to `[cluster] backend = "redis"`: it reads the store that the
config's `[store]` and `[server] data_dir` name (holding the data dir's lock, so no server
writes it meanwhile) and writes every room into Redis in the layout of
`server.cluster.redis_rooms`, each room in one transaction, with its history ([history]) if it
has one. A room that already has values in Redis is left alone (and reported) unless
`--replace` is given.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError

from ..store import DataDirLock, HistoryEntry, StoreError, _text
from .redis_rooms import dump_entry, history_id, history_key, room_keys, stored_value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server migrate-store",
        description="Copy the SQLite store (the config's [store] in [server] data_dir) into "
        "Redis, for [cluster] backend = \"redis\". Stop the server first.",
    )
    parser.add_argument("--to", required=True, metavar="URL",
                        help="the Redis to copy into, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--config", help="TOML config file naming the store (default: "
                        "config.toml in the working directory, if there is one)")
    parser.add_argument("--replace", action="store_true",
                        help="overwrite rooms that already have values in Redis")
    return parser


def read_rooms(path: Path) -> dict[tuple[str, str], list[tuple[str, int, Any]]]:
    """Every room of the SQLite store at `path`: (namespace, room) -> (key, position, value)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT namespace, room, key, position, value FROM variables "
            "ORDER BY namespace, room, position").fetchall()
    finally:
        connection.close()
    rooms: dict[tuple[str, str], list[tuple[str, int, Any]]] = {}
    for namespace, room, key, position, value in rows:
        rooms.setdefault((namespace, _text(room)), []).append(
            (_text(key), position, json.loads(value)))
    return rooms


def read_histories(path: Path) -> dict[tuple[str, str], list[HistoryEntry]]:
    """Every room's history in the SQLite store at `path`, oldest first (none in a store from
    before history existed). Entries get the Redis backend's ids: time first, so they sort
    before anything a node records later, and in their stored order within a millisecond."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = connection.execute(
            "SELECT namespace, room, seq, time, user, verb, key, value FROM history "
            "ORDER BY namespace, room, seq").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise
    finally:
        connection.close()
    histories: dict[tuple[str, str], list[HistoryEntry]] = {}
    for namespace, room, seq, stamp, user, verb, key, value in rows:
        histories.setdefault((namespace, _text(room)), []).append(HistoryEntry(
            history_id(stamp, seq), stamp, _text(user), verb, _text(key),
            json.loads(value)))
    return histories


def copy_rooms(client: redis.Redis, rooms: dict, replace: bool,
               histories: dict | None = None) -> tuple[int, int, list[str]]:
    """Write `rooms` (and their `histories`) into Redis; returns (rooms copied, variables
    copied, rooms skipped)."""
    histories = histories or {}
    copied = variables = 0
    skipped: list[str] = []
    for namespace, room_id in {**rooms, **histories}:
        rows = rooms.get((namespace, room_id), [])
        values_key, meta_key, _counts, _channel = room_keys(namespace, room_id)
        log_key = history_key(namespace, room_id)
        if not replace and client.exists(values_key, log_key):
            skipped.append(f"{namespace}/{room_id}")
            continue
        pipe = client.pipeline(transaction=True)
        pipe.delete(values_key, meta_key, log_key)
        entries = histories.get((namespace, room_id))
        if entries:
            pipe.lpush(log_key, *map(dump_entry, entries))  # oldest first: newest at the head
        mapping = {key.encode("utf-8", "surrogatepass"): stored_value(version, position, value)
                   for version, (key, position, value) in enumerate(rows, start=1)}
        if mapping:
            pipe.hset(values_key, mapping=mapping)
        pipe.hset(meta_key, mapping={b"version": len(rows),
                                     b"next": max(row[1] for row in rows) + 1 if rows else 0})
        pipe.execute()
        copied += 1
        variables += len(rows)
    return copied, variables, skipped


def main(argv: list[str], load_config: Callable[..., Any]) -> int:
    """Run the command; the exit code is 0 when every room was copied or skipped on purpose."""
    args = build_parser().parse_args(argv)
    config_path = Path(args.config) if args.config else (
        Path("config.toml") if Path("config.toml").is_file() else None)
    try:
        config = load_config(config_path)
    except ValueError as exc:
        print(f"stratus: configuration error: {exc}", file=sys.stderr)
        return 2
    if config.store.backend != "sqlite":
        print("stratus: migrate-store copies an SQLite store, but [store] backend is "
              f"{config.store.backend!r}", file=sys.stderr)
        return 2
    path = config.data_dir / config.store.sqlite_file
    if not path.is_file():
        print(f"stratus: there is no store at {path} (see [server] data_dir and [store] "
              "sqlite_file)", file=sys.stderr)
        return 2
    try:
        lock = DataDirLock(config.data_dir)
    except StoreError as exc:
        print(f"stratus: {exc}", file=sys.stderr)
        return 1
    try:
        rooms = read_rooms(path)
        histories = read_histories(path)
        client = redis.Redis.from_url(args.to, socket_timeout=10, socket_connect_timeout=5)
        try:
            copied, variables, skipped = copy_rooms(client, rooms, args.replace, histories)
        finally:
            client.close()
    except sqlite3.Error as exc:
        print(f"stratus: cannot read the store {path}: {exc}", file=sys.stderr)
        return 1
    except (RedisError, OSError, ValueError) as exc:
        print(f"stratus: cannot write to Redis at {args.to}: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    entries = sum(len(entries) for entries in histories.values())
    print(f"copied {variables} variables in {copied} rooms from {path} to Redis"
          + (f" (with {entries} history entries)" if entries else ""))
    if skipped:
        shown = ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        print(f"skipped {len(skipped)} rooms that already have values in Redis (--replace "
              f"overwrites them): {shown}")
    return 0
