"""Bare Scratch-cloud relay: the performance ceiling for a websockets-based server.

The simplest correct implementation of the protocol's hot path (docs/specs/scratch-cloud.md
§3-§7): JSON-object messages with a string ``method``; handshake into a room (room id =
String(project_id), username checked); ``set``/``create`` validated, stored and relayed as one
``set`` line per frame to every *other* member with ``websockets.broadcast`` (no batching, no
coalescing); a new member gets the room's variables as one dump message. ``delete``/``rename``
are ignored, anything else closes 4000. No persistence, limits, liveness or header checks beyond
what websockets does itself.

    python bench/relay.py --port 9081 [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

USER_RE = re.compile(r"[A-Za-z0-9_-]{1,20}", re.ASCII)
VALUE_RE = re.compile(r"-?[0-9]*\.?[0-9]*", re.ASCII)


def _no_constant(name: str) -> float:
    raise ValueError(name)


_decode = json.JSONDecoder(parse_constant=_no_constant).decode
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def room_id(pid: object) -> str | None:
    if isinstance(pid, str):
        rid = pid
    elif isinstance(pid, bool):
        rid = "true" if pid else "false"
    elif isinstance(pid, int):
        rid = str(pid)
    elif isinstance(pid, float):
        rid = str(int(pid)) if pid.is_integer() and abs(pid) < 1e21 else repr(pid)
    else:
        return None
    return rid if 1 <= len(rid) <= 999 else None


def valid_value(v: object) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return math.isfinite(v)
    if isinstance(v, str):
        return len(v) <= 100_000 and v not in (".", "-") and VALUE_RE.fullmatch(v) is not None
    return False


class Room:
    __slots__ = ("members", "values")

    def __init__(self) -> None:
        self.members: set[ServerConnection] = set()
        self.values: dict[object, str] = {}  # name -> encoded "set" line


ROOMS: dict[str, Room] = {}


async def handler(ws: ServerConnection) -> None:
    room: Room | None = None
    try:
        async for raw in ws:
            if not isinstance(raw, str):
                continue  # binary messages are ignored
            try:
                msg = _decode(raw.strip(" \t\r\n"))
            except Exception:
                await ws.close(4000)
                return
            if type(msg) is not dict or type(msg.get("method")) is not str:
                await ws.close(4000)
                return
            method = msg["method"]
            if method == "set" or method == "create":
                if room is None:
                    await ws.close(4000)
                    return
                value = msg.get("value")
                if not valid_value(value):
                    continue
                name = msg.get("name", room)  # the room object stands for "missing"
                if name is room:
                    line = _encode({"method": "set", "value": value})
                else:
                    line = _encode({"method": "set", "name": name, "value": value})
                key = name if isinstance(name, str) or name is room else _encode(name)
                if key not in room.values and len(room.values) >= 128:
                    await ws.close(4000)
                    return
                room.values[key] = line
                broadcast([m for m in room.members if m is not ws], line)
            elif method == "handshake":
                if room is not None:
                    await ws.close(4000)
                    return
                rid = room_id(msg.get("project_id"))
                if rid is None:
                    await ws.close(4004)
                    return
                user = msg.get("user")
                if type(user) is not str or USER_RE.fullmatch(user) is None:
                    await ws.close(4002)
                    return
                room = ROOMS.get(rid)
                if room is None:
                    room = ROOMS[rid] = Room()
                if room.values:
                    await ws.send("\n".join(room.values.values()))
                room.members.add(ws)
            elif method == "delete" or method == "rename":
                continue
            else:
                await ws.close(4000)
                return
    except ConnectionClosed:
        pass
    finally:
        if room is not None:
            room.members.discard(ws)


def process_request(ws: ServerConnection, request: object) -> object:
    if getattr(request, "path", "") == "/healthz":
        return ws.respond(200, "ok\n")
    return None


async def main(host: str, port: int, backlog: int) -> None:
    async with serve(
        handler,
        host,
        port,
        compression=None,
        max_size=1_048_576,
        ping_interval=30,
        ping_timeout=30,
        process_request=process_request,
        backlog=backlog,
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9081)
    ap.add_argument("--backlog", type=int, default=100, help="listen backlog (asyncio default 100)")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio")
    a = ap.parse_args()
    if a.uvloop:
        import uvloop

        uvloop.run(main(a.host, a.port, a.backlog))
    else:
        asyncio.run(main(a.host, a.port, a.backlog))
