"""Spec scratch-cloud.md §18 cases 34-36 (batching, ordering, liveness) and §11 relay rules."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tests.conformance.helpers import (
    close_all,
    expect_close,
    expect_nothing,
    fresh_room,
    handshake_text,
    joined,
    latest_values,
    private_server,
    raw_connect,
    recv,
    recv_until,
    set_line,
    set_text,
    ws_connect,
)
from tests.server.rawclient import ConnectionEnded, RawClient


async def raw_writer(url: str, room: str, user: str = "writer") -> RawClient:
    """A raw client in `room`, used to put several messages into one TCP write."""
    raw = await raw_connect(url)
    await raw.send_text(handshake_text(room, user))
    await raw.drain()
    return raw


async def burst_then_collect(url: str, texts: list[str], wait: float = 0.3) -> list[str]:
    """Send `texts` from A in one TCP write; return the messages B got (until quiet)."""
    room = fresh_room()
    a = await raw_writer(url, room)
    b = await joined(url, room, "reader")
    await asyncio.sleep(0.05)
    await a.send_texts(*texts)
    messages = [str(await recv(b))]
    while True:
        try:
            messages.append(str(await asyncio.wait_for(b.recv(), wait)))
        except TimeoutError:
            break
    await close_all(a, b)
    return messages


# Project default: latest value wins


async def test_case_34_burst_of_20_sets_is_one_line(server):
    """20 sets of one variable in one burst reach a peer as a single line with the 20th value."""
    messages = await burst_then_collect(
        server.url, [set_text("☁ x", str(i)) for i in range(1, 21)]
    )
    assert messages == [set_line("☁ x", "20")]


async def test_case_34_separate_sends_end_with_last_value(server, room):
    """20 quick sets sent as separate writes: the last value a peer sees is the 20th."""
    a, b = await joined(server.url, room, "player1"), await joined(server.url, room, "player2")
    await asyncio.sleep(0.05)
    for i in range(1, 21):
        await a.send(set_text("☁ x", str(i)))
    lines = await recv_until(b, lambda got: latest_values(got).get("☁ x") == "20")
    values = [int(json.loads(line)["value"]) for line in lines]
    assert values == sorted(values) and len(values) <= 20  # never older after newer
    await expect_nothing(b)
    await close_all(a, b)


async def test_case_35_latest_value_keeps_first_position(server):
    """a=1, b=2, a=3 in one tick reach a peer as one message: a=3 then b=2."""
    messages = await burst_then_collect(
        server.url, [set_text("☁ a", "1"), set_text("☁ b", "2"), set_text("☁ a", "3")]
    )
    assert messages == [set_line("☁ a", "3") + "\n" + set_line("☁ b", "2")]


async def test_batch_mixes_writers_without_echo(server, room):
    """A batch with writes from A and B reaches C whole, and A and B only the other's writes."""
    a = await raw_writer(server.url, room, "player1")
    b = await raw_writer(server.url, room, "player2")
    c = await joined(server.url, room, "player3")
    await asyncio.sleep(0.05)
    await a.send_texts(set_text("☁ a", "1"))
    await b.send_texts(set_text("☁ b", "2"))
    lines = await recv_until(c, lambda got: len(latest_values(got)) == 2)
    assert latest_values(lines) == {"☁ a": "1", "☁ b": "2"}
    assert await a.recv_text() == set_line("☁ b", "2")
    assert await b.recv_text() == set_line("☁ a", "1")
    await asyncio.gather(expect_nothing(a), expect_nothing(b), expect_nothing(c))
    await close_all(a, b, c)


# [scratch] coalesce = "all" (cloud-server master behaviour)


@pytest.fixture(scope="module")
def keep_all(tmp_path_factory):
    """The cloud-server master choices: every update kept, invalid room IDs closed with 4000."""
    yield from private_server(tmp_path_factory, "master-like",
                              scratch={"coalesce": "all", "invalid_room_close_code": 4000})


async def test_case_08_master_invalid_room_close_code_4000(keep_all):
    """With invalid_room_close_code = 4000 (cloud-server master) an invalid ID closes 4000."""
    clients = [await ws_connect(keep_all.url) for _ in range(3)]
    for ws, project_id in zip(clients, ["", [], "😀" * 500], strict=True):
        await ws.send(handshake_text(project_id))
    await asyncio.gather(*(expect_close(ws, 4000) for ws in clients))


async def test_coalesce_all_keeps_every_update_in_order(keep_all):
    """With coalesce = "all", a=1, b=2, a=3 all arrive, in the order they were sent."""
    messages = await burst_then_collect(
        keep_all.url, [set_text("☁ a", "1"), set_text("☁ b", "2"), set_text("☁ a", "3")]
    )
    lines = "\n".join(messages).split("\n")
    assert lines == [set_line("☁ a", "1"), set_line("☁ b", "2"), set_line("☁ a", "3")]


async def test_coalesce_all_burst_of_20_arrives_whole(keep_all, room):
    """With coalesce = "all", 20 separate quick sets all arrive in order, in a few messages."""
    a, b = await joined(keep_all.url, room, "player1"), await joined(keep_all.url, room, "p2")
    await asyncio.sleep(0.05)
    for i in range(1, 21):
        await a.send(set_text("☁ x", str(i)))
    messages = []
    lines: list[str] = []
    while len(lines) < 20:
        messages.append(str(await recv(b)))
        lines.extend(messages[-1].split("\n"))
    assert lines == [set_line("☁ x", str(i)) for i in range(1, 21)]
    assert len(messages) < 20
    await expect_nothing(b)
    await close_all(a, b)


# [scratch] batch_hz


@pytest.fixture(scope="module")
def unbatched(tmp_path_factory):
    yield from private_server(tmp_path_factory, "unbatched", scratch={"batch_hz": 0})


async def test_batch_hz_0_sends_at_once_and_keeps_order(unbatched, room):
    """With batch_hz = 0, the dump comes first and peers end with every variable's last value."""
    a = await joined(unbatched.url, room, "player1")
    await a.send(set_text("☁ a", "0"))
    await asyncio.sleep(0.05)
    b = await joined(unbatched.url, room, "player2")
    assert await recv(b) == set_line("☁ a", "0")  # the dump
    for i in range(1, 31):
        await a.send(set_text("☁ a" if i % 2 else "☁ b", str(i)))
    lines = await recv_until(b, lambda got: latest_values(got) == {"☁ a": "29", "☁ b": "30"})
    for name in ("☁ a", "☁ b"):
        values = [int(json.loads(x)["value"]) for x in lines if json.loads(x)["name"] == name]
        assert values == sorted(values)
    await expect_nothing(b)
    await close_all(a, b)


async def test_batch_hz_0_single_write_still_coalesces(unbatched):
    """With batch_hz = 0, a=1, b=2, a=3 read in one go still reach peers as a=3, b=2."""
    messages = await burst_then_collect(
        unbatched.url, [set_text("☁ a", "1"), set_text("☁ b", "2"), set_text("☁ a", "3")]
    )
    assert "\n".join(messages).split("\n")[-2:] in (
        [set_line("☁ a", "3"), set_line("☁ b", "2")],
        [set_line("☁ b", "2"), set_line("☁ a", "3")],
    )


async def test_batch_hz_limits_messages_per_second(make_server, room):
    """A busy room flushes at most batch_hz times a second (here 10)."""
    srv = make_server(scratch={"batch_hz": 10})
    a, b = await joined(srv.url, room, "player1"), await joined(srv.url, room, "player2")
    await asyncio.sleep(0.05)
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < 1.0:
        i += 1
        await a.send(set_text("☁ x", str(i)))
        await asyncio.sleep(0.005)
    messages = []
    try:
        while True:
            messages.append(str(await asyncio.wait_for(b.recv(), 0.3)))
    except TimeoutError:
        pass
    assert json.loads(messages[-1])["value"] == str(i)
    assert len(messages) <= 10 * 1.3 + 2, len(messages)
    await close_all(a, b)


async def test_busy_room_sends_on_a_tick_so_later_writes_share_its_message(make_server, room):
    """A room that has been quiet sends a lone write at once; a busy room's writes wait for
    the next tick (every 1/batch_hz), and the writes that arrive before it share its message."""
    srv = make_server(scratch={"batch_hz": 4})  # 250 ms ticks, wide enough for CI jitter
    a, b = await joined(srv.url, room, "player1"), await joined(srv.url, room, "player2")
    await asyncio.sleep(0.9)  # quiet: longer than 3 intervals since any flush

    started = time.monotonic()
    await a.send(set_text("☁ x", "1"))
    assert await recv(b) == set_line("☁ x", "1")
    assert time.monotonic() - started < 0.15  # burst_window (2 ms), not a tick

    # Busy now: this write waits for the next tick.
    await a.send(set_text("☁ x", "2"))
    assert await recv(b) == set_line("☁ x", "2")
    ticked = time.monotonic()
    # Right after a tick, three writes have a whole interval to share the next message,
    # which leaves one tick (250 ms) after the last.
    for name, value in (("☁ x", "3"), ("☁ y", "4"), ("☁ x", "5")):
        await a.send(set_text(name, value))
    message = str(await recv(b))
    assert message.split("\n") == [set_line("☁ x", "5"), set_line("☁ y", "4")]
    assert 0.15 < time.monotonic() - ticked < 0.4
    await expect_nothing(b)
    await close_all(a, b)


# Slow readers (§11: non-blocking fan-out)


@pytest.fixture(scope="module")
def small_buffers(tmp_path_factory):
    yield from private_server(tmp_path_factory, "small-buffers",
                              server={"write_buffer_high": 1024})


async def test_slow_reader_does_not_delay_others_and_catches_up(small_buffers, room):
    """A client that stops reading never slows the others and, once it reads, has the latest."""
    url = small_buffers.url
    stalled = await raw_connect(url, rcvbuf=4096)
    await stalled.send_text(handshake_text(room, "stalled"))
    await stalled.drain()
    a = await joined(url, room, "writer")
    b = await joined(url, room, "reader")
    await asyncio.sleep(0.1)
    names = [f"☁ v{k}" for k in range(4)]
    rounds, width = 150, 20_000
    sent = 0
    start = time.monotonic()
    for r in range(rounds):
        for name in names:
            await a.send(set_text(name, f"{r}." + "0" * width))
            sent += 1
    final = {name: f"{rounds - 1}." + "0" * width for name in names}
    # B keeps up: it gets the final values promptly, with the stalled client not reading.
    await recv_until(b, lambda got: latest_values(got) == final, timeout=10)
    await a.send(set_text("☁ ping", "1"))
    await recv_until(b, lambda got: latest_values(got).get("☁ ping") == "1", timeout=2)
    assert time.monotonic() - start < 10
    # Now the stalled client reads: it ends with the latest values, never going backwards.
    seen: dict[str, list[int]] = {name: [] for name in names}
    lines_read = 0
    async with asyncio.timeout(10):
        while any(not seen[n] or seen[n][-1] != rounds - 1 for n in names):
            text = await stalled.recv_text(timeout=10)
            for line in text.split("\n"):
                message = json.loads(line)
                if message["name"] in seen:
                    seen[message["name"]].append(int(message["value"].split(".")[0]))
                lines_read += 1
    for name in names:
        assert seen[name] == sorted(seen[name]), name
    assert lines_read < sent, (lines_read, sent)  # what it missed was coalesced
    await close_all(a, b, stalled)


# Liveness (case 36)


@pytest.fixture(scope="module")
def quick_liveness(tmp_path_factory):
    yield from private_server(tmp_path_factory, "liveness",
                              server={"handshake_timeout": 1.0, "ping_interval": 1.0})


async def time_until_dropped(raw: RawClient, start: float, limit: float) -> tuple[float, bool]:
    """Seconds from `start` until the server ends the connection; and whether it sent a close."""
    closed = await raw.expect_close(timeout=limit)
    if closed.frame:  # then the TCP connection ends
        assert await raw.wait_eof(timeout=limit), "TCP stayed open after the close frame"
    return time.monotonic() - start, closed.frame


async def test_case_36_liveness_with_short_timeouts(quick_liveness, room):
    """No handshake or no pongs: dropped within 1-2 intervals; answering pings: stays open."""
    url = quick_liveness.url
    timeout = interval = 1.0
    slack = 1.0

    async def no_handshake() -> None:
        start = time.monotonic()
        raw = await raw_connect(url)
        raw.auto_pong = True  # even a client that answers pings must handshake in time
        elapsed, _ = await time_until_dropped(raw, start, 5)
        assert timeout - 0.05 <= elapsed <= 2 * timeout + slack, elapsed
        await raw.abort()

    async def no_upgrade() -> None:
        start = time.monotonic()
        raw = await raw_connect(url, upgrade=False)  # TCP only, never a request
        with pytest.raises(ConnectionEnded):  # not even part of a frame before TCP ends
            await raw.recv_frame(timeout=5)
        elapsed = time.monotonic() - start
        assert timeout - 0.05 <= elapsed <= 2 * timeout + slack, elapsed
        await raw.abort()

    async def ignores_pings() -> None:
        start = time.monotonic()
        raw = await raw_connect(url)
        await raw.send_text(handshake_text(room, "deaf"))
        elapsed, _ = await time_until_dropped(raw, start, 5)
        assert elapsed <= 2 * interval + slack, elapsed
        assert raw.pings and all(p == b"" for p in raw.pings)  # empty pings, as the reference
        await raw.abort()

    async def answers_pings() -> None:
        ws = await joined(url, room, "alive")  # the websockets client answers pings itself
        await asyncio.sleep(4.5 * interval)
        writer = await joined(url, room, "writer")
        await writer.send(set_text("☁ x", "1"))
        assert await recv(ws) == set_line("☁ x", "1")
        await close_all(ws, writer)

    async def silent_without_handshake_ws() -> None:
        ws = await ws_connect(url)
        await asyncio.sleep(0)
        try:
            async with asyncio.timeout(2 * timeout + slack):
                await ws.wait_closed()
        except TimeoutError:
            raise AssertionError("a client without a handshake was not dropped") from None
        assert ws.close_code in (1006, 1011, 1001, 4000)

    await asyncio.gather(no_handshake(), no_upgrade(), ignores_pings(), answers_pings(),
                         silent_without_handshake_ws())


@pytest.mark.slow
async def test_case_36_liveness_at_defaults(server, room):
    """At the defaults: silent or deaf clients go within 30-60 s; a responsive one stays 65 s+."""

    async def answers_pings() -> None:
        ws = await joined(server.url, room, "alive")
        await asyncio.sleep(66)
        writer = await joined(server.url, room, "writer")
        await writer.send(set_text("☁ x", "1"))
        assert await recv(ws) == set_line("☁ x", "1")
        await close_all(ws, writer)

    async def dropped(handshake: bool) -> None:
        start = time.monotonic()
        raw = await raw_connect(server.url)
        if handshake:
            await raw.send_text(handshake_text(room, "deaf"))  # and never answers a ping
        else:
            raw.auto_pong = True
        elapsed, _ = await time_until_dropped(raw, start, 70)
        assert 30 - 0.05 <= elapsed <= 60 + 2, elapsed
        await raw.abort()

    await asyncio.gather(answers_pings(), dropped(True), dropped(False))
