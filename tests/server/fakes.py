"""Fakes for testing the core's pieces without sockets: a transport, a room member, a registry.

`FakeMember` is what the fan-out and rooms see of a connection (and the `server.session.Peer`
a protocol engine talks to): `paused`, `backlog`, `catch_up`, a `transport` whose writes are
recorded, `send_frame`/`send_text`, and `close(code)`, which, like `server.connection.
Connection`, tells the member's session it is done as soon as the close starts.
`make_registry` builds a room namespace the way `server.app.Server.open_rooms` does.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from server.backplane import LocalBackplane
from server.codes import State
from server.config import StoreSection
from server.events import EventBus
from server.fanout import Codec, Fanout, FanoutSettings
from server.framing import encode_text
from server.persistence import Persister
from server.rooms import RoomLimits, RoomRegistry
from server.store import open_store

_ids = itertools.count(1)


def decode_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload) pairs."""
    frames = []
    pos = 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        length = second & 0x7F
        header = 2
        if length == 126:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            header = 4
        elif length == 127:
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            header = 10
        assert not second & 0x80, "server frames are never masked"
        start = pos + header
        frames.append((first & 0x0F, bytes(data[start : start + length])))
        pos = start + length
    return frames


class FakeTransport:
    """An asyncio transport that records what is written and how it is driven."""

    def __init__(self, peername: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.written = bytearray()
        self.peername = peername
        self.closed = False
        self.aborted = False
        self.eof_written = False
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self.buffer_size = 0
        self.limits: tuple[int | None, int | None] | None = None

    def write(self, data: bytes) -> None:
        self.written += data

    def writes(self) -> bytes:
        """Everything written so far, then forget it."""
        data, self.written = bytes(self.written), bytearray()
        return data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True
        self.closed = True

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True
        self.resumes += 1

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return self.buffer_size

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def is_closing(self) -> bool:
        return self.closed


class FakeMember:
    """A connection as rooms, the fan-out and protocol engines see it (no socket)."""

    def __init__(self, name: str = "", headers: dict[str, str] | None = None) -> None:
        self.id = next(_ids)
        self.name = name or f"member{self.id}"
        self.peer = "127.0.0.1"
        self.headers = headers or {}
        self.transport = FakeTransport()
        self.state = State.OPEN
        self.paused = False
        self.backlog: Any = None
        self.catch_up: Any = None
        self.session: Any = None
        self.username: str | None = None  # `Peer.username`: what the history names it by
        self.close_code: int | None = None
        self.closes: list[int] = []

    def __repr__(self) -> str:
        return f"<FakeMember {self.name}>"

    @property
    def is_open(self) -> bool:
        return self.state == State.OPEN

    def header(self, name: str) -> str:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return ""

    def send_frame(self, frame: bytes) -> None:
        if self.is_open:
            self.transport.write(frame)

    def send_text(self, text: str) -> None:
        if self.is_open:
            self.transport.write(encode_text(text))

    def close(self, code: int, reason: str = "") -> None:
        """As `Connection.close`: record the code, then tell the session it is over."""
        self.closes.append(code)
        if not self.is_open:
            return
        self.close_code = code
        self.state = State.CLOSING
        if self.session is not None:
            self.session.closed()

    def pause(self) -> None:
        """The socket's write buffer filled up (`Connection.pause_writing`)."""
        self.paused = True

    def resume(self) -> None:
        """The buffer drained (`Connection.resume_writing`): the fan-out catches it up."""
        self.paused = False
        catch_up = self.catch_up
        if catch_up is not None and self.is_open:
            self.catch_up = None
            catch_up(self)

    def frames(self) -> list[str]:
        """Text messages received since the last call, one per frame."""
        return [payload.decode() for opcode, payload in decode_frames(self.transport.writes())
                if opcode == 0x1]

    def lines(self) -> list[str]:
        """Every line of every text message received since the last call."""
        return [line for frame in self.frames() for line in frame.split("\n")]


# A codec that is no protocol's: rooms and the fan-out must not care what updates look like.
TEST_CODEC = Codec(lambda key, value: f"{key}={value}", "\n", str, str)


class FakeStore:
    """A store whose commits the test controls: `save` issues tickets, `commit` writes them."""

    loads_block = False
    fault = None
    write_errors = 0

    def __init__(self, rows: dict[str, list] | None = None) -> None:
        self.rows = rows or {}
        self.saved: list[list] = []
        self.appended: list[tuple[list, int]] = []  # (history batch, keep)
        self.issued = 0
        self.committed = 0
        self.writes = 0

    def load(self, namespace: str, room_id: str) -> list:
        return list(self.rows.get(room_id, []))

    def save(self, changes: list) -> int:
        self.saved.append(changes)
        self.issued += 1
        return self.issued

    def append_history(self, batch: list, keep: int) -> int:
        self.appended.append((batch, keep))
        self.issued += 1
        return self.issued

    def commit(self) -> None:
        if self.committed != self.issued:
            self.writes += 1
        self.committed = self.issued

    def close(self) -> None:
        pass


def make_registry(
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    namespace: str = "test",
    codec: Codec = TEST_CODEC,
    limits: RoomLimits | None = None,
    settings: FanoutSettings | None = None,
    store: Any = None,
    events: EventBus | None = None,
    data_dir: Path | None = None,
) -> RoomRegistry:
    """A room namespace wired like `Server.open_rooms`: Fanout + LocalBackplane + Persister."""
    loop = loop or asyncio.get_running_loop()
    if store is None:
        store = open_store(StoreSection(backend="memory"), data_dir or Path("."))
    backplane = LocalBackplane()
    fanout = Fanout(namespace, settings or FanoutSettings(), codec, loop, events or EventBus())
    backplane.attach(fanout.deliver)
    return RoomRegistry(namespace, limits or RoomLimits(), store, fanout, backplane,
                        Persister(namespace, store), loop)
