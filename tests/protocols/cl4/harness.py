"""Test harness for the Sans-I/O CL4 engine: fake connections that record what they were sent."""

from __future__ import annotations

import json
from typing import Any

from protocols.cl4 import Cl4Engine, Cl4Options, encode_message


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeConnection:
    """A connection handle that records frames (parsed back from JSON) and its close."""

    def __init__(self, name: str):
        self.name = name
        self.frames: list[Any] = []
        self.closed: tuple[int, str] | None = None

    def take(self) -> list[Any]:
        """Everything received since the last take."""
        frames, self.frames = self.frames, []
        return frames

    def __repr__(self) -> str:
        return f"<FakeConnection {self.name}>"


class Harness:
    """One engine plus helpers to connect, name and drive fake clients."""

    def __init__(self, options: Cl4Options | None = None, **option_overrides: Any):
        self.clock = FakeClock()
        if option_overrides:
            options = Cl4Options(**option_overrides)
        self.engine = Cl4Engine(self._send, self._close, options, clock=self.clock)

    @staticmethod
    def _send(connection: FakeConnection, message: dict | str) -> None:
        # Round-trip through the real encoder, as the core will: tests compare parsed JSON.
        if isinstance(message, str):
            connection.frames.append(("text", message))
        else:
            connection.frames.append(json.loads(encode_message(message)))

    @staticmethod
    def _close(connection: FakeConnection, code: int, reason: str) -> None:
        connection.closed = (code, reason)

    def connect(self, name: str, ip: str = "203.0.113.7") -> FakeConnection:
        """A connected but not yet identified client."""
        connection = FakeConnection(name)
        self.engine.connect(connection, ip)
        return connection

    def send(self, connection: FakeConnection, message: Any) -> None:
        """Deliver one message: a str as-is, anything else encoded as JSON."""
        text = message if isinstance(message, str) else json.dumps(message)
        self.engine.receive(connection, text)

    def client(self, name: str, username: str | None = None) -> FakeConnection:
        """A handshaken client (named if `username`), with its inbox emptied everywhere."""
        connection = self.connect(name)
        self.send(connection, {"cmd": "handshake"})
        if username is not None:
            self.send(connection, {"cmd": "setid", "val": username})
        self.drain()
        return connection

    def drain(self) -> None:
        """Empty every connection's inbox."""
        for session in self.engine.sessions():
            session.connection.take()

    def obj(self, connection: FakeConnection) -> dict:
        """The user object the server uses for `connection`."""
        return dict(self.engine.session(connection).user_object)


def ok(listener: Any = None, **extra: Any) -> dict:
    """`OK(L)` of spec §15 (no listener key when listener is None)."""
    message: dict[str, Any] = {"cmd": "statuscode", "code": "I:100 | OK", "code_id": 100}
    if listener is not None:
        message["listener"] = listener
    message.update(extra)
    return message


def status(code: str, details: Any = None, listener: Any = None, val: Any = None) -> dict:
    """A statuscode message in the observed key order."""
    message: dict[str, Any] = {"cmd": "statuscode", "code": code, "code_id": int(code[2:5])}
    if details is not None:
        message["details"] = details
    if listener is not None:
        message["listener"] = listener
    if val is not None:
        message["val"] = val
    return message
