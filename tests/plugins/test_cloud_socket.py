"""Cloud-socket packets, the per-connection state machine and pacing (§3–§6, §13, §15)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.sprites import digits
from plugins.sprites.cloud_socket import (
    CONNECTED,
    DROPPED,
    EXPIRED,
    MESSAGE,
    TO_CLIENT_VARIABLES,
    ClientIdRegistry,
    ClientPacket,
    HandshakeReplayCache,
    MessageTooLong,
    SocketEvent,
    SocketLimits,
    SocketSessions,
    UnknownClient,
    build_insecure_packets,
    build_secure_packets,
    parse_client_packet,
    secure_packet_length,
    split_secure_message,
    with_rnd3,
)
from plugins.sprites.keys import ECServerKey
from plugins.sprites.pacing import OutboundPacer

from .sprite_client import SpriteClient
from .testdata import SCRATCHCOMMUNICATION_SB3, saved_variables

SAVED_FROM_CLIENT = (
    "18184807857825791131036608123074360179041181390396953000177438113754.762274253367252"
)
CLIENT_SCALAR = bytes.fromhex("b8f021cf0bf8a5e7c80c19b2f34d901a71df19bb75472bac70e2244e369cb465")
SERVER_POINT_HEX = "888aaa945c4916c9ab632081dada3bd1eeee97036b4a353255c148972b5f897d"
SESSION_START = 1774381137.28  # the saved connect's ACT 000177438113728, in seconds


def constant_rnd3(value: int):
    """An rnd3 source that always returns `value`."""
    return lambda: value


def fresh_sessions(**kwargs) -> SocketSessions:
    """A connection state with a deterministic RNG."""
    kwargs.setdefault("rng", random.Random(7))
    return SocketSessions(**kwargs)


def connect_secure(sessions: SocketSessions, client: SpriteClient, server: ECServerKey, now: float):
    """Run a simulated sprite's EC connect through `sessions`; return the events."""
    events = []
    for value in client.ec_connect(server.public_point.hex(), ts=round(now * 100)):
        events += sessions.receive(value, now)
    return events


def values_of(scheduled) -> list[str]:
    """The planned values, in order."""
    return [item.value for item in scheduled]


# ---------------------------------------------------------------- parsing (§3)


def test_parse_insecure_vector():
    """§9.1: `Hello server!` from CID 12345 with NONCE 987654321."""
    packet = parse_client_packet("134051212155319051822051862.12345987654321")
    assert packet == ClientPacket(1, "34051212155319051822051862", "12345", False)
    assert digits.decode(packet.payload) == "Hello server!"


def test_parse_more_flag_and_fragment():
    """A leading '-' means more packets follow; TYPE 0 is a key fragment."""
    assert parse_client_packet("-11234.000017") == ClientPacket(1, "1234", "00001", True)
    assert parse_client_packet("0588551234.762271") == ClientPacket(0, "588551234", "76227", False)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1234",  # no dot
        "12.34.56789",  # two dots
        ".12345",  # no TYPE
        "1.1234",  # CID too short
        "12.12345" + "1" * 11,  # NONCE longer than 10 digits
        "--12.12345",
        "1a.12345",
        "١.12345",
        12.12345,  # a JSON number has lost digits
        None,
        ["12.12345"],
    ],
)
def test_parse_rejects_malformed_values(value):
    """Malformed packets (and non-strings) parse to None."""
    assert parse_client_packet(value) is None


# ---------------------------------------------------------------- building (§4)


def test_insecure_reply_vector():
    """§9.1: `Hi` to CID 12345 with RND3 407 is one packet 13409.123454070."""
    assert build_insecure_packets("Hi", "12345", rnd3=constant_rnd3(407)) == ["13409.123454070"]


def test_insecure_prefers_one_packet_up_to_the_cap():
    """1 + 2·len + 10 = cap still fits in one packet; one more character needs two."""
    cap = 1000
    fitting = "a" * ((cap - 11) // 2)
    [single] = build_insecure_packets(fitting, "12345", max_value_length=cap)
    assert len(single) == cap - 1
    two = build_insecure_packets(fitting + "bc", "12345", max_value_length=cap)
    assert len(two) == 2 and two[0].startswith("-1") and not two[1].startswith("-")
    assert all(len(value) <= cap for value in two)
    assert SpriteClient("12345").receive(two, 0) == fitting + "bc"


def test_insecure_refuses_three_packets():
    """§15 check 8: a message needing 3+ packets raises instead of corrupting."""
    cap = 100
    longest = "x" * ((2 * cap - 21) // 2)
    assert len(build_insecure_packets(longest, "12345", max_value_length=cap)) == 2
    with pytest.raises(MessageTooLong):
        build_insecure_packets(longest + "xx", "12345", max_value_length=cap)


def test_insecure_default_cap_single_packet_limit():
    """At the default cap of 100 000 one packet holds 49 994 characters."""
    assert len(build_insecure_packets("a" * 49_994, "12345")) == 1
    assert len(build_insecure_packets("a" * 49_995, "12345")) == 2


def test_three_insecure_packets_would_corrupt_the_sprite():
    """Why the limit exists: the sprite keeps the '-' of a non-final IDX ≥ 1 packet (§5)."""
    stream = "1" + digits.encode("abcdef")
    values = ["-" + stream[:5] + ".12345" + "0000", "-" + stream[5:9] + ".123450001"]
    values.append(stream[9:] + ".123450002")
    with pytest.raises(ValueError):
        SpriteClient("12345").receive(values, 0)


def test_secure_packet_length_formula():
    """The §4 length formula matches built packets, incl. '-' and multi-digit IDX."""
    key = bytes(16)
    for chunk, index, more in [("", 0, False), ("abc", 0, True), ("x" * 120, 12, True)]:
        [value] = build_secure_packets(
            chunk, "12345", key, ["000000000000001"], max_value_length=10**6
        )
        expected = secure_packet_length(len(chunk), 0, False)
        assert len(value) == expected
        assert (
            secure_packet_length(len(chunk), index, more) == expected + more + len(str(index)) - 1
        )


def test_secure_default_cap_chunk_size():
    """At a cap of 100 000 one secure packet holds ≈ 49 950 characters."""
    assert len(split_secure_message("a" * 49_950)) == 1
    assert len(split_secure_message("a" * 49_980)) == 2


@given(st.text(alphabet=digits.TABLE, max_size=400), st.integers(120, 400))
def test_secure_multi_packet_round_trip(message, cap):
    """Chunks fill packets up to the cap and the sprite reassembles the message."""
    key = bytes(range(16))
    salts = (f"{177438114057 + index:015d}" for index in range(10_000))
    values = build_secure_packets(message, "76227", key, salts, max_value_length=cap)
    assert all(len(value) <= cap for value in values)
    assert [value.startswith("-") for value in values] == [True] * (len(values) - 1) + [False]
    client = SpriteClient("76227")
    client.fixed_key = key
    assert client.receive(values, 1774381140.57) == message


def test_with_rnd3_replaces_only_the_random_digits():
    """RND3 sits after '.' and the CID."""
    assert with_rnd3("13409.123454070", 5) == "13409.123450050"
    assert with_rnd3("-1.1234599912", 0) == "-1.1234500012"


# ---------------------------------------------------------------- insecure sessions


def test_insecure_connect_and_messages():
    """`_connect`, then a one-packet and a multi-packet message."""
    sessions = fresh_sessions()
    client = SpriteClient("12345")
    [connect] = client.insecure_connect()
    assert sessions.receive(connect, 1.0) == [SocketEvent(CONNECTED, "12345", "insecure")]
    [value] = client.send("Hello server!", ts=0)
    assert sessions.receive(value, 1.0) == [SocketEvent(MESSAGE, "12345", "Hello server!")]
    client.packet_size = 10
    values = client.send("Hello server!", ts=0)
    assert len(values) == 3
    events = [event for value in values for event in sessions.receive(value, 1.0)]
    assert events == [("message", "12345", "Hello server!")]  # events compare as plain tuples


def test_unknown_client_id_is_an_insecure_connect_discarding_content():
    """The saved FROM_CLIENT (encrypted under a key the server never saw) only connects."""
    sessions = fresh_sessions()
    events = sessions.receive(SAVED_FROM_CLIENT, SESSION_START + 3)
    assert events == [SocketEvent(CONNECTED, "76227", "insecure")]
    [value] = SpriteClient("76227").send("test 5", ts=0)
    assert sessions.receive(value, SESSION_START + 4) == [SocketEvent(MESSAGE, "76227", "test 5")]


def test_unknown_client_id_discards_the_rest_of_a_multi_packet_message():
    """Later packets of the discarded message are skipped too."""
    sessions = fresh_sessions()
    first, second = SpriteClient("12345", packet_size=10).send("abcdefghij", ts=0)
    assert sessions.receive(first, 1) == [SocketEvent(CONNECTED, "12345", "insecure")]
    assert sessions.receive(second, 1) == []
    [value] = SpriteClient("12345").send("next", ts=0)
    assert sessions.receive(value, 1) == [SocketEvent(MESSAGE, "12345", "next")]


def test_malformed_and_unsupported_packets_are_dropped():
    """Garbage, numbers and TYPE 2 (reserved for a v2 protocol) are dropped."""
    sessions = fresh_sessions()
    assert sessions.receive("hello", 1)[0].kind == DROPPED
    assert sessions.receive(134051212155319051822051862.12345, 1)[0].kind == DROPPED
    assert sessions.receive("21234.123451", 1) == [
        SocketEvent(DROPPED, "12345", "unsupported packet type")
    ]
    assert sessions.client_ids == []


def test_undecodable_insecure_message_is_dropped():
    """Codes outside 01–91 in a completed message drop it."""
    sessions = fresh_sessions()
    sessions.receive("15903151414050320.123451", 1)
    assert sessions.receive("19999.123451", 1) == [
        SocketEvent(DROPPED, "12345", "undecodable message")
    ]


def test_message_size_bound():
    """An over-long message is dropped; the session keeps working afterwards."""
    sessions = fresh_sessions(limits=SocketLimits(max_message_chars=20))
    client = SpriteClient("12345")
    sessions.receive(client.insecure_connect()[0], 1)
    client.packet_size = 10
    events = [
        event for value in client.send("x" * 30, ts=0) for event in sessions.receive(value, 1)
    ]
    assert events == [SocketEvent(DROPPED, "12345", "message too large")]
    events = [
        event for value in client.send("y" * 20, ts=0) for event in sessions.receive(value, 1)
    ]
    assert events == [SocketEvent(MESSAGE, "12345", "y" * 20)]


def test_insecure_send_and_refusal():
    """Replies plan one packet; §15 check 8 at the state level: refused and nothing planned."""
    sessions = fresh_sessions(limits=SocketLimits(max_value_length=100))
    sessions.receive("15903151414050320.123451", 1)
    [planned] = sessions.send("12345", "Hi", 2)
    assert planned.variable == TO_CLIENT_VARIABLES[0] and planned.not_before == 2
    assert SpriteClient("12345").receive([planned.value], 2) == "Hi"
    with pytest.raises(MessageTooLong):
        sessions.send("12345", "x" * 100, 3)
    assert sessions.pacer.next_slot(3) == 3  # nothing was queued
    with pytest.raises(UnknownClient):
        sessions.send("99999", "Hi", 3)


# ---------------------------------------------------------------- secure sessions


def test_saved_session_through_the_state_machine():
    """§9.2 end to end: the client scalar stands in for the server key (X25519 is symmetric)."""
    sessions = fresh_sessions(ec_key=ECServerKey(CLIENT_SCALAR))
    blob = "000177438113728" + digits.encode(SERVER_POINT_HEX)
    now = SESSION_START + 1.5
    assert sessions.receive(f"058855{blob}.762271234", now) == []
    connect = "1" + digits.encode("_safe_connect:") + "58855" + "000177438113728"
    assert sessions.receive(connect + ".762275678", now) == [SocketEvent(CONNECTED, "76227", "EC")]
    session = sessions.session("76227")
    assert session.key == bytes.fromhex("dc7bf4239c2899eb938e2fef25425fb8")
    events = sessions.receive(SAVED_FROM_CLIENT, SESSION_START + 3)
    assert events == [SocketEvent(MESSAGE, "76227", "test")]
    # Check 6: the same packet again is a replay and is dropped without effect.
    assert sessions.receive(SAVED_FROM_CLIENT, SESSION_START + 3.1)[0].kind == DROPPED
    assert session.last_accepted_salt == 177438113754
    saved = saved_variables(SCRATCHCOMMUNICATION_SB3)
    assert saved["☁ FROM_CLIENT"] == SAVED_FROM_CLIENT


def test_secure_ec_round_trip_with_a_fresh_key():
    """§15 check 4 (pure part): connect, request, reply that the sprite accepts."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server)
    client = SpriteClient("31337")
    now = 1_800_000_000.0
    assert connect_secure(sessions, client, server, now)[-1] == SocketEvent(
        CONNECTED, "31337", "EC"
    )
    assert sessions.pending_fragments == 0
    events = []
    for value in client.send("test 5", ts=round((now + 1.6) * 100)):
        events += sessions.receive(value, now + 1.7)
    assert events == [SocketEvent(MESSAGE, "31337", "test 5")]
    planned = sessions.send("31337", "Hello client!", now + 1.8)
    [reply] = planned
    salt = int(reply.value.split(".")[0][-15:])
    assert salt > client.used_salts[-1] - 100 and salt not in client.used_salts
    assert client.receive([reply.value], reply.not_before + 0.05) == "Hello client!"


def test_secure_multi_packet_messages_both_ways():
    """Long messages are chunked by the sprite and by the server, and reassembled."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server, limits=SocketLimits(max_value_length=300))
    client = SpriteClient("31337")
    now = 1_800_000_000.0
    connect_secure(sessions, client, server, now)
    message = "The quick brown fox jumps over the lazy dog. " * 6
    values = client.send(message, ts=round((now + 1) * 100))
    assert len(values) > 1
    events = [event for value in values for event in sessions.receive(value, now + 1.5)]
    assert events == [SocketEvent(MESSAGE, "31337", message)]
    planned = sessions.send("31337", message, now + 2)
    assert len(planned) > 1
    salts = [int(item.value.split(".")[0][-15:]) for item in planned]
    assert salts == sorted(set(salts))
    assert client.receive(values_of(planned), planned[-1].not_before + 0.05) == message


def test_rsa_connect_through_the_state_machine():
    """An RSA-configured server accepts the sprite's RSA connect (3 fragments at P = 220)."""
    from plugins.sprites.keys import RSAServerKey

    rsa_key = RSAServerKey.generate()
    sessions = fresh_sessions(ec_key=ECServerKey.generate(), rsa_key=rsa_key)
    client = SpriteClient("44444")
    now = 1_800_000_000.0
    values = client.rsa_connect(rsa_key.modulus, 3, ts=round(now * 100))
    events = [event for value in values for event in sessions.receive(value, now + 5)]
    assert events == [SocketEvent(CONNECTED, "44444", "RSA")]
    [value] = client.send("hi", ts=round((now + 6) * 100))
    assert sessions.receive(value, now + 6) == [SocketEvent(MESSAGE, "44444", "hi")]


def test_replayed_packet_is_dropped_and_session_unaffected():
    """§15 check 6: the same SALT again is dropped; later packets still work."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server)
    client = SpriteClient("31337")
    now = 1_800_000_000.0
    connect_secure(sessions, client, server, now)
    [value] = client.send("one", ts=round((now + 1) * 100))
    assert sessions.receive(value, now + 1)[0] == SocketEvent(MESSAGE, "31337", "one")
    assert sessions.receive(value, now + 1.2) == [
        SocketEvent(DROPPED, "31337", "replayed or stale salt")
    ]
    [value] = client.send("two", ts=round((now + 2) * 100))
    assert sessions.receive(value, now + 2) == [SocketEvent(MESSAGE, "31337", "two")]


def test_bogus_future_salt_from_another_connection_has_no_effect():
    """§15 check 7: another connection's packet for this CID is dropped; nothing changes."""
    server = ECServerKey.generate()
    registry, replay_cache = ClientIdRegistry(), HandshakeReplayCache()
    victim = fresh_sessions(ec_key=server, registry=registry, replay_cache=replay_cache)
    attacker = fresh_sessions(ec_key=server, registry=registry, replay_cache=replay_cache)
    client = SpriteClient("31337")
    now = 1_800_000_000.0
    connect_secure(victim, client, server, now)
    before = victim.session("31337").last_accepted_salt
    bogus_salt = f"{round((now + 29) * 100):015d}"
    bogus = "1" + digits.encode("1234:3:abcdefghijklmnopqr") + bogus_salt + ".313371"
    assert attacker.receive(bogus, now + 1) == [
        SocketEvent(DROPPED, "31337", "client id bound to another connection")
    ]
    assert attacker.client_ids == []
    assert victim.session("31337").last_accepted_salt == before
    # The same bogus packet on the owning connection fails decryption: window unchanged too.
    assert victim.receive(bogus, now + 1) == [SocketEvent(DROPPED, "31337", "decryption failed")]
    assert victim.session("31337").last_accepted_salt == before
    [value] = client.send("still fine", ts=round((now + 1) * 100))
    assert victim.receive(value, now + 1) == [SocketEvent(MESSAGE, "31337", "still fine")]


def test_salt_too_far_in_the_future_is_dropped():
    """Even an authentic packet is refused beyond server_now + offset + 30 s."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server)
    client = SpriteClient("31337")
    now = 1_800_000_000.0
    connect_secure(sessions, client, server, now)
    [value] = client.send("early", ts=round((now + 31) * 100))
    assert sessions.receive(value, now) == [
        SocketEvent(DROPPED, "31337", "salt too far in the future")
    ]


def test_connect_clock_checks():
    """A connect ACT more than 30 s ahead or older than 300 s is refused."""
    server = ECServerKey.generate()
    now = 1_800_000_000.0
    for ts_offset, reason in [(31, "in the future"), (-301, "too old")]:
        sessions = fresh_sessions(ec_key=server)
        client = SpriteClient("31337")
        values = client.ec_connect(server.public_point.hex(), ts=round((now + ts_offset) * 100))
        events = [event for value in values for event in sessions.receive(value, now)]
        assert events[-1].kind == DROPPED and reason in events[-1].detail


def test_replayed_handshake_is_refused_across_connections():
    """The same key blob cannot open a second session within the window."""
    server = ECServerKey.generate()
    cache = HandshakeReplayCache()
    first = fresh_sessions(ec_key=server, replay_cache=cache)
    second = fresh_sessions(ec_key=server, replay_cache=cache)
    values = SpriteClient("31337").ec_connect(server.public_point.hex(), ts=180_000_000_000)
    assert [e for v in values for e in first.receive(v, 1_800_000_000.5)][-1].kind == CONNECTED
    first.close()
    events = [e for v in values for e in second.receive(v, 1_800_000_001.0)]
    assert events[-1] == SocketEvent(DROPPED, "31337", "replayed handshake")


def test_key_fragment_rules():
    """First writer wins, missing fragments drop the connect, fragments expire and are bounded."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server, limits=SocketLimits(max_fragments=2))
    now = 1_800_000_000.0
    fragment, connect = SpriteClient("31337").ec_connect(server.public_point.hex(), ts=180 * 10**9)
    assert sessions.receive(fragment, now) == []
    assert sessions.receive(fragment, now)[0].detail == "duplicate key fragment"
    assert sessions.receive("000001123.222221", now) == []
    assert sessions.receive("000002123.333331", now)[0].detail == "too many pending key fragments"
    assert sessions.receive(connect, now + 61)[0].detail == "missing key fragment"  # expired
    assert sessions.pending_fragments == 0


def test_secure_connect_needs_a_configured_key():
    """Without server keys a secure connect is dropped."""
    server = ECServerKey.generate()
    sessions = fresh_sessions()
    values = SpriteClient("31337").ec_connect(server.public_point.hex(), ts=180 * 10**9)
    events = [e for v in values for e in sessions.receive(v, 1_800_000_000.0)]
    assert events == [SocketEvent(DROPPED, "31337", "secure connects are not configured")]


def test_wrong_server_key_fails_recovery():
    """A connect made for another server key cannot be recovered."""
    sessions = fresh_sessions(ec_key=ECServerKey.generate())
    other = ECServerKey.generate()
    values = SpriteClient("31337").ec_connect(other.public_point.hex(), ts=180 * 10**9)
    # The ACT check passes and X25519 works, but the key is different: recovery itself
    # cannot tell (EC has no check besides the ACT), so the session's packets fail instead.
    events = [e for v in values for e in sessions.receive(v, 1_800_000_000.0)]
    assert events[-1] == SocketEvent(CONNECTED, "31337", "EC")
    client = SpriteClient("31337")
    client.ec_connect(other.public_point.hex(), ts=180 * 10**9)
    [value] = client.send("x", ts=180 * 10**9 + 50)
    assert sessions.receive(value, 1_800_000_000.5)[0].detail == "decryption failed"


def test_client_id_binding_and_release():
    """A CID belongs to the connection that created it until that connection closes."""
    registry = ClientIdRegistry()
    first, second = fresh_sessions(registry=registry), fresh_sessions(registry=registry)
    connect = "15903151414050320.123451"
    assert first.receive(connect, 1)[0].kind == CONNECTED
    assert second.receive(connect, 1)[0].detail == "client id bound to another connection"
    assert second.receive("058855123.123451", 1)[0].kind == DROPPED  # no fragments either
    first.close()
    assert second.receive(connect, 2)[0].kind == CONNECTED


def test_reconnect_replaces_and_oldest_session_is_evicted():
    """Same CID replaces; a 5th CID evicts the least recently active session."""
    registry = ClientIdRegistry()
    sessions = fresh_sessions(registry=registry)
    for index, client_id in enumerate(["00001", "00002", "00003", "00004"]):
        sessions.receive(f"15903151414050320.{client_id}1", float(index))
    sessions.receive("15903151414050320.000011", 10.0)  # reconnect of 00001: now the newest
    assert len(sessions.client_ids) == 4
    sessions.receive("15903151414050320.000051", 11.0)
    assert sorted(sessions.client_ids) == ["00001", "00003", "00004", "00005"]
    assert registry.owner_of("00002") is None


def test_idle_sessions_expire():
    """Sessions idle longer than the timeout end and free their CID."""
    registry = ClientIdRegistry()
    sessions = fresh_sessions(registry=registry, limits=SocketLimits(session_idle_timeout=60))
    sessions.receive("15903151414050320.123451", 0)
    assert sessions.expire(30) == []
    assert sessions.expire(61) == [SocketEvent(EXPIRED, "12345", "idle")]
    assert registry.owner_of("12345") is None


def test_outgoing_salt_policy():
    """Salts rise strictly, stay above connect ACT, skip client salts, lie ≤ est − 10 (§13.6)."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server)
    client = SpriteClient("31337")
    now = 1_800_000_000.0
    connect_secure(sessions, client, server, now)
    session = sessions.session("31337")
    act = session.connect_act
    # Right after the connect the first salt is ACT + 1, so it waits until est ≥ salt + 10.
    [first] = sessions.send("31337", "a", now)
    first_salt = int(first.value.split(".")[0][-15:])
    assert first_salt == act + 1
    assert round(first.not_before * 100) + session.offset - 10 >= first_salt
    # A client salt sitting exactly where the next choice would land is skipped.
    later = now + 5
    session.used_salts.add(round(later * 100) + session.offset - 100)
    salt = sessions.choose_salt(session, later)
    assert salt == round(later * 100) + session.offset - 99
    assert sessions.last_sent_salt == salt


def test_last_sent_salt_survives_reconnects_on_the_connection():
    """A new session on the same connection continues above the previous salts."""
    server = ECServerKey.generate()
    sessions = fresh_sessions(ec_key=server)
    now = 1_800_000_000.0
    connect_secure(sessions, SpriteClient("31337"), server, now)
    planned = sessions.send("31337", "x" * 10, now + 10)
    high = sessions.last_sent_salt
    assert high == int(planned[0].value.split(".")[0][-15:])
    # Reconnect with a clock 5 s behind: salts must still exceed the earlier ones.
    connect_secure(sessions, SpriteClient("31338"), server, now + 11 - 5)
    [reply] = sessions.send("31338", "y", now + 12)
    assert int(reply.value.split(".")[0][-15:]) > high


# ---------------------------------------------------------------- pacing


def test_pacer_spacing_and_round_robin():
    """Sets are ≥ min_interval apart and rotate over TO_CLIENT_1..4 across messages."""
    pacer = OutboundPacer(TO_CLIENT_VARIABLES, min_interval=0.1)
    planned = pacer.schedule_all(["a", "b", "c"], 5.0) + pacer.schedule_all(["d", "e"], 5.05)
    assert [item.variable for item in planned] == [*TO_CLIENT_VARIABLES, TO_CLIENT_VARIABLES[0]]
    times = [item.not_before for item in planned]
    assert times == pytest.approx([5.0, 5.1, 5.2, 5.3, 5.4])
    later = pacer.schedule("f", 100.0)
    assert later.not_before == 100.0 and later.variable == TO_CLIENT_VARIABLES[1]


def test_pacer_never_repeats_a_variables_previous_value():
    """A repeated value is re-rolled (RND3) or moved to another variable."""
    pacer = OutboundPacer(["v1", "v2"], min_interval=0.05)
    pacer.schedule_all(["13409.123454070", "x"], 0)
    rerolled = pacer.schedule("13409.123454070", 1, reroll=lambda value: with_rnd3(value, 408))
    assert rerolled.variable == "v1" and rerolled.value == "13409.123454080"
    moved = pacer.schedule("x", 2)  # v2 holds "x" already: use v1 instead
    assert moved.variable == "v1" and moved.value == "x"


def test_session_send_rerolls_repeated_values():
    """Sending the same insecure reply 5 times on 4 variables never repeats a value."""
    sessions = fresh_sessions()
    sessions.receive("15903151414050320.123451", 0)
    sessions.rng = random.Random(0)
    planned = [item for _ in range(5) for item in sessions.send("12345", "Hi", 1)]
    seen: dict[str, str] = {}
    for item in planned:
        assert seen.get(item.variable) != item.value
        seen[item.variable] = item.value


def test_pacer_rejects_too_small_intervals():
    """The minimum interval is 50 ms."""
    with pytest.raises(ValueError):
        OutboundPacer(TO_CLIENT_VARIABLES, min_interval=0.04)


def test_replay_cache_refuses_rather_than_evicts():
    """A full replay cache refuses new blobs; what it holds stays until its window ends."""
    cache = HandshakeReplayCache(window=330.0, capacity=3)
    for number in range(3):
        assert cache.remember(f"{number}", 1000.0 + number)
    assert cache.full(1010.0)
    assert not cache.remember("fresh", 1010.0)
    assert not cache.seen("fresh", 1010.0)
    assert all(cache.seen(f"{number}", 1010.0) for number in range(3))
    assert not cache.full(1330.5)  # the first blob's window has ended
    assert not cache.seen("0", 1330.5) and cache.seen("2", 1330.5)
    assert cache.remember("fresh", 1330.5)


def test_replay_after_10001_fresh_handshakes_is_refused():
    """However many fresh handshakes follow, a captured one cannot be replayed in its window."""
    server = ECServerKey.generate()
    cache = HandshakeReplayCache(SocketLimits().replay_window)
    victim = fresh_sessions(ec_key=server, replay_cache=cache)
    attacker = fresh_sessions(ec_key=server, replay_cache=cache)
    now = 1_800_000_000.0
    captured = SpriteClient("31337").ec_connect(server.public_point.hex(), ts=round(now * 100))
    assert [e for v in captured for e in victim.receive(v, now)][-1].kind == CONNECTED
    client = SpriteClient("42424", seed=3)
    for number in range(10_001):
        at = now + number * 0.01
        events = connect_secure(attacker, client, server, at)
        assert events[-1].kind == CONNECTED, number
    assert len(cache) == 10_002
    replay = [e for v in captured for e in attacker.receive(v, now + 120)]
    assert replay[-1] == SocketEvent(DROPPED, "31337", "replayed handshake")


def test_full_replay_cache_refuses_handshakes():
    """With the cache full, a fresh handshake is dropped and the captured replay still is."""
    server = ECServerKey.generate()
    cache = HandshakeReplayCache(SocketLimits().replay_window, capacity=2)
    sessions = fresh_sessions(ec_key=server, replay_cache=cache)
    now = 1_800_000_000.0
    captured = SpriteClient("31337").ec_connect(server.public_point.hex(), ts=round(now * 100))
    assert [e for v in captured for e in sessions.receive(v, now)][-1].kind == CONNECTED
    assert connect_secure(sessions, SpriteClient("11111", seed=1), server, now + 1)[-1].kind \
        == CONNECTED
    refused = connect_secure(sessions, SpriteClient("22222", seed=2), server, now + 2)
    assert refused[-1] == SocketEvent(DROPPED, "22222", "too many recent secure connects")
    replay = [e for v in captured for e in sessions.receive(v, now + 3)]
    assert replay[-1] == SocketEvent(DROPPED, "31337", "replayed handshake")
    later = now + SocketLimits().replay_window + 1
    assert connect_secure(sessions, SpriteClient("22222", seed=2), server, later)[-1].kind \
        == CONNECTED


def test_replay_window_covers_connects_timed_in_the_future():
    """A connect stamped 30 s ahead stays refused until its ACT is too old to be accepted."""
    server = ECServerKey.generate()
    limits = SocketLimits()
    cache = HandshakeReplayCache(limits.replay_window)
    first = fresh_sessions(ec_key=server, replay_cache=cache, limits=limits)
    second = fresh_sessions(ec_key=server, replay_cache=cache, limits=limits)
    now = 1_800_000_000.0
    ahead = round((now + limits.future_window) * 100)
    values = SpriteClient("31337").ec_connect(server.public_point.hex(), ts=ahead)
    assert [e for v in values for e in first.receive(v, now)][-1].kind == CONNECTED
    late = now + limits.connect_max_age + limits.future_window - 1  # ACT is not yet too old
    events = [e for v in values for e in second.receive(v, late)]
    assert events[-1] == SocketEvent(DROPPED, "31337", "replayed handshake")
