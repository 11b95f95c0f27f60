"""The real Python bot libraries exchanging values through Stratus (scratch-cloud.md §15.3).

scratchattach 2.2.6 (`CustomCloud` with our `cloud_host`) and scratchcommunication 3.0.0
(`TwCloudConnection`) each run in a child process (see `botlibs.py`), so their threads can
never outlive a test. A plain `websockets` client is the other side where one is needed.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from .botlibs import Bot, missing_libraries

pytestmark = pytest.mark.slow

_missing = missing_libraries()
if _missing:
    pytest.skip(
        f"bot libraries not installed: {', '.join(_missing)} "
        "(pip install scratchattach==2.2.6 scratchcommunication==3.0.0 typing_extensions)",
        allow_module_level=True,
    )


class Plain:
    """A plain websockets client in a room."""

    def __init__(self, ws):
        self.ws = ws

    async def set(self, name: str, value) -> None:
        message = {"method": "set", "name": name, "value": value}
        await self.ws.send(json.dumps(message, ensure_ascii=False))

    async def recv(self, timeout: float = 10.0) -> str:
        return await asyncio.wait_for(self.ws.recv(), timeout)


def plain_client(server, room: str, user: str = "player4321"):
    """Connect a plain client and handshake into `room` (a ping makes sure it is in)."""

    class _Context:
        async def __aenter__(self) -> Plain:
            self.connection = connect(server.url, compression=None, open_timeout=10)
            ws = await self.connection.__aenter__()
            await ws.send(json.dumps({"method": "handshake", "project_id": room, "user": user}))
            await (await ws.ping())
            return Plain(ws)

        async def __aexit__(self, *exc_info) -> None:
            await self.connection.__aexit__(*exc_info)

    return _Context()


def set_line(name: str, value) -> str:
    """A `set` exactly as the server sends it."""
    return json.dumps(
        {"method": "set", "name": name, "value": value}, ensure_ascii=False, separators=(",", ":")
    )


# Library → plain client


@pytest.mark.parametrize(
    "header",
    [None, {"User-Agent": "stratus-tests (stratus-tests@127.0.0.1)"}],
    ids=["no-headers", "user-agent"],
)
async def test_scratchattach_set_reaches_plain_client(server, room, header):
    """A value scratchattach's CustomCloud sets (with or without headers) reaches a browser."""
    async with plain_client(server, room) as plain, Bot(
        "scratchattach", server.url, room, header=header
    ) as bot:
        await bot.call("set", name="score", value="42")
        assert await plain.recv() == set_line("☁ score", "42")
        await bot.call("set", name="☁ score", value=7)
        assert await plain.recv() == set_line("☁ score", 7)


async def test_scratchcommunication_set_reaches_plain_client(server, room):
    """A value scratchcommunication's TwCloudConnection sets reaches a browser."""
    async with plain_client(server, room) as plain, Bot(
        "scratchcommunication", server.url, room
    ) as bot:
        await bot.call("set", name="score", value="-12.5")
        assert await plain.recv() == set_line("☁ score", "-12.5")
        await bot.call("set", name="score", value=99)
        assert await plain.recv() == set_line("☁ score", 99)


# Plain client → library


async def test_scratchattach_events_receive_plain_client_set(server, room):
    """scratchattach's cloud events report a value a browser sets."""
    async with plain_client(server, room) as plain, Bot("scratchattach", server.url, room) as bot:
        await bot.call("listen")
        await plain.set("☁ level", "3")
        assert await bot.next_event() == {"name": "level", "value": "3"}
        await plain.set("☁ level", 4)
        assert await bot.next_event() == {"name": "level", "value": 4}


async def test_scratchcommunication_receives_plain_client_set(server, room):
    """scratchcommunication holds the value a browser sets; events follow from the second one.

    Its documented quirk: the first message after connecting is taken as the handshake dump
    (no event). The server sends nothing on joining an empty room, so that first message is
    the browser's first set: the library still stores it, and events start with the next one.
    """
    async with Bot("scratchcommunication", server.url, room) as bot, plain_client(
        server, room
    ) as plain:
        await plain.set("☁ level", "1")
        await bot.wait_value("level", "1")
        await plain.set("☁ level", "2")
        assert await bot.next_event() == {"name": "level", "value": "2"}
        await bot.wait_value("level", "2")
        assert bot.events.empty()


# Library ↔ library


async def test_scratchattach_and_scratchcommunication_exchange_values(server, room):
    """scratchattach and scratchcommunication bots in one room see each other's values."""
    async with Bot("scratchattach", server.url, room) as attach:
        await attach.call("listen")
        async with Bot("scratchcommunication", server.url, room) as comm:
            await attach.call("set", name="from_attach", value="111")
            await comm.wait_value("from_attach", "111")  # its first message: no event (quirk)
            # scratchattach listens on a socket of its own, so it hears its own sets too.
            assert await attach.next_event() == {"name": "from_attach", "value": "111"}
            await comm.call("set", name="from_comm", value="222")
            assert await attach.next_event() == {"name": "from_comm", "value": "222"}
            # scratchcommunication reports its own sets as events, locally.
            assert await comm.next_event() == {"name": "from_comm", "value": "222"}
            await attach.call("set", name="from_attach", value="333")
            assert await comm.next_event() == {"name": "from_attach", "value": "333"}


# The handshake dump


async def test_scratchcommunication_reads_handshake_dump(server, room):
    """Values stored before scratchcommunication connects are known to it at once."""
    async with plain_client(server, room) as plain:
        await plain.set("☁ a", "1")
        await plain.set("☁ b", 2)
        await (await plain.ws.ping())
    async with Bot("scratchcommunication", server.url, room) as bot:
        await bot.wait_value("a", "1")
        await bot.wait_value("b", 2)


async def test_scratchattach_event_stream_reads_handshake_dump(server, room):
    """scratchattach's event stream yields the stored values, in order, right after connecting."""
    async with plain_client(server, room) as plain:
        await plain.set("☁ first", "10")
        await plain.set("☁ second", 20)
        await plain.set("☁ first", "30")  # overwrites keep their position
        await (await plain.ws.ping())
    async with Bot("scratchattach", server.url, room) as bot:
        dump = await bot.call("read_stream", timeout=5.0)
        assert dump == [
            {"method": "set", "name": "☁ first", "value": "30"},
            {"method": "set", "name": "☁ second", "value": 20},
        ]


# Opt-in compatibility settings


async def test_scratchattach_set_vars_with_split_newline_messages(make_server, room):
    """With split_newline_messages on, scratchattach's set_vars (one frame) sets every value."""
    server = make_server(scratch={"split_newline_messages": True})
    async with plain_client(server, room) as plain, Bot("scratchattach", server.url, room) as bot:
        await bot.call("set_many", values={"x": "1", "y": "2"})
        lines = (await plain.recv()).split("\n")
        while len(lines) < 2:
            lines += (await plain.recv()).split("\n")
        assert lines == [set_line("☁ x", "1"), set_line("☁ y", "2")]


async def test_scratchattach_set_vars_is_refused_by_default(server, room):
    """By default scratchattach's set_vars (two messages in one frame) sets nothing."""
    async with plain_client(server, room) as plain, Bot("scratchattach", server.url, room) as bot:
        await bot.call("set_many", values={"x": "1", "y": "2"})
        with pytest.raises(TimeoutError):
            await plain.recv(timeout=0.5)


async def test_scratchcommunication_works_when_user_agent_is_required(make_server, room):
    """scratchcommunication sends a User-Agent, so require_user_agent servers accept it."""
    server = make_server(scratch={"require_user_agent": True})
    async with plain_client(server, room) as plain, Bot(
        "scratchcommunication", server.url, room
    ) as bot:
        await bot.call("set", name="ua", value="5")
        assert await plain.recv() == set_line("☁ ua", "5")
