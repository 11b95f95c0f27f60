"""A CL4 test client that talks like TurboWarp's cloudlink.js, plus a model of its state.

`Cl4` wraps a websockets connection: it opens the socket, checks the server stays silent for
500 ms (the extension's wait for an unsolicited `server_version`, spec §3.3), sends the
extension's handshake frame (§9.1) and parses every reply. Each received message is also fed to
`ExtensionModel`, a small Python re-implementation of how cloudlink.js 0.1.2 stores what it
receives (§8 "Multi-room on cloudlink.js", §9.2), so tests can assert what a project would see.

Patterns for comparing parsed JSON: `SF` (decimal snowflake string), `UUID`, `ANY`, `STR`,
`Unordered([...])` (a list in any order), and `Absent` keys are simply left out of the
expected dict (comparison is exact on keys).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid as uuid_module
from collections.abc import Iterable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

QUIET_WAIT = 0.5  # cloudlink.js waits 500 ms for an unsolicited server_version
NOTHING_WAIT = 0.3
EXTENSION_HANDSHAKE = {
    "cmd": "handshake",
    "val": {"language": "Scratch", "version": {"editorType": "TurboWarp", "versionNumber": 2}},
    "listener": "handshake_cfg",
}


# Patterns


class _Pattern:
    def __init__(self, name: str, check) -> None:
        self.name = name
        self.check = check

    def __repr__(self) -> str:
        return self.name


SF = _Pattern("<SF>", lambda v: type(v) is str and v.isdigit())


def _is_uuid(value: Any) -> bool:
    try:
        return type(value) is str and str(uuid_module.UUID(value)) == value
    except ValueError:
        return False


UUID = _Pattern("<U>", _is_uuid)
INT = _Pattern("<int>", lambda v: type(v) is int)


def regex(pattern: str) -> _Pattern:
    """A string that fully matches the regular expression `pattern`."""
    compiled = re.compile(pattern)
    return _Pattern(f"/{pattern}/", lambda v: type(v) is str and bool(compiled.fullmatch(v)))
ANY = _Pattern("<any>", lambda v: True)
STR = _Pattern("<str>", lambda v: type(v) is str)


class Unordered:
    """A list compared without regard to order."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items = list(items)

    def __repr__(self) -> str:
        return f"Unordered({self.items!r})"


def matches(expected: Any, got: Any) -> bool:
    """True if `got` (parsed JSON) matches `expected` (JSON with patterns), types included."""
    if isinstance(expected, _Pattern):
        return expected.check(got)
    if isinstance(expected, Unordered):
        if type(got) is not list or len(got) != len(expected.items):
            return False
        remaining = list(got)
        for item in expected.items:
            for index, candidate in enumerate(remaining):
                if matches(item, candidate):
                    del remaining[index]
                    break
            else:
                return False
        return True
    if isinstance(expected, dict):
        return (type(got) is dict and expected.keys() == got.keys()
                and all(matches(v, got[k]) for k, v in expected.items()))
    if isinstance(expected, list):
        return (type(got) is list and len(got) == len(expected)
                and all(matches(e, g) for e, g in zip(expected, got, strict=True)))
    # bool is not int here: JSON true must not match 1.
    return type(expected) is type(got) and expected == got


def OBJ(name: str) -> dict:  # noqa: N802 - the spec's notation
    """A named user object pattern: {"id": <SF>, "username": name, "uuid": <U>}."""
    return {"id": SF, "username": name, "uuid": UUID}


def OK(listener: Any = None, **extra: Any) -> dict:  # noqa: N802 - the spec's notation
    """The I:100 statuscode, with `listener` unless None."""
    message: dict[str, Any] = {"cmd": "statuscode", "code": "I:100 | OK", "code_id": 100}
    if listener is not None:
        message["listener"] = listener
    message.update(extra)
    return message


def status(code: str, listener: Any = None, **extra: Any) -> dict:
    """A statuscode pattern from its exact code string, e.g. status("E:103 | ID not found")."""
    number = int(re.match(r"[IE]:(\d+) \| ", code).group(1))
    message: dict[str, Any] = {"cmd": "statuscode", "code": code, "code_id": number}
    if "details" in extra:
        message["details"] = extra.pop("details")
    if listener is not None:
        message["listener"] = listener
    message.update(extra)
    return message


# The extension model


class ExtensionModel:
    """What cloudlink.js (TurboWarp build, v0.1.2, dialect level 4) keeps from the messages.

    Only the parts the spec's "expected state" table checks: connection state, server version,
    client_obj / my user object, the flat user list (set replaces, add appends, remove deletes
    the first entry with the same uuid), the data reporters, variables, the status reporter,
    username/link state from the reserved listeners, and the join/leave hat counters.
    """

    RESERVED = ("handshake_cfg", "username_cfg", "link", "unlink")
    LEVELS = (("0.2.", 4), ("0.1.9", 3), ("0.1.8", 2), ("0.1.7", 1))

    def __init__(self) -> None:
        self.connected = False
        self.level = 0
        self.server_version = ""
        self.client_ip = ""
        self.motd = ""
        self.client_obj: dict | None = None
        self.my_user: dict | None = None
        self.username_synced = False
        self.linked = False
        self.ulist: list[dict] = []
        self.recently_left: dict | None = None
        self.global_data: Any = ""
        self.private_data: Any = ""
        self.direct_data: Any = ""
        self.gvars: dict[str, Any] = {}
        self.pvars: dict[str, Any] = {}
        self.status_code: str = ""
        self.joined_hats = 0
        self.left_hats = 0

    def receive(self, message: dict) -> None:
        cmd = message.get("cmd")
        val = message.get("val")
        if cmd == "server_version":
            self.server_version = val
            for marker, level in self.LEVELS:
                if marker in val and level > self.level:
                    self.level = level
            self.connected = True
        elif cmd == "client_ip":
            self.client_ip = val
        elif cmd == "motd":
            self.motd = val
        elif cmd == "client_obj":
            self.client_obj = val
        elif cmd == "ulist" and self.level >= 4:
            mode = message.get("mode")
            if mode == "set":
                self.ulist = list(val)
            elif mode == "add":
                self.ulist.append(val)
                self.joined_hats += 1
            elif mode == "remove":
                for index, user in enumerate(self.ulist):
                    if user.get("uuid") == val.get("uuid"):
                        del self.ulist[index]
                        break
                self.recently_left = val
                self.left_hats += 1
        elif cmd == "statuscode" and self.level >= 1:
            listener = message.get("listener")
            ok = "I:100" in message.get("code", "")
            if listener in self.RESERVED:
                if listener == "username_cfg" and ok:
                    self.username_synced = True
                    self.my_user = val
                elif listener == "link" and ok:
                    self.linked = True
                elif listener == "unlink" and ok:
                    self.linked = False
                return  # consumed, never shown in the "status code" reporter
            self.status_code = message.get("code", "")
        elif cmd == "gmsg":
            self.global_data = val
        elif cmd == "pmsg":
            self.private_data = val
        elif cmd == "direct":
            self.direct_data = val
        elif cmd == "gvar":
            self.gvars[message["name"]] = val
        elif cmd == "pvar":
            self.pvars[message["name"]] = val

    @property
    def my_username(self) -> str | None:
        return self.my_user.get("username") if self.my_user else None

    def usernames(self) -> list[str]:
        return [user.get("username") for user in self.ulist]

    def id_connected(self, ident: str) -> bool:
        """The "ID [ID] connected?" block: a user in the list with that username or id."""
        return any(user.get("username") == ident or user.get("id") == ident
                   or user.get("uuid") == ident for user in self.ulist)


# The client


class Cl4:
    """One CL4 connection driven as cloudlink.js drives it."""

    def __init__(self, ws: ClientConnection, name: str = "") -> None:
        self.ws = ws
        self.name = name
        self.model = ExtensionModel()
        self.user: dict | None = None  # client_obj, then the setid user object

    def __repr__(self) -> str:
        return f"<Cl4 {self.name or '?'}>"

    @classmethod
    async def open(cls, url: str, name: str = "", *, quiet: bool = True, **kwargs: Any) -> Cl4:
        """Connect; with `quiet`, assert the server sends nothing for 500 ms (PARITY #1)."""
        options = {"compression": None, "ping_interval": None, "proxy": None,
                   "open_timeout": 5, "close_timeout": 2, "user_agent_header": "cl4-tests"}
        options.update(kwargs)
        ws = await connect(url, **options)
        client = cls(ws, name)
        if quiet:
            await client.expect_nothing(QUIET_WAIT)
        return client

    # Sending

    async def send(self, message: Any) -> None:
        await self.ws.send(json.dumps(message, separators=(",", ":")))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    # Receiving

    async def recv(self, timeout: float = 3.0) -> Any:
        """The next message, parsed and fed to the model."""
        try:
            text = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self}: no message within {timeout} s") from None
        message = json.loads(text)
        if type(message) is dict:
            self.model.receive(message)
        return message

    async def expect(self, *expected: Any, timeout: float = 3.0) -> list[Any]:
        """The next messages, in order, must match `expected`; returns them."""
        got = []
        for pattern in expected:
            message = await self.recv(timeout)
            got.append(message)
            assert matches(pattern, message), (
                f"{self}: message {len(got)} is\n  {message!r}\nexpected\n  {pattern!r}")
        return got

    async def expect_nothing(self, wait: float = NOTHING_WAIT) -> None:
        """No message within `wait` seconds, and the connection still open."""
        try:
            text = await asyncio.wait_for(self.ws.recv(), wait)
        except TimeoutError:
            assert self.ws.state is State.OPEN, f"{self}: connection is {self.ws.state.name}"
            return
        except ConnectionClosed as exc:
            raise AssertionError(f"{self}: connection closed: {exc}") from None
        raise AssertionError(f"{self}: unexpected message {text!r}")

    async def recv_until(self, predicate, timeout: float = 5.0) -> list[Any]:
        """Read messages until `predicate(message)` is true; returns every message read."""
        messages = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.recv(timeout)
                messages.append(message)
                if predicate(message):
                    return messages

    # The extension's steps

    async def handshake(self, frame: dict | None = None) -> list[dict]:
        """Send the extension's handshake; returns the reply burst (up to the statuscode)."""
        await self.send(frame or EXTENSION_HANDSHAKE)
        burst = await self.recv_until(lambda m: m.get("cmd") == "statuscode")
        for message in burst:
            if message.get("cmd") == "client_obj":
                self.user = message["val"]
        return burst

    async def setid(self, name: Any, listener: Any = "username_cfg") -> dict:
        """Set the username; returns the user object from the I:100 reply."""
        await self.send({"cmd": "setid", "val": name, "listener": listener})
        burst = await self.recv_until(lambda m: m.get("cmd") == "statuscode")
        reply = burst[-1]
        assert reply["code"] == "I:100 | OK", reply
        self.user = reply["val"]
        return self.user

    async def close(self) -> None:
        await self.ws.close()


async def open_clients(url: str, *names: str, quiet: bool = True) -> list[Cl4]:
    """Open several clients at once (their 500 ms quiet checks overlap)."""
    return list(await asyncio.gather(*(Cl4.open(url, name, quiet=quiet) for name in names)))


async def identified(url: str, *names: str, named: bool = True) -> list[Cl4]:
    """Clients that handshook (in order) and, if `named`, set their names; all drained.

    Every client reads what the later ones caused (ulist add), so each starts clean.
    """
    clients = await open_clients(url, *names)
    for client in clients:
        await client.handshake()
    if named:
        for client in clients:
            await client.setid(client.name)
    await drain(*clients)
    return clients


async def drain(*clients: Cl4, wait: float = 0.2) -> None:
    """Read (feeding each model) whatever is pending on each client, until `wait` s of quiet."""

    async def one(client: Cl4) -> None:
        while True:
            try:
                await client.recv(wait)
            except AssertionError:
                return

    await asyncio.gather(*(one(client) for client in clients))


async def close_all(*clients: Cl4) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
