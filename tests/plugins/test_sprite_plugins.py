"""Socket-level tests of the sprite plugins: a real server, websocket clients playing the sprites.

The scratchcommunication side is played by `sprite_client.SpriteClient` (a Python model of the
sprite), the scratchattach side by the small `AttachClient` below. One server serves every
test: rooms `sc-*` get `CloudRequests` (EC and RSA keys), `sa-*` and `sa256-*` get
`ScratchattachRequests` (the latter with Scratch's 256-character values, so long responses
come in parts), every other room has no plugin.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import stat
import subprocess
import sys
import time
import uuid

import pytest
from websockets.asyncio.client import connect

from plugins.sprites import digits
from plugins.sprites import scratchattach as sa
from plugins.sprites.cloud_socket import FROM_CLIENT, TO_CLIENT_VARIABLES
from plugins.sprites.keys import ECServerKey, RSAServerKey, load_server_key
from plugins.sprites.request_api import collect_handlers, format_result, request
from plugins.sprites.scratchcommunication import CloudSockets
from tests.conftest import ROOT, ServerProcess, toml_value
from tests.plugins.server_keys import Keys

from .sprite_client import SpriteClient

USER_AGENT = "stratus-sprite-plugin-tests/1.0 (https://example.invalid/contact)"
TO_CLIENT = set(TO_CLIENT_VARIABLES)
FROM_HOST = set(sa.FROM_HOST_VARIABLES)
SPRITE_NAMES = TO_CLIENT | FROM_HOST | {FROM_CLIENT, sa.TO_HOST}
HANDLERS = "examples.sprite_handlers:Handlers"


# ------------------------------------------------------------------------------------ server
def write_plugin_config(proc: ServerProcess, plugins: list[dict]) -> None:
    """Append `[[plugins]]` tables to a ServerProcess's config file (before it starts)."""
    lines = []
    for entry in plugins:
        lines.append("[[plugins]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
        lines.append("")
    with proc.config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + "\n".join(lines))



@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    """A fresh EC and RSA server key pair, written to 0600 files."""
    return Keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def sprite_server(tmp_path_factory, keys) -> ServerProcess:
    """One server with the sprite plugins on `sc-*`, `sa-*` and `sa256-*` rooms."""
    workdir = tmp_path_factory.mktemp("sprite-server")
    proc = ServerProcess(workdir, {"server": {"log_level": "debug"}})
    write_plugin_config(proc, [
        {
            "use": "plugins.sprites.scratchcommunication:CloudRequests",
            "rooms": ["sc-*"],
            "handlers": HANDLERS,
            "ec_key_file": str(keys.ec_file),
            "rsa_key_file": str(keys.rsa_file),
            "packet_interval": 0.05,
            "handler_timeout": 5,
        },
        {
            "use": "plugins.sprites.scratchcommunication:CloudRequests",
            "rooms": ["scidle-*"],
            "handlers": HANDLERS,
            "session_idle_timeout": 1,
            "expiry_interval": 0.2,
        },
        {
            "use": "plugins.sprites.scratchattach_plugin:ScratchattachRequests",
            "rooms": ["sa-*"],
            "handlers": HANDLERS,
            "packet_interval": 0.05,
        },
        {
            "use": "plugins.sprites.scratchattach_plugin:ScratchattachRequests",
            "rooms": ["sa256-*"],
            "handlers": HANDLERS,
            "max_value_length": 256,
            "packet_interval": 0.05,
        },
    ])
    proc.start()
    yield proc
    proc.stop()


def fresh_room(prefix: str) -> str:
    """A room id no other test uses, matching one plugin's glob."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ------------------------------------------------------------------------------------ clients
class Peer:
    """A Scratch cloud client in one room that records every `set` it receives."""

    def __init__(self, ws, room: str) -> None:
        self.ws = ws
        self.room = room
        self.sets: list[dict] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def join(cls, url: str, room: str, user: str = "player1234") -> Peer:
        """Connect and handshake into `room`."""
        ws = await connect(url, compression=None, user_agent_header=USER_AGENT,
                           ping_interval=None, proxy=None, max_size=None, open_timeout=5)
        await ws.send(json.dumps({"method": "handshake", "user": user, "project_id": room}))
        return cls(ws, room)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                for line in str(frame).split("\n"):
                    if line:
                        self.sets.append(json.loads(line))
                self._changed.set()
        except Exception:
            pass

    async def set(self, name: str, value: object) -> None:
        """Send one `set`."""
        await self.ws.send(json.dumps({"method": "set", "name": name, "value": value},
                                      ensure_ascii=False))

    async def wait_for(self, predicate, timeout: float = 5.0):
        """Wait until `predicate(sets)` returns something truthy; return it."""
        async with asyncio.timeout(timeout):
            while True:
                result = predicate(self.sets)
                if result:
                    return result
                self._changed.clear()
                await self._changed.wait()

    def names(self) -> set[str]:
        """Names of every variable this peer received."""
        return {message.get("name") for message in self.sets}

    async def close(self) -> None:
        """Close the websocket."""
        await self.ws.close()
        self._reader.cancel()


def centiseconds_now() -> int:
    """The sprite's activity id for now."""
    return round(time.time() * 100)


class Sprite:
    """A SpriteClient bound to a Peer: sends its packets and reads its TO_CLIENT values."""

    def __init__(self, peer: Peer, client_id: str | None = None, seed: int | None = None):
        self.peer = peer
        self.model = SpriteClient(client_id or f"{random.randrange(100_000):05d}",
                                  seed=seed if seed is not None else random.randrange(10**9))
        self.last_ts = 0

    def ts(self) -> int:
        """A fresh activity id, strictly above the previous one (the sprite waits 0.1 s)."""
        self.last_ts = max(centiseconds_now(), self.last_ts + 1)
        return self.last_ts

    async def put(self, values: list[str]) -> None:
        """Write packet values to FROM_CLIENT in order."""
        for value in values:
            await self.peer.set(FROM_CLIENT, value)

    async def connect_insecurely(self) -> None:
        """§6.1."""
        await self.put(self.model.insecure_connect())

    async def connect_ec(self, key: ECServerKey) -> None:
        """§6.2 against the server's EC key."""
        await self.put(self.model.ec_connect(key.public_point.hex(), self.ts()))
        await asyncio.sleep(0.02)

    async def connect_rsa(self, key: RSAServerKey) -> None:
        """§6.3 against the server's RSA key."""
        await self.put(self.model.rsa_connect(key.modulus, key.public_exponent, self.ts()))
        await asyncio.sleep(0.02)

    def packets_since(self, start: int) -> list[str]:
        """TO_CLIENT values received since index `start` of the peer's sets."""
        return [m["value"] for m in self.peer.sets[start:] if m.get("name") in TO_CLIENT]

    async def request(self, text: str, timeout: float = 5.0) -> tuple[str, list[str]]:
        """Send a message and receive the reply like the sprite: (reply, its packet values)."""
        start = len(self.peer.sets)
        recv_start = time.time()
        sent = self.model.send(text, ts=self.ts())
        await self.put(sent)
        self.last_sent = sent

        def complete(_sets):
            values = self.packets_since(start)
            reply = self.model.receive(values, recv_start) if values else None
            return (reply, values) if reply is not None else None

        return await self.peer.wait_for(complete, timeout)


# ------------------------------------------------------------------------------------ scratchattach
class AttachClient:
    """Plays the scratchattach template sprite over a Peer (spec §11)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    @staticmethod
    def new_request_id() -> str:
        """RID = random 10001–99999 followed by 0."""
        return f"{random.randrange(10001, 100_000)}0"

    async def send(self, text: str, request_id: str) -> None:
        """Write a request to TO_HOST, in 245-digit chunks if it is long."""
        encoded = sa.encode(text)
        if len(encoded) < sa.REQUEST_CHUNK_DIGITS:
            await self.peer.set(sa.TO_HOST, f"{encoded}.{request_id}")
            return
        chunks = [encoded[i : i + sa.REQUEST_CHUNK_DIGITS]
                  for i in range(0, len(encoded), sa.REQUEST_CHUNK_DIGITS)]
        if len(chunks[-1]) == sa.REQUEST_CHUNK_DIGITS:
            chunks.append("")
        for index, chunk in enumerate(chunks):
            more = "-" if index < len(chunks) - 1 else ""
            await self.peer.set(sa.TO_HOST, f"{more}{chunk}.{request_id}")

    def values_for(self, request_id: str, start: int = 0) -> list[str]:
        """FROM_HOST values naming this request id, in arrival order."""
        marker = "." + request_id
        return [m["value"] for m in self.peer.sets[start:]
                if m.get("name") in FROM_HOST and marker in m["value"]]

    @staticmethod
    def assemble(values: list[str]) -> tuple[str, bool] | None:
        """(body digits, raw?) once the final part is among `values`, parts in order."""
        parts: dict[int, str] = {}
        final = None
        for value in values:
            body, tail = value.split(".", 1)
            if tail.endswith("222"):
                final = (body, tail[-4] == "3")
            else:
                parts[int(tail[-4:-1])] = body
        if final is None:
            return None
        if sorted(parts) != list(range(1, len(parts) + 1)):
            return None
        return "".join(parts[k] for k in sorted(parts)) + final[0], final[1]

    async def request(self, text: str, timeout: float = 5.0, request_id: str | None = None):
        """Send a request and wait for the complete response: (decoded text or list, values)."""
        request_id = request_id or self.new_request_id()
        start = len(self.peer.sets)
        await self.send(text, request_id)

        def complete(_sets):
            values = self.values_for(request_id, start)
            assembled = self.assemble(values) if values else None
            return (assembled, values) if assembled else None

        (body, raw), values = await self.peer.wait_for(complete, timeout)
        if raw:
            return body, values
        items = sa.decode_list(body)
        if body.endswith(str(sa.LIST_SEPARATOR_CODE)):
            return items, values
        return sa.decode(body), values


async def expect_silence(peer: Peer, names: set[str], since: int, wait: float = 0.6) -> None:
    """Assert the peer received none of `names` after index `since` within `wait` seconds."""
    await asyncio.sleep(wait)
    got = [m for m in peer.sets[since:] if m.get("name") in names]
    assert got == [], f"unexpected values {got!r}"


# ====================================================================================== tests
async def test_insecure_connect_and_request_round_trip(sprite_server):
    """Insecure connect + `test 5`: one reply packet 1<digits>.<CID><RND3>0 on TO_CLIENT_n."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_insecurely()
        reply, values = await sprite.request("test 5")
        assert reply == "Hello client! 5 squared is 25."
        assert len(values) == 1
        value = values[0]
        assert value == "1" + digits.encode(reply) + value[value.index(".") :]
        assert value.split(".")[1][:5] == sprite.model.client_id
        assert value.endswith("0") and len(value.split(".")[1]) == 5 + 3 + 1
    finally:
        await peer.close()


async def test_insecure_request_errors_and_grammar(sprite_server):
    """Syntax errors, unknown names, handler failures and sub-requests get the documented reply."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_insecurely()
        assert (await sprite.request("add -3 1e1"))[0] == "7"
        assert (await sprite.request('echo "two words"'))[0] == "two words"
        assert (await sprite.request("add(2, b=0.5)"))[0] == "2.5"
        assert (await sprite.request('echo("x")'))[0] == "The command syntax was wrong."
        assert (await sprite.request("nosuch 1"))[0] == "The command syntax was wrong."
        assert (await sprite.request("fail"))[0] == "Something went wrong."
        assert (await sprite.request("slow 3"))[0] == "Something went wrong."
        assert (await sprite.request("repeat x 200000"))[0] == "That is too many."
        assert (await sprite.request("add 1 1; test 3"))[0] == "Hello client! 3 squared is 9."
        assert (await sprite.request("whoami"))[0] == "player1234"
    finally:
        await peer.close()


async def test_insecure_reply_over_two_packets_is_refused(sprite_server):
    """An insecure reply that needs 3+ packets is never sent; the request gets an error reply."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_insecurely()
        reply, values = await sprite.request("repeat ab 60000", timeout=10)
        assert reply == "Something went wrong."
        assert len(values) == 1
        two = await sprite.request("repeat abc 10000", timeout=10)  # 30000 chars: one packet
        assert two[0] == "abc" * 10000 and len(two[1]) == 1
        three = await sprite.request("repeat abcde 12000", timeout=10)  # 60000: two packets
        assert three[0] == "abcde" * 12000 and len(three[1]) == 2
    finally:
        await peer.close()


async def test_ec_secure_connect_and_request(sprite_server, keys):
    """EC connect with the server's key + request; the reply decrypts and its salt is in window."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_ec(keys.ec)
        before = time.time()
        reply, values = await sprite.request("test 7")
        assert reply == "Hello client! 7 squared is 49."
        assert len(values) == 1
        salt = int(values[0].split(".")[0][-15:])
        assert 100 * (before - 2) <= salt <= 100 * (time.time() + 30)
        assert salt not in sprite.model.used_salts[:-1]
        # A second request: salts keep increasing.
        reply2, values2 = await sprite.request("add 1 2")
        assert reply2 == "3"
        assert int(values2[0].split(".")[0][-15:]) > salt
        long_reply, parts = await sprite.request("repeat xy 40000", timeout=10)
        assert long_reply == "xy" * 40000 and len(parts) == 2
    finally:
        await peer.close()


async def test_rsa_secure_connect_and_request(sprite_server, keys):
    """RSA connect (old projects) + request round trip."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_rsa(keys.rsa)
        assert (await sprite.request("test 2"))[0] == "Hello client! 2 squared is 4."
    finally:
        await peer.close()


async def test_reconnect_insecurely_after_secure_session(sprite_server, keys):
    """`connect insecurely` after a secure session (its `_connect` encrypted) still works."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_ec(keys.ec)
        assert (await sprite.request("add 2 2"))[0] == "4"
        sprite.model.client_id = f"{(int(sprite.model.client_id) + 1) % 100_000:05d}"
        await sprite.put(sprite.model.send("_connect", ts=sprite.ts()))  # under the old key
        sprite.model.key_str = None
        assert (await sprite.request("add 3 3"))[0] == "6"
    finally:
        await peer.close()


async def test_second_client_sees_nothing_and_nothing_is_stored(sprite_server, keys):
    """FROM/TO traffic is unicast and never stored: room members and later joiners see none."""
    room = fresh_room("sc")
    first = await Peer.join(sprite_server.url, room, "alice")
    second = await Peer.join(sprite_server.url, room, "bob")
    try:
        await second.set("☁ marker", "1")  # an ordinary variable, to see the relay works
        await first.wait_for(lambda sets: any(m["name"] == "☁ marker" for m in sets))
        sprite = Sprite(first)
        await sprite.connect_insecurely()
        assert (await sprite.request("test 3"))[0].startswith("Hello client!")
        secure = Sprite(first)
        await secure.connect_ec(keys.ec)
        assert (await secure.request("test 4"))[0].startswith("Hello client!")
        await asyncio.sleep(0.3)
        assert not (second.names() & SPRITE_NAMES), second.sets
        third = await Peer.join(sprite_server.url, room, "carol")
        try:
            await third.wait_for(lambda sets: any(m["name"] == "☁ marker" for m in sets))
            await asyncio.sleep(0.2)
            assert not (third.names() & SPRITE_NAMES), third.sets
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


async def test_client_may_not_write_reply_variables(sprite_server):
    """A client's own TO_CLIENT_n / FROM_HOST_n writes in a served room are not relayed."""
    for prefix, name in (("sc", "☁ TO_CLIENT_1"), ("sa", "☁ FROM_HOST_1")):
        room = fresh_room(prefix)
        writer = await Peer.join(sprite_server.url, room, "mallory")
        victim = await Peer.join(sprite_server.url, room, "alice")
        try:
            await asyncio.sleep(0.1)
            await writer.set(name, "1234.567890")
            await writer.set("☁ marker", "2")
            await victim.wait_for(lambda sets: any(m["name"] == "☁ marker" for m in sets))
            assert name not in victim.names()
        finally:
            await writer.close()
            await victim.close()


async def test_other_connection_cannot_inject_into_a_client_id(sprite_server):
    """Packets for a CID bound to another connection are dropped; the owner is unaffected."""
    room = fresh_room("sc")
    owner = await Peer.join(sprite_server.url, room, "alice")
    attacker = await Peer.join(sprite_server.url, room, "mallory")
    try:
        victim = Sprite(owner)
        await victim.connect_insecurely()
        assert (await victim.request("add 1 1"))[0] == "2"
        mallory = Sprite(attacker, client_id=victim.model.client_id)
        start_owner, start_attacker = len(owner.sets), len(attacker.sets)
        await mallory.connect_insecurely()  # tries to take over the CID
        await mallory.put(mallory.model.send("test 9", ts=mallory.ts()))
        await mallory.put(mallory.model.send("whoami", ts=mallory.ts()))
        await expect_silence(owner, TO_CLIENT, start_owner)
        await expect_silence(attacker, TO_CLIENT, start_attacker, wait=0)
        assert (await victim.request("whoami"))[0] == "alice"
    finally:
        await owner.close()
        await attacker.close()


async def test_replayed_secure_packet_is_dropped(sprite_server, keys):
    """Re-sending a secure request packet (same SALT) gets no second reply; the session works."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_ec(keys.ec)
        assert (await sprite.request("add 5 5"))[0] == "10"
        start = len(peer.sets)
        await sprite.put(sprite.last_sent)
        await expect_silence(peer, TO_CLIENT, start)
        assert (await sprite.request("add 6 6"))[0] == "12"
    finally:
        await peer.close()


async def test_replayed_handshake_is_dropped(sprite_server, keys):
    """Replaying a whole secure connect from another connection does not create a session."""
    room = fresh_room("sc")
    owner = await Peer.join(sprite_server.url, room, "alice")
    attacker = await Peer.join(sprite_server.url, room, "mallory")
    try:
        sprite = Sprite(owner)
        connect_values = sprite.model.ec_connect(keys.ec.public_point.hex(), sprite.ts())
        await sprite.put(connect_values)
        await asyncio.sleep(0.05)
        assert (await sprite.request("add 1 2"))[0] == "3"
        # Same blob under a fresh client id from another connection: refused as a replay.
        other_id = f"{(int(sprite.model.client_id) + 7) % 100_000:05d}"
        replay = [value.replace("." + sprite.model.client_id, "." + other_id)
                  for value in connect_values]
        mallory = Sprite(attacker, client_id=other_id)
        mallory.model.key_str = sprite.model.key_str  # pretend the attacker knew the key
        start = len(attacker.sets)
        await mallory.put(replay)
        await asyncio.sleep(0.05)
        # The key is unknown to the server for this id: the packet is treated as a connect.
        await mallory.put(mallory.model.send("add 2 2", ts=mallory.ts()))
        await expect_silence(attacker, TO_CLIENT, start)
    finally:
        await owner.close()
        await attacker.close()


async def test_bogus_future_salt_packet_has_no_effect(sprite_server, keys):
    """A bogus secure packet with SALT = now + 29 s (own or another CID) does not block anyone."""
    room = fresh_room("sc")
    owner = await Peer.join(sprite_server.url, room, "alice")
    attacker = await Peer.join(sprite_server.url, room, "mallory")
    try:
        sprite = Sprite(owner)
        await sprite.connect_ec(keys.ec)
        assert (await sprite.request("add 1 1"))[0] == "2"
        future_salt = f"{centiseconds_now() + 2900:015d}"
        garbage = digits.encode("1234:4:abcdefghijklmnopqrs") + future_salt
        for peer in (attacker, owner):  # another connection, then the owner's own connection
            await peer.set(FROM_CLIENT, f"1{garbage}.{sprite.model.client_id}42")
        await asyncio.sleep(0.1)
        assert (await sprite.request("add 2 2"))[0] == "4"
        assert not (attacker.names() & TO_CLIENT)
    finally:
        await owner.close()
        await attacker.close()


async def test_secure_connects_are_rate_limited(sprite_server, keys):
    """More than 12 secure connects a minute from one connection are dropped unprocessed."""
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        connect_digits = digits.encode("_safe_connect:")
        for number in range(12):  # connects naming missing fragments still count
            act = f"{centiseconds_now():015d}"
            await peer.set(FROM_CLIENT, f"1{connect_digits}00001{act}.{number:05d}1")
        sprite = Sprite(peer)
        await sprite.connect_ec(keys.ec)
        start = len(peer.sets)
        await sprite.put(sprite.model.send("add 1 1", ts=sprite.ts()))
        await expect_silence(peer, TO_CLIENT, start)
    finally:
        await peer.close()


async def test_idle_sessions_expire_on_the_periodic_timer(sprite_server):
    """An idle session is swept by the timer: its CID is free again without any new packet."""
    room = fresh_room("scidle")
    first = await Peer.join(sprite_server.url, room, "alice")
    second = await Peer.join(sprite_server.url, room, "bob")
    try:
        sprite = Sprite(first)
        await sprite.connect_insecurely()
        assert (await sprite.request("add 1 1"))[0] == "2"
        taker = Sprite(second, client_id=sprite.model.client_id)
        start = len(second.sets)
        await taker.connect_insecurely()
        await taker.put(taker.model.send("whoami", ts=taker.ts()))
        await expect_silence(second, TO_CLIENT, start, wait=0.3)  # still bound to alice
        await asyncio.sleep(1.5)  # alice stays silent; the sweep frees her client id
        await taker.connect_insecurely()
        assert (await taker.request("whoami"))[0] == "bob"
    finally:
        await first.close()
        await second.close()


async def test_sessions_end_with_the_connection(sprite_server):
    """A CID is freed when its websocket closes: another connection may then use it."""
    room = fresh_room("sc")
    first = await Peer.join(sprite_server.url, room, "alice")
    sprite = Sprite(first)
    await sprite.connect_insecurely()
    assert (await sprite.request("add 1 1"))[0] == "2"
    await first.close()
    await asyncio.sleep(0.2)
    second = await Peer.join(sprite_server.url, room, "bob")
    try:
        again = Sprite(second, client_id=sprite.model.client_id)
        await again.connect_insecurely()
        assert (await again.request("whoami"))[0] == "bob"
    finally:
        await second.close()


async def test_room_without_plugin_relays_sprite_variables(sprite_server):
    """Case 11: without a plugin, FROM_CLIENT / TO_HOST / replies are ordinary variables."""
    room = fresh_room("plain")
    first = await Peer.join(sprite_server.url, room, "alice")
    second = await Peer.join(sprite_server.url, room, "bob")
    try:
        await asyncio.sleep(0.1)
        values = {
            FROM_CLIENT: "15903151414050320.1234598765",
            "☁ TO_CLIENT_2": "13409.123454070",
            sa.TO_HOST: "51374733.123450",
            "☁ FROM_HOST_1": "3537.1000000005569222",
        }
        for name, value in values.items():
            await first.set(name, value)
        got = await second.wait_for(
            lambda sets: {m["name"]: m["value"] for m in sets if m["name"] in values}
            if {m["name"] for m in sets} >= set(values) else None
        )
        assert got == values
        third = await Peer.join(sprite_server.url, room, "carol")
        try:
            dump = await third.wait_for(
                lambda sets: {m["name"]: m["value"] for m in sets}
                if {m["name"] for m in sets} >= set(values) else None
            )
            assert {name: dump[name] for name in values} == values
        finally:
            await third.close()
    finally:
        await first.close()
        await second.close()


async def test_scratchattach_request_round_trip(sprite_server):
    """scratchattach: `ping` → text, `foo&TimMcCool` → list, `add&2&3` → raw digits (3222)."""
    peer = await Peer.join(sprite_server.url, fresh_room("sa"))
    other = await Peer.join(sprite_server.url, peer.room, "bob")
    try:
        client = AttachClient(peer)
        text, values = await client.request("ping")
        assert text == "pong" and values[0].endswith("2222")
        assert values[0] == f"{sa.encode('pong')}.{values[0].split('.')[1]}"
        items, values = await client.request("foo&TimMcCool", request_id="618120")
        assert items == ["TimMcCool", "200", "TimMcCool"]
        assert values == [
            "603745462526494943891119198960374546252649494389.6181202222"
        ]  # the template's saved FROM_HOST_2 vector
        raw, values = await client.request("add&2&3")
        assert raw == "5" and values[0].endswith("3222")
        failed, _ = await client.request("fail")
        assert failed == ["Error in request fail", "Check the Python console"]
        await asyncio.sleep(0.2)
        assert not (other.names() & SPRITE_NAMES)
    finally:
        await peer.close()
        await other.close()




async def test_scratchattach_unknown_request_gets_no_reply(sprite_server):
    """An unknown request name is not answered (the sprite shows TIMEOUT)."""
    peer = await Peer.join(sprite_server.url, fresh_room("sa"))
    try:
        start = len(peer.sets)
        await AttachClient(peer).send("nosuch&1", "123450")
        await expect_silence(peer, FROM_HOST, start)
    finally:
        await peer.close()


async def test_scratchattach_chunked_request(sprite_server):
    """A request longer than 245 digits arrives in chunks and is answered once."""
    peer = await Peer.join(sprite_server.url, fresh_room("sa"))
    try:
        client = AttachClient(peer)
        long_text = "The quick brown fox jumps over the lazy dog " * 12
        text, values = await client.request("echo&" + long_text)
        assert text == long_text and len(values) == 1
    finally:
        await peer.close()


async def test_scratchattach_multipart_response_and_rerequest(sprite_server):
    """A long response comes in parts (256-char values); a re-request `k.RID9` resends part k+1."""
    peer = await Peer.join(sprite_server.url, fresh_room("sa256"))
    try:
        client = AttachClient(peer)
        request_id = "543210"
        text, values = await client.request("repeat&ab&200", request_id=request_id)
        assert text == "ab" * 200
        assert len(values) == 4 and all(len(value) <= 256 for value in values)
        assert [value[-4:] for value in values] == ["0011", "0021", "0031", "2222"]
        start = len(peer.sets)
        await peer.set(sa.TO_HOST, f"1.{request_id}9")
        resent = await peer.wait_for(lambda sets: client.values_for(request_id, start))
        assert resent == [values[1]]
        # The same request id again is a duplicate on this connection: not answered again.
        start = len(peer.sets)
        await client.send("repeat&ab&200", request_id)
        await expect_silence(peer, FROM_HOST, start)
    finally:
        await peer.close()


async def test_scratchattach_same_request_id_on_two_connections(sprite_server):
    """Case 10: two clients using the same RID each get only their own answer."""
    room = fresh_room("sa")
    first = await Peer.join(sprite_server.url, room, "alice")
    second = await Peer.join(sprite_server.url, room, "bob")
    try:
        a, b = AttachClient(first), AttachClient(second)
        (text_a, _), (text_b, _) = await asyncio.gather(
            a.request("whoami", request_id="777770"), b.request("whoami", request_id="777770")
        )
        assert (text_a, text_b) == ("alice", "bob")
        await asyncio.sleep(0.2)
        assert len(a.values_for("777770")) == 1 and len(b.values_for("777770")) == 1
    finally:
        await first.close()
        await second.close()


async def test_scratchattach_push_to_room(sprite_server):
    """A handler's `announce` pushes to every connection of the room (RID 100000000xxxx)."""
    room = fresh_room("sa")
    first = await Peer.join(sprite_server.url, room, "alice")
    second = await Peer.join(sprite_server.url, room, "bob")
    try:
        await asyncio.sleep(0.1)
        reply, _ = await AttachClient(first).request("announce&hi")
        assert reply == "2"  # the handler returns how many connections got the push

        def pushed(sets):
            return [m["value"] for m in sets
                    if m["name"] in FROM_HOST and ".100000000" in m["value"]]

        for peer in (first, second):
            values = await peer.wait_for(pushed)
            assert len(values) == 1
            body, tail = values[0].split(".")
            assert body == sa.encode("hi") and tail.startswith(sa.PUSH_ID_PREFIX)
            assert tail.endswith("2222") and len(tail) == 13 + 4
    finally:
        await first.close()
        await second.close()


async def test_private_key_is_never_logged(sprite_server, keys):
    """The server log (at debug level) holds neither private key."""
    await asyncio.sleep(0.1)
    log = sprite_server.log()
    assert "loaded EC server key" in log
    assert keys.ec.private_scalar.hex() not in log
    assert str(keys.rsa.private_exponent) not in log


# ------------------------------------------------------------------------------------ units
class _RecordingClient:
    """Stands in for server.plugins.Client: records send_variable calls with their times."""

    open = True

    def __init__(self) -> None:
        self.writes: list[tuple[float, str, str]] = []

    def send_variable(self, name: str, value: str) -> None:
        self.writes.append((time.monotonic(), name, value))


async def test_paced_writer_spaces_sets_with_one_timer():
    """Planned sets go out in order, >= min_interval apart, from a single pending timer."""
    from plugins.sprites.pacing import OutboundPacer
    from plugins.sprites.runtime import PacedWriter

    client = _RecordingClient()
    writer = PacedWriter(asyncio.get_running_loop(), client, 0.05)
    pacer = OutboundPacer(TO_CLIENT_VARIABLES, 0.05)
    first = writer.enqueue(pacer.schedule_all(["1.0", "2.0", "3.0"], time.time()))
    second = writer.enqueue(pacer.schedule_all(["4.0"], time.time()))
    assert writer._timer is not None and writer.pending == 4
    assert await first is True and await second is True
    assert [value for _, _, value in client.writes] == ["1.0", "2.0", "3.0", "4.0"]
    assert [name for _, name, _ in client.writes] == list(TO_CLIENT_VARIABLES)
    gaps = [b[0] - a[0] for a, b in zip(client.writes, client.writes[1:], strict=False)]
    assert min(gaps) >= 0.045
    writer.enqueue(pacer.schedule_all(["5.0"], time.time() + 10))
    writer.close()
    assert writer.pending == 0 and writer._timer is None


def test_request_decorator_collects_handlers():
    """`@request` and `@request(name=...)` methods are found by name; duplicates are refused."""

    class Handlers:
        @request
        def one(self) -> int:
            return 1

        @request(name="two", allow_python_syntax=False)
        def second(self) -> bool:
            return True

        def helper(self) -> None:
            """Not a request."""

    handlers = collect_handlers(Handlers())
    assert sorted(handlers) == ["one", "two"]

    class Clash:
        @request(name="one")
        def other(self) -> None:
            """Clashes with Handlers.one."""

    with pytest.raises(ValueError):
        collect_handlers(Handlers(), Clash())


def test_format_result_follows_scratch_conventions():
    """Booleans, integral floats, lists and declared return types become Scratch-like text."""
    assert format_result(True) == "true"
    assert format_result(5.0) == "5"
    assert format_result(0.5) == "0.5"
    assert format_result([1, "a", 2.0]) == "1 a 2"
    assert format_result((1, 2), list, lists=True) == ["1", "2"]
    assert format_result(3.0, int) == "3"
    assert format_result(None) == ""


def test_unknown_plugin_setting_is_refused():
    """A misspelt setting fails loudly instead of being ignored."""
    with pytest.raises(ValueError, match="packet_intervall"):
        CloudSockets(None, {"packet_intervall": 0.1})
    with pytest.raises(ValueError, match="packet_interval"):
        CloudSockets(None, {"packet_interval": 0.01})


def run_keygen(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    """Run `python -m server keygen ...` with a given umask."""
    return subprocess.run(
        [sys.executable, "-m", "server", "keygen", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=60, preexec_fn=lambda: os.umask(umask), check=False,
    )


def test_keygen_writes_a_private_0600_key_and_prints_public_data(tmp_path):
    """keygen --scheme ec: mode 0600 even with umask 0, public data printed, no overwrite."""
    out = tmp_path / "keys" / "ec.key"
    result = run_keygen("--scheme", "ec", "--out", str(out), umask=0)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    key = load_server_key(out.read_text().strip())
    assert isinstance(key, ECServerKey)
    assert f"[secure] public point = {key.public_point.hex()}" in result.stdout
    assert "[secure] key exchange scheme = EC" in result.stdout
    assert key.private_scalar.hex() not in result.stdout
    again = run_keygen("--scheme", "ec", "--out", str(out))
    assert again.returncode == 1 and "exists" in again.stderr
    assert load_server_key(out.read_text().strip()) == key
    forced = run_keygen("--scheme", "ec", "--out", str(out), "--force", umask=0)
    assert forced.returncode == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert load_server_key(out.read_text().strip()) != key
    shown = run_keygen("--show", str(out))
    assert shown.returncode == 0 and "[secure] public point" in shown.stdout


def test_keygen_rsa_and_library_key_strings(tmp_path):
    """keygen --scheme rsa prints exponent and modulus; the library's own strings load."""
    out = tmp_path / "rsa.key"
    result = run_keygen("--scheme", "rsa", "--out", str(out))
    assert result.returncode == 0, result.stderr
    key = load_server_key(out.read_text().strip())
    assert isinstance(key, RSAServerKey)
    assert f"[secure] public modulus = {key.modulus}" in result.stdout
    library_string = 'ECxxxxx1["09' + "00" * 31 + '", "' + "11" * 31 + '51"]'
    (tmp_path / "lib.key").write_text(library_string)
    shown = run_keygen("--show", str(tmp_path / "lib.key"))
    assert shown.returncode == 0
    point = load_server_key(library_string).public_point.hex()
    assert point in shown.stdout


# ------------------------------------------------------------------------------------ the guide
GUIDE = ROOT / "docs" / "sprites.md"


def guide_blocks(language: str) -> list[str]:
    """The fenced code blocks of one language in docs/sprites.md, in order."""
    blocks, current, inside = [], [], False
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        if not inside and line.strip() == f"```{language}":
            inside, current = True, []
        elif inside and line.strip() == "```":
            inside = False
            blocks.append("\n".join(current) + "\n")
        elif inside:
            current.append(line)
    return blocks


def test_guide_config_blocks_load(tmp_path, monkeypatch):
    """Every [[plugins]] table in the guide loads (its key files made with keygen first)."""
    import tomllib

    from plugins.api import Plugin, import_object

    monkeypatch.chdir(tmp_path)
    result = run_keygen("--scheme", "ec", "--out", str(tmp_path / "data/keys/ec.key"))
    assert result.returncode == 0, result.stderr
    tables = [entry for block in guide_blocks("toml")
              for entry in tomllib.loads(block).get("plugins", [])]
    assert len(tables) == 2
    for entry in tables:
        cls = import_object(entry["use"])
        assert issubclass(cls, Plugin) and entry["rooms"]
        settings = {key: value for key, value in entry.items() if key not in ("use", "rooms")}
        plugin = cls(None, settings)
        assert {"test", "foo", "ping"} <= set(plugin.handlers)


async def test_guide_python_blocks_run():
    """The guide's Python examples run as written and give the replies the guide promises."""
    from plugins.sprites.request_api import handle_text_request, run_named_request

    blocks = guide_blocks("python")
    assert len(blocks) == 4
    namespaces = []
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own docs
        namespaces.append(namespace)
    first = collect_handlers(namespaces[0]["Handlers"]())
    assert await handle_text_request("test 5", first) == "Hello client! 5 squared is 25."
    second = collect_handlers(namespaces[1]["Handlers"]())
    raw, handler = await run_named_request("foo", ("TimMcCool",), second)
    assert format_result(raw, list, lists=True) == ["TimMcCool", "200", "TimMcCool"]
    third = collect_handlers(namespaces[2]["Handlers"]())
    assert await handle_text_request("add 2 3.5", third) == "5.5"
    assert await handle_text_request('echo "two words"', third) == "two words"
    assert await handle_text_request("withdraw 500", third) == "That is too much."
    assert await handle_text_request("slow 2", third) == "Something went wrong."
    assert issubclass(namespaces[3]["Chat"], CloudSockets)


# ------------------------------------------------------------------------------------ bad input
HUGE = "1" + "0" * 4400  # integer text past Python's int-string limit (4300 digits)


async def test_huge_integer_requests_answered_once_scratchcommunication(sprite_server):
    """Requests holding 4,400-digit integers each get exactly one reply, and no traceback."""
    log_start = len(sprite_server.log())
    peer = await Peer.join(sprite_server.url, fresh_room("sc"))
    try:
        sprite = Sprite(peer)
        await sprite.connect_insecurely()
        cases = [
            (f"echo {HUGE}", HUGE),  # a str parameter gets the digits as sent
            (f"nosuchname {HUGE}", "The command syntax was wrong."),
            (f"test {HUGE}", "The command syntax was wrong."),  # an int parameter cannot
            (f"add {HUGE} 1", "Infinity"),  # float parameters: JavaScript's Number()
            (f"add(0x{'f' * 4000}, 1)", "The command syntax was wrong."),
        ]
        for text, expected in cases:
            start = len(peer.sets)
            reply, values = await sprite.request(text, timeout=10)
            assert reply == expected, text
            await expect_silence(peer, TO_CLIENT, start + len(values), wait=0.3)
            assert len(sprite.packets_since(start)) == len(values) == 1
    finally:
        await peer.close()
    assert "Traceback" not in sprite_server.log()[log_start:]


async def test_huge_integer_requests_answered_once_scratchattach(sprite_server):
    """scratchattach requests with 4,400-digit integers are answered once, without a traceback."""
    log_start = len(sprite_server.log())
    peer = await Peer.join(sprite_server.url, fresh_room("sa"))
    try:
        client = AttachClient(peer)
        cases = [
            (f"echo&{HUGE}", HUGE),  # digits only: sent raw
            (f"test&{HUGE}", ["Error in request test", "Check the Python console"]),
            (f"add&{HUGE}&1", "Infinity"),
        ]
        for text, expected in cases:
            request_id = client.new_request_id()
            reply, values = await client.request(text, timeout=10, request_id=request_id)
            assert reply == expected, text
            await asyncio.sleep(0.3)
            assert client.values_for(request_id) == values
        start = len(peer.sets)  # an unknown name is not answered (spec): the same with HUGE
        await client.send(f"nosuchname&{HUGE}", client.new_request_id())
        await expect_silence(peer, FROM_HOST, start)
    finally:
        await peer.close()
    assert "Traceback" not in sprite_server.log()[log_start:]


def with_client_id(value: str, client_id: str) -> str:
    """A FROM_CLIENT value re-addressed to another client id (its payload unchanged)."""
    payload, trailer = value.split(".")
    return f"{payload}.{client_id}{trailer[5:]}"


async def test_replayed_handshake_refused_after_10001_fresh_ones(tmp_path, keys):
    """A captured secure connect cannot be replayed, even after 10,001 fresh ones on the server
    (the replay memory is never evicted)."""
    proc = ServerProcess(tmp_path, {"server": {"log_level": "debug"}})
    write_plugin_config(proc, [{
        "use": "plugins.sprites.scratchcommunication:CloudRequests",
        "rooms": ["sc-*"],
        "handlers": HANDLERS,
        "ec_key_file": str(keys.ec_file),
        "secure_connects_per_minute": 20_000,
        "total_secure_connects_per_minute": 20_000,
    }])
    proc.start()
    try:
        room = fresh_room("sc")
        victim_peer = await Peer.join(proc.url, room, "victim")
        victim = Sprite(victim_peer, client_id="31337")
        captured = victim.model.ec_connect(keys.ec.public_point.hex(), victim.ts())
        await victim.put(captured)
        assert (await victim.request("add 1 2"))[0] == "3"
        await victim_peer.close()  # frees its client id: only the replay memory stands guard

        peer = await Peer.join(proc.url, room, "mallory")
        attacker = Sprite(peer, client_id="42424")
        point = keys.ec.public_point.hex()
        for _ in range(10_001):  # stamped now: ACTs may repeat, each key blob is new
            await attacker.put(attacker.model.ec_connect(point, centiseconds_now()))
        attacker.last_ts = centiseconds_now()  # its request's salt must follow the last ACT
        assert (await attacker.request("add 2 2", timeout=60))[0] == "4"  # all were accepted

        start = len(peer.sets)
        await attacker.put([with_client_id(value, "31337") for value in captured])
        replayer = Sprite(peer, client_id="31337")
        replayer.model.key_str = victim.model.key_str  # as if the attacker knew the key
        await replayer.put(replayer.model.send("add 3 3", ts=replayer.ts()))
        await expect_silence(peer, TO_CLIENT, start, wait=1.0)
        assert "packet for session 31337 dropped: replayed handshake" in proc.log()
        await peer.close()
    finally:
        proc.stop()
    assert "Traceback" not in proc.log()


async def test_total_secure_connect_limit(tmp_path, keys):
    """Past total_secure_connects_per_minute (all connections together) connects are dropped."""
    proc = ServerProcess(tmp_path)
    write_plugin_config(proc, [{
        "use": "plugins.sprites.scratchcommunication:CloudRequests",
        "rooms": ["sc-*"],
        "handlers": HANDLERS,
        "ec_key_file": str(keys.ec_file),
        "total_secure_connects_per_minute": 2,
    }])
    proc.start()
    peers = []
    try:
        room = fresh_room("sc")
        for number, expected in ((1, "2"), (2, "3"), (3, None)):
            peer = await Peer.join(proc.url, room, f"player{number}")
            peers.append(peer)
            sprite = Sprite(peer)
            await sprite.connect_ec(keys.ec)
            if expected is not None:
                assert (await sprite.request(f"add 1 {number}"))[0] == expected
            else:
                start = len(peer.sets)
                await sprite.put(sprite.model.send("add 1 1", ts=sprite.ts()))
                await expect_silence(peer, TO_CLIENT, start)
        assert "more than 2 secure connects a minute in total" in proc.log()
    finally:
        for peer in peers:
            await peer.close()
        proc.stop()
    assert "Traceback" not in proc.log()
