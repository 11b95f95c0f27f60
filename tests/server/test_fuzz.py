"""Property-based fuzzing of a live server with random and mutated messages and frames.

Whatever a client sends, over either protocol, the server must survive, answer with documented
close codes and replies only, log no ERROR line and no traceback (checked after every example,
so hypothesis shrinks to the input that caused it), and keep serving everyone else. The module
runs its own server (so fuzz load never disturbs other tests), with the sprite plugins on two
rooms, and a bystander client in another room whose values are checked after every test.
Bounded: the whole module takes about 10 s on an idle 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from plugins.sprites.cloud_socket import FROM_CLIENT, TO_CLIENT_VARIABLES
from tests.conformance.cl4_client import EXTENSION_HANDSHAKE
from tests.conftest import ServerProcess
from tests.plugins.sprite_client import SpriteClient
from tests.plugins.test_sprite_plugins import AttachClient, write_plugin_config

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
# The sprite plugins answer requests in these rooms (every request, unknown names included).
SPRITE_ROOMS = {"scratchcommunication": "fuzz-sprite-sc", "scratchattach": "fuzz-sprite-sa"}
SPRITE_PLUGINS = [
    {"use": "plugins.sprites.scratchcommunication:CloudRequests",
     "rooms": [SPRITE_ROOMS["scratchcommunication"]],
     "handlers": "examples.sprite_handlers:Handlers", "packet_interval": 0.05},
    {"use": "plugins.sprites.scratchattach_plugin:ScratchattachRequests",
     "rooms": [SPRITE_ROOMS["scratchattach"]], "handlers": "examples.sprite_handlers:Handlers",
     "packet_interval": 0.05, "unknown_request_reply": "unknown request"},
]

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
        self.log_checked = 0  # characters of the server log already checked

    def log_problems(self) -> list[str]:
        """ERROR/CRITICAL lines and tracebacks the server logged since the previous call."""
        log = self.server.log()
        new, self.log_checked = log[self.log_checked:], len(log)
        return [line for line in new.splitlines()
                if " ERROR " in line or " CRITICAL " in line or "Traceback" in line]

    def assert_clean_log(self, sent: object = None) -> None:
        """No client input since the last check made the server log an error or a traceback."""
        problems = self.log_problems()
        assert not problems, f"the server logged after {sent!r}:\n" + "\n".join(problems)

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

    def assert_alive(self, sent: object = None) -> None:
        """The server still runs, and logged no error or traceback for what was `sent`."""
        proc = self.server.proc
        assert proc is not None and proc.poll() is None, f"server died:\n{self.server.log()}"
        self.assert_clean_log(sent)


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """A private server for this module, with a bystander that must survive every test."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz-server"))
    write_plugin_config(server, SPRITE_PLUGINS)
    server.start()
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


def check_scratch_text(payload: bytes) -> None:
    """A text message to a Scratch client: newline-joined `set` lines."""
    for line in payload.decode("utf-8").split("\n"):
        message = json.loads(line)
        assert message["method"] == "set" and "value" in message, line


def check_cl4_text(payload: bytes) -> None:
    """A text message to a CL4 client: one JSON object with a string `cmd`."""
    message = json.loads(payload.decode("utf-8"))
    assert type(message) is dict and type(message.get("cmd")) is str, message


async def outcome(client: RawClient, allowed: set[int | None],
                  check_text=check_scratch_text) -> str:
    """Probe with a ping: "open" if answered, "closed" if closed with an allowed code.

    Every text message the server sends before that must pass `check_text`.
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
            check_text(frame.payload)
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


async def send_texts(client: RawClient, texts: list[str]) -> None:
    """Send each text as one frame; lone surrogates go out as the (invalid) UTF-8 they would
    encode to, which closes with 1007."""
    for text in texts:
        await client.send_frame(OP_TEXT, text.encode("utf-8", "surrogatepass"))


async def exercise(harness: Harness, texts: list[str], room: str | None) -> str:
    """Open a connection, maybe handshake into `room`, send `texts`, report the outcome."""
    client = await RawClient.open(harness.server.url)
    try:
        if room is not None:
            await client.send_text(valid_handshake(room))
        await send_texts(client, texts)
        return await outcome(client, MESSAGE_CODES)
    finally:
        await client.abort()


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


# Mutated valid messages, for both protocols. A mutation replaces a value anywhere in a valid
# message (or the whole message) with one of the wrong types, huge numbers, deep nesting, odd
# Unicode or lone surrogates, deletes a key, or adds one.


class Raw:
    """JSON text spliced into a message as it is: what Python's json cannot write (numbers
    beyond its int-string limit, nesting deeper than its recursion limit)."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= 40 else f"{self.text[:20]}...{self.text[-10:]}"
        return f"Raw({shown!r}, {len(self.text)} characters)"


def to_json(value, ensure_ascii: bool) -> str:
    """`value` as JSON text, with `Raw` parts spliced in unchanged."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(key), ensure_ascii=ensure_ascii) + ":"
                              + to_json(item, ensure_ascii) for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(item, ensure_ascii) for item in value) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii)


huge_numbers = st.builds(
    lambda sign, digits, tail: Raw(sign + "1" + "0" * digits + tail),
    st.sampled_from(["", "-"]),
    st.sampled_from([20, 310, 4_300, 4_400, 10_000]),
    st.sampled_from(["", ".5", "e5", "e400", "e-400"]),
) | st.sampled_from([Raw(text) for text in ("1e400", "-1e400", "1e-400", "-0", "2e53", "9" * 17)])
OPENERS = {"[": "]", '{"a":': "}", '{"val":': "}"}
deep_nesting = st.builds(
    lambda opener, depth, leaf: Raw(opener * depth + leaf + OPENERS[opener] * depth),
    st.sampled_from(sorted(OPENERS)),
    st.sampled_from([30, 600, 1_000, 5_000, 100_000]),
    st.sampled_from(["1", '"x"', "null", "[]"]),
)
odd_unicode = st.text(max_size=30) | st.sampled_from(
    ["😀" * 300, "\u2028\u2029", "\x00", "\ufeff", "e\u0301", "☁ " * 200, "\U0010ffff"]
)
with_surrogates = st.builds(lambda a, b, c: a + b + c, st.text(max_size=4), surrogates,
                            st.text(max_size=4))
mutants = json_values | huge_numbers | deep_nesting | odd_unicode | with_surrogates


def _paths(value, path=()):
    """Every place in a message a mutation can reach: the message itself, keys and items."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _replace(value, path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(item, rest, new) if index == head else item
            for index, item in enumerate(value)]


def _delete(value, path):
    head, rest = path[0], path[1:]
    if rest:
        return _replace(value, path[:1], _delete(value[head], rest))
    if isinstance(value, dict):
        return {key: item for key, item in value.items() if key != head}
    return [item for index, item in enumerate(value) if index != head]


@st.composite
def mutated(draw, valid_messages: list[dict], field_names: list[str]):
    """One of `valid_messages` with one to three mutations."""
    message = draw(st.sampled_from(valid_messages))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(message))
        kind = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if kind == "add" and isinstance(message, dict):
            message = {**message, draw(st.sampled_from(field_names) | st.text(max_size=6)):
                       draw(mutants)}
        elif kind == "delete" and len(paths) > 1:
            message = _delete(message, draw(st.sampled_from(paths[1:])))
        else:
            message = _replace(message, draw(st.sampled_from(paths)), draw(mutants))
    return message


@st.composite
def mutated_texts(draw, valid_messages: list[dict], field_names: list[str]) -> str:
    """A mutated message as JSON text; lone surrogates go out escaped or as invalid UTF-8."""
    return to_json(draw(mutated(valid_messages, field_names)), ensure_ascii=draw(st.booleans()))


SCRATCH_MESSAGES = [
    {"method": "handshake", "project_id": "fuzz-a", "user": "player1234"},
    {"method": "set", "name": "☁ x", "value": "12.5"},
    {"method": "set", "name": "☁ y", "value": -3},
    {"method": "create", "name": "☁ z", "value": "0"},
    {"method": "rename", "name": "☁ z", "new_name": "☁ w"},
    {"method": "delete", "name": "☁ w"},
]
SCRATCH_FIELDS = ["method", "project_id", "user", "name", "value", "new_name"]


@settings(FUZZ_SETTINGS, max_examples=400)
@given(
    texts=st.lists(mutated_texts(SCRATCH_MESSAGES, SCRATCH_FIELDS), min_size=1, max_size=4),
    room=st.none() | st.sampled_from(FUZZ_ROOMS),
)
# Issue 9: a project id holding a lone surrogate must join like any other (spec §8.3).
@example(texts=['{"method":"handshake","project_id":"\\ud800","user":"player1234"}'], room=None)
def test_mutated_scratch_messages_never_break_the_server(fuzz, texts, room):
    """Valid Scratch messages with wrong types, huge numbers, deep nesting, odd Unicode or lone
    surrogates anywhere only close with documented codes and never log an error."""

    async def scenario() -> None:
        client = await RawClient.open(fuzz.server.url)
        try:
            if room is not None:
                await client.send_text(valid_handshake(room))
            await send_texts(client, texts)
            await outcome(client, MESSAGE_CODES)
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive(texts)


# CL4: what cloudlink.js sends (tests/conformance/cl4_client.py), every command with its fields.
CL4_HANDSHAKE = EXTENSION_HANDSHAKE
CL4_MESSAGES = [
    CL4_HANDSHAKE,
    {"cmd": "setid", "val": "fuzzer", "listener": "username_cfg"},
    {"cmd": "link", "val": ["default", "fuzz-room"], "listener": "link"},
    {"cmd": "unlink", "val": "fuzz-room", "listener": "unlink"},
    {"cmd": "gmsg", "val": "hello"},
    {"cmd": "gmsg", "val": {"a": [1, 2]}, "rooms": ["fuzz-room"], "listener": "g"},
    {"cmd": "gvar", "name": "score", "val": 5, "rooms": "fuzz-room"},
    {"cmd": "pmsg", "id": "fuzzer", "val": "hi", "listener": "p"},
    {"cmd": "pvar", "id": ["fuzzer", "nobody"], "name": "v", "val": 1.5, "listener": "pv"},
    {"cmd": "direct", "id": "fuzzer", "val": {"cmd": "x", "val": 1}, "listener": "d"},
]
CL4_FIELDS = ["cmd", "val", "id", "name", "rooms", "listener", "mode", "origin", "language",
              "version"]
# Close codes a CL4 client may get (cl4.md: identification 1000, backlog 1013; transport).
CL4_CODES = {1000, 1002, 1007, 1009, 1013}
# What cloudlink.js does before its first command: handshake, then name itself and join a room.
CL4_PREFIXES = [
    [],
    [CL4_HANDSHAKE],
    [CL4_HANDSHAKE, CL4_MESSAGES[1]],
    [CL4_HANDSHAKE, CL4_MESSAGES[1], CL4_MESSAGES[2]],
]


NESTED_600 = "[" * 600 + "]" * 600


@settings(FUZZ_SETTINGS, max_examples=500)
@given(
    prefix=st.sampled_from(CL4_PREFIXES),
    texts=st.lists(mutated_texts(CL4_MESSAGES, CL4_FIELDS), min_size=1, max_size=5),
)
# Issue 9: an invalid field nested ~600 deep gets E:101 like any other invalid field.
@example(prefix=[CL4_HANDSHAKE], texts=[f'{{"cmd":"setid","val":{NESTED_600}}}'])
@example(prefix=[CL4_HANDSHAKE], texts=[f'{{"cmd":"gmsg","val":1,"rooms":{NESTED_600}}}'])
def test_mutated_cl4_messages_never_break_the_server(fuzz, prefix, texts):
    """Valid CL4 packets with wrong types, huge numbers, deep nesting, odd Unicode or lone
    surrogates anywhere get CL4 replies or documented close codes, and never log an error."""

    async def scenario() -> None:
        client = await RawClient.open(fuzz.server.url)
        try:
            for message in prefix:
                await client.send_text(json.dumps(message))
            await send_texts(client, texts)
            if prefix:  # identified as CL4 by the valid handshake
                await outcome(client, CL4_CODES, check_cl4_text)
            else:  # the mutated first message decides the protocol
                await outcome(client, CL4_CODES | MESSAGE_CODES, check_either_text)
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive((prefix, texts))


def check_either_text(payload: bytes) -> None:
    """A text message to a client whose protocol the test did not fix: CL4 or Scratch."""
    try:
        check_cl4_text(payload)
    except (AssertionError, ValueError):
        check_scratch_text(payload)


# Requests to the sprite plugins: the request grammar's tokens, numbers beyond Python's
# int-string limit, odd Unicode. Each one must be answered (an unknown name or bad arguments
# get the documented error reply) without an error in the log.

SPRITE_REQUEST_NAMES = ["test", "add", "echo", "whoami", "ping", "foo", "nosuchname"]
request_arguments = (
    huge_numbers.map(lambda raw: raw.text)
    | st.sampled_from(["5", "-3", "1e5", ".5", "0x10", "1e400", "NaN", "-", '"two words"', "'x'",
                       "()", "b=3", ";", ",", "&", "\\\\", '"unclosed'])
    | st.text(max_size=12)
)


@st.composite
def sprite_requests(draw, separator: str) -> str:
    """A request as the sprite sends it: name, then arguments joined by `separator`; for
    scratchcommunication sometimes in its Python-call form."""
    # Not the example handlers that fail, stall or send megabytes on purpose.
    name = draw(st.sampled_from(SPRITE_REQUEST_NAMES)
                | st.text(max_size=8).filter(lambda n: n not in ("fail", "slow", "repeat")))
    arguments = draw(st.lists(request_arguments, max_size=3))
    if separator == " " and draw(st.booleans()):
        return f"{name}({', '.join(arguments)})"
    return separator.join([name, *arguments])


class _SetRecorder:
    """What AttachClient needs from a peer: `set` and the sets received."""

    def __init__(self, client: RawClient):
        self.client = client
        self.sets: list[dict] = []

    async def set(self, name: str, value: object) -> None:
        await self.client.set_var(name, value)


async def until_answered(fuzz: Harness, client: RawClient, answered, sent: object,
                         timeout: float = 5.0) -> None:
    """Read `set`s until `answered(sets)`; an error in the server log fails at once."""
    sets: list[dict] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while not answered(sets):
        fuzz.assert_clean_log(sent)
        assert asyncio.get_running_loop().time() < deadline, f"no reply to {sent!r}"
        try:
            sets.extend(await client.recv_sets(timeout=0.05))
        except TimeoutError:
            pass


# Integer text beyond Python's int-string limit (4,300 digits): issue 9's example.
OVER_INT_LIMIT = "1" + "0" * 4_400


@settings(FUZZ_SETTINGS, max_examples=150)  # each request waits for its reply
@given(text=sprite_requests(" "))
@example(text=f"echo {OVER_INT_LIMIT}")
@example(text=f"nosuchname {OVER_INT_LIMIT}")
def test_scratchcommunication_requests_are_answered_without_errors(fuzz, text):
    """Any request over an insecure scratchcommunication session gets one reply and never
    logs an error."""

    async def scenario() -> None:
        client = await RawClient.open(fuzz.server.url)
        try:
            await client.handshake(SPRITE_ROOMS["scratchcommunication"])
            model = SpriteClient(f"{uuid.uuid4().int % 100_000:05d}")
            for value in model.insecure_connect():
                await client.set_var(FROM_CLIENT, value)
            sent_at = time.time()
            for value in model.send(text, ts=round(sent_at * 100)):
                await client.set_var(FROM_CLIENT, value)

            def answered(sets: list[dict]) -> bool:
                values = [m["value"] for m in sets if m.get("name") in TO_CLIENT_VARIABLES]
                return bool(values) and model.receive(values, sent_at) is not None

            await until_answered(fuzz, client, answered, text)
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive(text)


@settings(FUZZ_SETTINGS, max_examples=150)
@given(text=sprite_requests("&"))
@example(text=f"test&{OVER_INT_LIMIT}")
def test_scratchattach_requests_are_answered_without_errors(fuzz, text):
    """Any request to the scratchattach plugin gets one complete response and never logs an
    error."""

    async def scenario() -> None:
        client = await RawClient.open(fuzz.server.url)
        try:
            await client.handshake(SPRITE_ROOMS["scratchattach"])
            peer = _SetRecorder(client)
            attach = AttachClient(peer)
            request_id = attach.new_request_id()
            await attach.send(text, request_id)

            def answered(sets: list[dict]) -> bool:
                peer.sets = sets
                values = attach.values_for(request_id)
                return bool(values) and attach.assemble(values) is not None

            await until_answered(fuzz, client, answered, text)
        finally:
            await client.abort()

    fuzz.run(scenario())
    fuzz.assert_alive(text)
