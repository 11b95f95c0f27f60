"""Property-based fuzzing of a live server with random messages and random frames.

Whatever a client sends, the server must survive, answer with documented close codes only,
send nothing but `set` lines, and keep serving everyone else. The module runs its own server
(so fuzz load never disturbs other tests) and a bystander client in another room whose values
are checked after every test.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ServerProcess

from .rawclient import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ConnectionEnded,
    RawClient,
    build_frame,
)

# Close codes the Scratch protocol documents for bad input (scratch-cloud.md §10).
MESSAGE_CODES = {4000, 4002, 4004, 1007, 1009}
FRAME_CODES = MESSAGE_CODES | {1002}
FUZZ_ROOMS = ["fuzz-a", "fuzz-b", "0", "123"]
PROBE = b"fuzz-probe"

# `fuzz` is function-scoped on purpose: the server and bystander are checked once per test,
# not once per example.
SUPPRESSED = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]
FUZZ_SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=SUPPRESSED)


class Harness:
    """The module's server, an event loop to drive it, and the bystander."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.room = f"bystander-{uuid.uuid4().hex[:8]}"
        self.values = {"☁ a": "1", "☁ b": "-2.5", "☁ c": 7}
        self.bystander: RawClient | None = None

    def run(self, coro, timeout: float = 30.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def start_bystander(self) -> None:
        writer = await RawClient.open(self.server.url)
        await writer.handshake(self.room, "writer1")
        for name, value in self.values.items():
            await writer.set_var(name, value)
        assert await writer.is_open()
        await writer.close()
        self.bystander = await RawClient.open(self.server.url)
        await self.bystander.handshake(self.room, "bystander")
        dump = await self.bystander.recv_sets()
        assert dump == [{"method": "set", "name": n, "value": v} for n, v in self.values.items()]

    async def check_bystander(self) -> None:
        """The bystander is still connected, still relayed to, and its room kept its values."""
        assert self.bystander is not None
        assert await self.bystander.is_open(), "the bystander lost its connection"
        newcomer = await RawClient.open(self.server.url)
        await newcomer.handshake(self.room, "newcomer")
        dump = await newcomer.recv_sets()
        assert dump == [{"method": "set", "name": n, "value": v} for n, v in self.values.items()]
        await newcomer.set_var("☁ a", "1")  # the same value, so the expected state holds
        assert await self.bystander.recv_sets() == [
            {"method": "set", "name": "☁ a", "value": "1"}
        ]
        await newcomer.close()

    def assert_alive(self) -> None:
        proc = self.server.proc
        assert proc is not None and proc.poll() is None, f"server died:\n{self.server.log()}"


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A private server for this module, with a bystander that must survive every test."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz-server")).start()
    harness = Harness(server)
    try:
        harness.run(harness.start_bystander())
        yield harness
        harness.assert_alive()
        with urllib.request.urlopen(server.http_url + "/healthz", timeout=5) as reply:
            assert reply.status == 200
        harness.run(harness.check_bystander())
        harness.run(harness.bystander.close())
    finally:
        harness.loop.close()
        server.stop()


@pytest.fixture
def fuzz(harness):
    """The harness, with the server's survival and the bystander checked after the test."""
    yield harness
    harness.assert_alive()
    harness.run(harness.check_bystander())


async def outcome(client: RawClient, allowed: set[int | None]) -> str:
    """Probe with a ping: "open" if answered, "closed" if closed with an allowed code.

    Every text message the server sends before that must be `set` lines.
    """
    await client.send_frame(OP_PING, PROBE)
    while True:
        try:
            frame = await client.recv_frame(timeout=5.0)
        except ConnectionEnded:
            raise AssertionError("the server dropped TCP without a close frame") from None
        if frame.opcode == OP_PONG:
            if frame.payload == PROBE:
                return "open"
            continue  # the answer to a ping of the fuzzed input
        if frame.opcode == OP_CLOSE:
            code = int.from_bytes(frame.payload[:2], "big") if frame.payload else None
            assert code in allowed, f"undocumented close code {code}"
            assert frame.payload[2:] == b"", "close reasons are always empty"
            return "closed"
        if frame.opcode == OP_TEXT:
            for line in frame.payload.decode("utf-8").split("\n"):
                message = json.loads(line)
                assert message["method"] == "set" and "value" in message, line
        elif frame.opcode == OP_PING:
            await client.send_frame(OP_PONG, frame.payload)
        else:
            raise AssertionError(f"unexpected frame from the server: {frame}")


# Strategies

json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()  # NaN and ±Infinity become invalid JSON literals: a 4000
    | st.text(max_size=20)
    | st.sampled_from(["", "0", "-.5", "1e5", "☁ x", "player1", "\u2028", "a\nb"])
)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=8,
)
methods = st.sampled_from(
    ["handshake", "set", "create", "delete", "rename", "get", "ack", "", "SET", "handshake "]
) | json_values
names = st.sampled_from(["☁ x", "☁ y", ":cloud: z", "no prefix", "☁ ", ""]) | json_values
values = (
    st.sampled_from(["0", "-1.5", "", "-.", "abc", "1e5", "٣٤", "-", ".", "9" * 100_001])
    | st.builds(
        lambda sign, whole, frac: sign + whole + frac,
        st.sampled_from(["", "-"]),
        st.text("0123456789", max_size=30),
        st.just("") | st.text("0123456789", max_size=10).map(lambda d: "." + d),
    )
    | json_values
)
USERNAME_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
users = (
    st.sampled_from(["player1", "player", "ScratchCat", "ceebee", "bad name", "e" * 21])
    | st.text(USERNAME_CHARACTERS, min_size=1, max_size=20)
    | json_values
)
project_ids = st.sampled_from(FUZZ_ROOMS + ["", "😀" * 500]) | st.text(max_size=30) | json_values
messages = st.fixed_dictionaries(
    {},
    optional={
        "method": methods,
        "name": names,
        "value": values,
        "user": users,
        "project_id": project_ids,
        "new_name": names,
    },
)
extras = st.dictionaries(st.text(max_size=8), json_values, max_size=2)


@st.composite
def message_texts(draw) -> str:
    """A JSON message (maybe with extra keys, odd spacing or a trailing newline)."""
    message = draw(messages)
    message.update({k: v for k, v in draw(extras).items() if k not in message})
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    return text + draw(st.sampled_from(["", "\n", " \t\r\n", "\n{}", "x"]))


surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
random_texts = (
    st.text(max_size=200)
    | st.text(st.sampled_from('{}[]":,\\ \n0123456789.-eEtrufalsn'), max_size=200)
    | st.integers(min_value=1, max_value=50_000).map(lambda n: "[" * n + "]" * n)
    | st.integers(min_value=1, max_value=50_000).map(lambda n: '{"a":' * n + "1" + "}" * n)
    | st.text(surrogates, min_size=1, max_size=3).map(lambda s: json.dumps({"method": s}))
)


def valid_handshake(room: str) -> str:
    return json.dumps({"method": "handshake", "project_id": room, "user": "player1234"})


async def exercise(harness: Harness, texts: list[str], room: str | None) -> str:
    """Open a connection, maybe handshake into `room`, send `texts`, report the outcome."""
    client = await RawClient.open(harness.server.url)
    try:
        if room is not None:
            await client.send_text(valid_handshake(room))
        for text in texts:
            # Lone surrogates are sent as the (invalid) UTF-8 they would encode to.
            await client.send_frame(OP_TEXT, text.encode("utf-8", "surrogatepass"))
        allowed = set(MESSAGE_CODES)
        if any(not _is_utf8(text) for text in texts):
            allowed.add(1007)
        return await outcome(client, allowed)
    finally:
        await client.abort()


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Tests


@settings(FUZZ_SETTINGS, max_examples=200)  # generating these is the slow part
@given(
    texts=st.lists(message_texts(), min_size=1, max_size=6),
    room=st.none() | st.sampled_from(FUZZ_ROOMS),
)
def test_random_json_messages_never_break_the_server(fuzz, texts, room):
    """Random protocol-shaped messages, before or after a handshake, only ever close with
    documented codes; the server and other rooms are unaffected."""
    fuzz.run(exercise(fuzz, texts, room))
    fuzz.assert_alive()


@FUZZ_SETTINGS
@given(
    texts=st.lists(random_texts, min_size=1, max_size=4),
    room=st.none() | st.sampled_from(FUZZ_ROOMS),
)
def test_random_text_never_breaks_the_server(fuzz, texts, room):
    """Random text (garbage, deep nesting, lone surrogates) only closes with documented codes."""
    fuzz.run(exercise(fuzz, texts, room))
    fuzz.assert_alive()


frames = st.builds(
    lambda opcode, payload, fin, rsv, mask: build_frame(
        opcode, payload, fin=fin, rsv=rsv, mask=mask
    ),
    opcode=st.integers(0, 15) | st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]),
    payload=st.binary(max_size=300) | st.binary(max_size=2).map(lambda b: b"\x03\xe8" + b),
    fin=st.booleans() | st.just(True),
    rsv=st.just(0) | st.sampled_from([0x10, 0x20, 0x40]),
    mask=st.just(True) | st.booleans(),
)


@FUZZ_SETTINGS
@given(
    sequence=st.lists(frames, min_size=1, max_size=6),
    room=st.none() | st.sampled_from(FUZZ_ROOMS),
    together=st.booleans(),
)
def test_random_frames_never_break_the_server(fuzz, sequence, room, together):
    """Random well-delimited frames (any opcode, flags, mask and payload) close with documented
    codes or an echo of the client's own close code."""

    async def scenario() -> None:
        client = await RawClient.open(fuzz.server.url)
        try:
            if room is not None:
                await client.send_text(valid_handshake(room))
            if together:
                await client.send_raw(b"".join(sequence))
            else:
                for frame in sequence:
                    await client.send_raw(frame)
            allowed: set[int | None] = set(FRAME_CODES) | {None}
            for frame in sequence:  # the client may have sent a close frame of its own
                if frame[0] & 0x0F == OP_CLOSE:
                    allowed.update(range(1000, 5000))
            await outcome(client, allowed)
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive()


@settings(max_examples=150, deadline=None, suppress_health_check=SUPPRESSED)
@given(data=st.binary(min_size=1, max_size=400), room=st.none() | st.just("fuzz-a"))
def test_random_bytes_after_upgrade_never_break_the_server(fuzz, data, room):
    """Arbitrary bytes after the upgrade (then end of input) never crash the server, and any
    close frame it sends carries a documented or echoed code."""

    async def scenario() -> None:
        client = await RawClient.open(fuzz.server.url)
        try:
            if room is not None:
                await client.send_text(valid_handshake(room))
            try:
                await client.send_raw(data + build_frame(OP_PING, PROBE))
                client.write_eof()
            except ConnectionError:
                return
            while True:
                try:
                    frame = await client.recv_frame(timeout=5.0)
                except ConnectionEnded:
                    return  # the input ended mid-frame: dropping TCP is fine
                if frame.opcode == OP_CLOSE:
                    code = int.from_bytes(frame.payload[:2], "big") if frame.payload else None
                    assert code is None or code in FRAME_CODES or 1000 <= code < 5000
                    return
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive()


@settings(max_examples=60, deadline=None, suppress_health_check=SUPPRESSED)
@given(data=st.binary(min_size=1, max_size=600))
def test_random_bytes_instead_of_http_never_break_the_server(fuzz, data):
    """Arbitrary bytes where the HTTP upgrade should be never crash the server."""

    async def scenario() -> None:
        client = await RawClient.connect_tcp(fuzz.server.url)
        try:
            try:
                await client.send_raw(data)
                client.write_eof()
            except ConnectionError:
                return
            assert await client.wait_eof(5.0), "the server kept a half-closed connection open"
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive()
