"""scratchattach Cloud Requests: codec, TO_HOST parsing, responses and state (§11, §15 9–10)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.sprites import scratchattach as sa

from .testdata import SCRATCHATTACH_SB3, costume_names, saved_variables

ALPHABET = "".join(char for char in sa.CODE_OF_CHAR)
TO_HOST_VECTOR = "31494996603745462526494943.417950"
PUSH_VECTOR = "3537.10000000055692222"
LIST_VECTOR = "603745462526494943891119198960374546252649494389.6181202222"
TUPLE_VECTOR = (
    "84996037454625264949439976201016111715181017141715191676201016111715181017141715191686"
    ".9447302222"
)


def sprite_response(values: list[str], request_id: str) -> list[str]:
    """How the template reassembles a response: parts in order, then split at 89 (§11)."""
    heads = [value.split(".")[0] for value in values if f".{request_id}" in value]
    return sa.decode_list("".join(heads))


def sprite_request_values(text: str, request_id: str) -> list[str]:
    """What the template sets on TO_HOST for a request (245-digit chunks)."""
    encoded = sa.encode(text)
    if len(encoded) < sa.REQUEST_CHUNK_DIGITS:
        return [f"{encoded}.{request_id}"]
    chunks = [encoded[start : start + 245] for start in range(0, len(encoded), 245)]
    if len(chunks[-1]) == 245:
        chunks.append("")
    return [f"-{chunk}.{request_id}" for chunk in chunks[:-1]] + [f"{chunks[-1]}.{request_id}"]


def test_table_matches_the_sprites_costumes():
    """Code n is the n-th costume `=<char>`; 1–9 are blanks and 89 is `new line`."""
    names = costume_names(SCRATCHATTACH_SB3, "Cloud Requests")
    assert len(names) == 99
    for code, name in enumerate(names, start=1):
        if code < 10:
            assert name.startswith("blank")
        elif code == 89:
            assert name == "new line"
        else:
            assert name == "=" + sa.CHAR_OF_CODE[code]


def test_spec_vectors():
    """§11 table: request, ping, push, list and tuple-text responses."""
    assert sa.encode("foo&TimMcCool") + ".417950" == TO_HOST_VECTOR
    assert sa.encode("ping") == "51374733"
    assert sa.encode_response("hi", "1000000005569") == [PUSH_VECTOR]
    assert sa.encode_response(["TimMcCool", "200", "TimMcCool"], "618120") == [LIST_VECTOR]
    text = ("TimMcCool", 1728691858607, 1728691858607)
    assert sa.encode_response(text, "944730") == [TUPLE_VECTOR]


def test_saved_template_values():
    """The template's saved TO_HOST / FROM_HOST values decode and re-encode identically."""
    saved = saved_variables(SCRATCHATTACH_SB3)
    assert saved["☁ TO_HOST"] == TO_HOST_VECTOR
    assert saved["☁ FROM_HOST_1"] == PUSH_VECTOR
    assert saved["☁ FROM_HOST_2"] == LIST_VECTOR
    assert saved["☁ FROM_HOST_4"] == TUPLE_VECTOR
    state = sa.RequestHostState()
    assert state.receive(saved["☁ TO_HOST"], 0) == sa.IncomingRequest(
        "417950", "foo", ("TimMcCool",)
    )
    for number in range(2, 10):
        value = saved[f"☁ FROM_HOST_{number}"]
        head, tail = value.split(".")
        request_id = tail[:-4]
        if head.endswith("89"):
            items = sa.decode_list(head)
            assert items == ["TimMcCool", "200", "TimMcCool"]
            assert sa.encode_response(items, request_id) == [value]
        else:
            text = sa.decode(head)
            assert text.startswith("('TimMcCool', 17286918")
            assert sa.encode_response(text, request_id) == [value]


def test_unknown_characters_encode_as_space():
    """Characters without a code (incl. newline and ß) become 20."""
    assert sa.encode("a\nß€b") == "21202020" + "23"


@pytest.mark.parametrize("bad", ["0521", "2100", "1", "2a", "٢١"])
def test_decode_rejects_bad_codes(bad):
    """Codes 00–09, odd lengths and non-ASCII digits raise ValueError."""
    with pytest.raises(ValueError):
        sa.decode(bad)


def test_separator_decodes_as_line_break_in_text():
    """In plain text 89 reads as a line break; decode_list splits there."""
    assert sa.decode("218923") == "a\nb"
    assert sa.decode_list("21892389") == ["a", "b"]
    assert sa.decode_list("") == []


@given(st.text(alphabet=ALPHABET))
def test_round_trip(text):
    """decode(encode(x)) == x over the table."""
    assert sa.decode(sa.encode(text)) == text


@given(st.text())
def test_round_trip_of_arbitrary_text(text):
    """Unknown characters come back as spaces."""
    expected = "".join(char if char in sa.CODE_OF_CHAR else " " for char in text)
    assert sa.decode(sa.encode(text)) == expected


@given(st.lists(st.text(alphabet=ALPHABET)))
def test_list_round_trip(items):
    """decode_list(encode_list(items)) == items."""
    assert sa.decode_list(sa.encode_list(items)) == items


@pytest.mark.parametrize(
    ("result", "request_id", "expected"),
    [
        (200, "618120", "200.6181203222"),
        ("007", "618120", "007.6181203222"),
        (-5, "618120", sa.encode("-5") + ".6181202222"),
        (1.5, "618120", sa.encode("1.5") + ".6181202222"),
        (True, "618120", sa.encode("True") + ".6181202222"),
        (200, "618125", sa.encode("200") + ".6181252222"),  # raw only for ids ending in 0
        ("", "618120", "83.6181202222"),  # empty string is sent as "-"
        ([], "618120", ".6181202222"),
    ],
)
def test_response_forms(result, request_id, expected):
    """Raw digits only for ^[0-9]+$ with ids ending in 0; otherwise encoded text."""
    assert sa.encode_response(result, request_id) == [expected]


def test_none_sends_nothing():
    """A None result sends no value (the sprite times out)."""
    assert sa.encode_response(None, "618120") == []


def test_multi_part_response():
    """Parts `part.RID NNN 1`, then the final with 2222; each ≤ the cap; reassembles."""
    text = "TimMcCool " * 30
    values = sa.encode_response(text, "618120", max_value_length=100)
    assert len(values) > 2
    part_size = 100 - (6 + 6)
    for number, value in enumerate(values[:-1], start=1):
        assert value == f"{value[:part_size]}.618120{number:03d}1"
        assert len(value) <= 100
    assert values[-1].endswith(".6181202222") and len(values[-1]) <= 100
    assert "".join(sprite_response(values, "618120")) == text


def test_too_many_parts():
    """More than 999 parts raises ResponseTooLong."""
    with pytest.raises(sa.ResponseTooLong):
        sa.encode_response("1" * 90_000, "618120", max_value_length=100)


def test_push_ids_and_error_response():
    """Push ids are 100000000 + 4 digits; handler errors reply with the 2-item list."""
    push_id = sa.push_request_id(random.Random(1))
    assert len(push_id) == 13 and push_id.startswith("100000000")
    assert sa.error_response("foo") == ["Error in request foo", "Check the Python console"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TO_HOST_VECTOR, sa.ToHostPacket("417950", "31494996603745462526494943")),
        ("-2121.123450", sa.ToHostPacket("123450", "2121", more=True)),
        (".123450", sa.ToHostPacket("123450", "")),
        ("3.1234509", sa.ToHostPacket("123450", rerequested_part=3)),
        ("3.123450", sa.ToHostPacket("123450", "3")),
        ("-3.1234509", None),
        (".1234509", None),
        ("21.12345", None),
        ("21.12345678", None),
        ("21", None),
        ("21.123450.1", None),
        (2121.123450, None),
    ],
)
def test_parse_to_host(value, expected):
    """Requests, chunks, re-requests `k.RID9`, and malformed values."""
    assert sa.parse_to_host(value) == expected


@pytest.mark.parametrize("length", [10, 244, 245, 490, 600])
def test_chunked_requests(length):
    """§15 check 9: 245-digit chunks (the final may be empty) reassemble per RID."""
    argument = ("abcdefghij" * 100)[: max(0, length // 2 - 4)]
    text = "foo&" + argument
    state = sa.RequestHostState()
    values = sprite_request_values(text, "555550")
    results = [state.receive(value, 1.0) for value in values]
    assert results[:-1] == [None] * (len(values) - 1)
    assert results[-1] == sa.IncomingRequest("555550", "foo", (argument,))


def test_interleaved_chunks_of_two_requests():
    """Chunks are assembled per RID."""
    state = sa.RequestHostState()
    first = sprite_request_values("a&" + "x" * 200, "111110")
    second = sprite_request_values("b&" + "y" * 200, "222220")
    assert state.receive(first[0], 0) is None
    assert state.receive(second[0], 0) is None
    assert state.receive(first[1], 0) == sa.IncomingRequest("111110", "a", ("x" * 200,))
    assert state.receive(second[1], 0) == sa.IncomingRequest("222220", "b", ("y" * 200,))


def test_respond_and_rerequest():
    """§15 check 9: `k.RID9` resends part k+1; the sprite repeats, so resends are throttled."""
    state = sa.RequestHostState(max_value_length=60)
    state.receive(sa.encode("long") + ".618120", 0)
    planned = state.respond("618120", "x" * 100, 0)
    values = [item.value for item in planned]
    assert len(values) > 2
    assert [item.variable for item in planned] == list(sa.FROM_HOST_VARIABLES[: len(values)])
    resend = state.receive("1.6181209", 5)
    assert isinstance(resend, sa.Resend) and resend.sets[0].value == values[1]
    assert state.receive("1.6181209", 5.1) == sa.Dropped("618120", "part was just resent")
    assert isinstance(state.receive("1.6181209", 6), sa.Resend)
    final = state.receive(f"{len(values) - 1}.6181209", 6)
    assert final.sets[0].value == values[-1]
    assert isinstance(state.receive(f"{len(values)}.6181209", 6), sa.Dropped)
    assert isinstance(state.receive("0.9999909", 6), sa.Dropped)


def test_only_the_last_15_multi_part_responses_are_kept():
    """Re-requests work for the 15 most recent multi-part responses only."""
    state = sa.RequestHostState(max_value_length=40)
    for index in range(16):
        state.respond(f"{10000 + index}0", "y" * 60, index)
    assert isinstance(state.receive("0.1000009", 100), sa.Dropped)
    assert isinstance(state.receive("0.1000109", 100), sa.Resend)
    state.respond("777770", "short", 100)  # single values are not remembered
    assert isinstance(state.receive("0.7777709", 101), sa.Dropped)


def test_dedupe_by_request_id():
    """A RID among the last 35 is ignored; older ones are accepted again."""
    state = sa.RequestHostState()
    request = sa.encode("ping") + ".100000"
    assert isinstance(state.receive(request, 0), sa.IncomingRequest)
    assert state.receive(request, 0) == sa.Dropped("100000", "request id already answered")
    for index in range(35):
        state.receive(sa.encode("ping") + f".{20000 + index}0", 1)
    assert isinstance(state.receive(request, 2), sa.IncomingRequest)


def test_two_clients_with_the_same_request_id():
    """§15 check 10: per-connection state; each client gets only its own answer."""
    alice, bob = sa.RequestHostState(), sa.RequestHostState()
    assert alice.receive(sa.encode("who") + ".424240", 0).name == "who"
    assert bob.receive(sa.encode("who") + ".424240", 0).name == "who"
    to_alice = alice.respond("424240", "alice", 0)
    to_bob = bob.respond("424240", "bob", 0)
    assert sprite_response([item.value for item in to_alice], "424240") == ["alice"]
    assert sprite_response([item.value for item in to_bob], "424240") == ["bob"]


def test_request_bounds_and_garbage():
    """Oversized or undecodable requests and too many open chunked requests are dropped."""
    state = sa.RequestHostState(max_request_digits=100, max_pending_requests=1)
    assert state.receive("-" + "21" * 40 + ".100010", 0) is None
    assert state.receive("-" + "21" * 40 + ".100010", 0) == sa.Dropped(
        "100010", "request too large"
    )
    assert state.receive("-21.100020", 0) is None
    assert state.receive("-21.100030", 0) == sa.Dropped("100030", "too many unfinished requests")
    assert state.receive("-21.100040", 61) is None  # the stale one expired
    assert state.receive("0521.100050", 61) == sa.Dropped("100050", "undecodable request")
    assert state.receive("hello", 61) == sa.Dropped("", "malformed value")


def test_pushes_are_paced_on_the_same_rotation():
    """send_values() continues the FROM_HOST round-robin with ≥ 100 ms spacing."""
    state = sa.RequestHostState()
    state.respond("100000", "a", 0)
    planned = state.send_values(sa.encode_response("hi", "1000000005569"), 0)
    assert planned[0].variable == sa.FROM_HOST_VARIABLES[1]
    assert planned[0].not_before == pytest.approx(0.1)
