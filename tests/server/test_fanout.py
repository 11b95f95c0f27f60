"""The fan-out on its own (server.fanout): batching, coalescing, authors, backlogs and timing.

Rooms come from a registry wired like `Server.open_rooms`; members are fakes whose transports
record frames, and the codec writes `key=value` lines.
"""

from __future__ import annotations

import asyncio

from server.events import EventBus
from server.fanout import FanoutSettings, write_queued
from server.rooms import RoomLimits
from tests.server.fakes import FakeMember, make_registry

FLUSH = 0.05


def room_with(count: int, settings: FanoutSettings | None = None, events: EventBus | None = None,
              **limits):
    """A room and `count` members in it."""
    registry = make_registry(settings=settings, events=events,
                             limits=RoomLimits(**limits) if limits else None)
    room = registry.open("R")
    members = [FakeMember(f"m{i}") for i in range(count)]
    for member in members:
        room.join(member)
    return room, members


async def test_latest_value_wins_within_one_flush():
    """Writes within one flush reach a member as one frame with each variable's newest value."""
    room, (author, other) = room_with(2)
    room.set("a", 1, author)
    room.set("b", 2, author)
    room.set("a", 3, author)
    await asyncio.sleep(FLUSH)
    assert other.frames() == ["a=3\nb=2"]


async def test_author_is_not_sent_its_own_writes():
    """Each author gets the batch without its own writes; others get every write in one frame."""
    room, (first, second, third) = room_with(3)
    room.set("a", 1, first)
    room.set("b", 2, second)
    await asyncio.sleep(FLUSH)
    assert first.frames() == ["b=2"]
    assert second.frames() == ["a=1"]
    assert third.frames() == ["a=1\nb=2"]


async def test_author_of_the_whole_batch_gets_nothing():
    """A member that wrote every pending variable receives no frame for that flush."""
    room, (author, other) = room_with(2)
    room.set("a", 1, author)
    room.set("a", 2, author)
    await asyncio.sleep(FLUSH)
    assert author.frames() == []
    assert other.frames() == ["a=2"]


async def test_latest_writer_owns_the_variable():
    """When two members write one variable, only the last writer is spared its echo."""
    room, (first, second) = room_with(2)
    room.set("a", 1, first)
    room.set("a", 2, second)
    await asyncio.sleep(FLUSH)
    assert first.frames() == ["a=2"]
    assert second.frames() == []


async def test_server_writes_reach_every_member():
    """A write with no author (the server's) reaches every member, even a lone one."""
    room, (only,) = room_with(1)
    room.set("a", 1, None)
    await asyncio.sleep(FLUSH)
    assert only.frames() == ["a=1"]


async def test_a_lone_authors_write_schedules_nothing():
    """A member alone in its room writes without scheduling any flush."""
    room, (only,) = room_with(1)
    room.set("a", 1, only)
    assert room.outbound.flush_handle is None
    assert not room.outbound.dirty


async def test_one_frame_is_encoded_once_for_every_reader():
    """Members that authored nothing get the very same frame bytes."""
    room, (author, *readers) = room_with(4)
    room.set("a", 1, author)
    await asyncio.sleep(FLUSH)
    written = {bytes(reader.transport.writes()) for reader in readers}
    assert len(written) == 1


async def test_paused_member_gets_newest_values_when_it_drains():
    """A paused member only records which keys it missed, then gets their newest values."""
    room, (author, slow) = room_with(2)
    slow.pause()
    room.set("a", 1, author)
    room.set("b", 1, author)
    await asyncio.sleep(FLUSH)
    room.set("a", 2, author)
    await asyncio.sleep(FLUSH)
    assert slow.frames() == []
    assert list(slow.backlog) == ["a", "b"]
    assert slow.catch_up is not None
    room.set("a", 3, author)  # the newest value is sent, whatever was missed
    slow.resume()
    assert slow.frames() == ["a=3\nb=1"]
    assert slow.backlog is None


async def test_own_newest_write_is_not_echoed_after_a_pause():
    """A paused member that writes a key it missed is not sent that key when it drains."""
    room, (author, slow) = room_with(2)
    slow.pause()
    room.set("a", 1, author)
    room.set("b", 1, author)
    await asyncio.sleep(FLUSH)
    room.set("a", 5, slow)
    slow.resume()
    assert slow.frames() == ["b=1"]


async def test_all_mode_sends_every_line_in_order():
    """In "all" mode every write is sent, in order, in one frame per flush."""
    room, (author, other) = room_with(2, FanoutSettings(coalesce="all"))
    room.set("a", 1, author)
    room.set("b", 2, author)
    room.set("a", 3, author)
    await asyncio.sleep(FLUSH)
    assert other.frames() == ["a=1\nb=2\na=3"]
    assert author.frames() == []


async def test_all_mode_backlog_is_replayed_in_order():
    """In "all" mode a paused member gets every line it missed, in order, when it drains."""
    room, (author, slow) = room_with(2, FanoutSettings(coalesce="all"))
    slow.pause()
    room.set("a", 1, author)
    await asyncio.sleep(FLUSH)
    room.set("a", 2, author)
    await asyncio.sleep(FLUSH)
    slow.resume()
    assert slow.frames() == ["a=1\na=2"]


async def test_all_mode_backlog_past_bound_closes_1013():
    """A paused member more than max_pending_lines behind is closed with 1013 and reported."""
    events = EventBus()
    dropped = []
    events.subscribe("backlog_dropped", lambda member, code: dropped.append((member, code)))
    settings = FanoutSettings(coalesce="all", max_pending_lines=3)
    room, (author, slow, fine) = room_with(3, settings, events)
    slow.pause()
    for value in range(4):
        room.set("a", value, author)
    await asyncio.sleep(FLUSH)
    assert slow.close_code == 1013
    assert dropped == [(slow, 1013)]
    assert fine.frames() == ["a=0\na=1\na=2\na=3"]


async def test_room_flushed_reports_lines_and_frames():
    """room_flushed says namespace, room, how many updates and how many frames were written."""
    events = EventBus()
    flushed = []
    events.subscribe("room_flushed", lambda *args: flushed.append(args))
    room, (author, _other, _third) = room_with(3, events=events)
    room.set("a", 1, author)
    room.set("b", 1, author)
    await asyncio.sleep(FLUSH)
    assert flushed == [("test", "R", 2, 2)]


async def test_traffic_counts_every_frame_byte_and_line_written():
    """The fan-out's totals match what members received: shared frames, author copies, dumps."""
    room, (author, other, third) = room_with(3)
    traffic = room.outbound.fanout.traffic
    room.set("a", 1, author)
    room.set("b", 22, other)
    await asyncio.sleep(FLUSH)
    written = [frame for member in (author, other, third) for frame in member.frames()]
    assert sorted(written) == ["a=1", "a=1\nb=22", "b=22"]
    lines = sum(len(frame.split("\n")) for frame in written)
    sizes = sum(len(frame) + 2 for frame in written)  # a short frame has a 2-byte header
    assert (traffic.frames_sent, traffic.updates_sent, traffic.bytes_sent) == (3, 4, sizes)
    assert lines == 4

    late = FakeMember("late")
    room.join(late)  # the join's dump: one frame with both variables
    assert late.frames() == ["a=1\nb=22"]
    assert (traffic.frames_sent, traffic.updates_sent) == (4, 6)
    assert traffic.bytes_sent == sizes + len("a=1\nb=22") + 2


async def test_coalesce_all_counts_traffic_too():
    """With coalesce = "all" the totals also count each frame and every line it carried."""
    room, (author, other) = room_with(2, FanoutSettings(coalesce="all"))
    traffic = room.outbound.fanout.traffic
    room.set("a", 1, author)
    room.set("a", 2, author)
    await asyncio.sleep(FLUSH)
    assert other.frames() == ["a=1\na=2"]
    assert (traffic.frames_sent, traffic.updates_sent, traffic.bytes_sent) == (1, 2, 9)


async def test_flush_delay_reports_the_wait_since_the_first_write():
    """flush_delay says how long the first write of a batch waited: about the burst window."""
    events = EventBus()
    delays = []
    events.subscribe("flush_delay", lambda namespace, seconds: delays.append((namespace, seconds)))
    settings = FanoutSettings(batch_hz=2.0, burst_window=0.02)
    room, (author, _other) = room_with(2, settings, events=events)
    room.set("a", 1, author)
    room.set("b", 1, author)
    await asyncio.sleep(0.1)
    assert len(delays) == 1
    namespace, seconds = delays[0]
    assert namespace == "test"
    assert 0.019 <= seconds < 0.08


async def test_quiet_room_flushes_after_the_burst_window():
    """A quiet room's first write leaves after burst_window, not a whole flush interval."""
    settings = FanoutSettings(batch_hz=2.0, burst_window=0.01)
    room, (author, other) = room_with(2, settings)
    loop = asyncio.get_running_loop()
    started = loop.time()
    room.set("a", 1, author)
    assert room.outbound.flush_due - started <= 0.011
    await asyncio.sleep(0.1)
    assert other.frames() == ["a=1"]


async def test_busy_room_waits_for_the_shared_tick():
    """Right after a flush, a room's next write waits for the next tick (a multiple of
    1/batch_hz on the loop clock), and the writes before it share its message."""
    settings = FanoutSettings(batch_hz=5.0, burst_window=0.01)
    room, (author, other) = room_with(2, settings)
    loop = asyncio.get_running_loop()
    room.set("a", 1, author)
    await asyncio.sleep(0.05)
    assert other.frames() == ["a=1"]
    started = loop.time()
    room.set("a", 2, author)
    due = room.outbound.flush_due
    assert 0 < due - started <= 0.2
    assert abs(due * 5.0 - round(due * 5.0)) < 1e-6  # on the tick grid
    room.set("b", 1, author)
    room.set("a", 3, author)
    await asyncio.sleep(max(0.0, due - loop.time() - 0.01))
    assert other.frames() == []  # still waiting for the tick
    await asyncio.sleep(0.05)
    assert other.frames() == ["a=3\nb=1"]


async def test_busy_rooms_flush_in_one_tick():
    """Every busy room of a namespace is flushed by the same tick, in one loop turn."""
    settings = FanoutSettings(batch_hz=5.0, burst_window=0.01)
    events = EventBus()
    registry = make_registry(settings=settings, events=events)
    loop = asyncio.get_running_loop()
    turns: list[str] = []

    def flushed(namespace, room_id, lines, frames):
        if not turns:  # whatever the loop runs next comes after this turn
            loop.call_soon(turns.append, "next turn")
        turns.append(room_id)

    rooms = []
    for name in ("R1", "R2", "R3"):
        room = registry.open(name)
        author, other = FakeMember(), FakeMember()
        room.join(author)
        room.join(other)
        room.set("a", 0, author)
        rooms.append((room, author, other))
    await asyncio.sleep(0.05)  # quiet flushes: every room is busy now
    events.subscribe("room_flushed", flushed)
    for room, author, other in rooms:
        other.frames()
        room.set("a", 1, author)
        await asyncio.sleep(0.01)
    assert len({room.outbound.flush_due for room, _, _ in rooms}) == 1
    await asyncio.sleep(0.25)
    assert [other.frames() for _, _, other in rooms] == [["a=1"]] * 3
    assert turns == ["R1", "R2", "R3", "next turn"]


async def test_a_room_dropped_while_waiting_for_the_tick_is_not_flushed():
    """Cancelling a room's pending fan-out (the room leaves memory) takes it off the tick."""
    settings = FanoutSettings(batch_hz=5.0, burst_window=0.01)
    room, (author, other) = room_with(2, settings)
    room.set("a", 1, author)
    await asyncio.sleep(0.05)
    other.frames()
    room.set("a", 2, author)
    room.outbound.cancel()
    await asyncio.sleep(0.25)
    assert other.frames() == []


async def test_flush_all_sends_pending_updates_now():
    """flush_all (shutdown) sends every pending batch at once and cancels its timer."""
    registry = make_registry(settings=FanoutSettings(batch_hz=1.0, burst_window=1.0))
    room = registry.open("R")
    author, other = FakeMember(), FakeMember()
    room.join(author)
    room.join(other)
    room.set("a", 1, author)
    registry.flush_all()
    assert other.frames() == ["a=1"]
    assert room.outbound.flush_handle is None


async def test_write_queued_closes_a_paused_member_too_far_behind():
    """write_queued writes the frame; a paused member past max_queue_bytes is closed 1013."""
    events = EventBus()
    dropped = []
    events.subscribe("backlog_dropped", lambda member, code: dropped.append(code))
    member = FakeMember()
    write_queued(member, b"\x81\x01x", 10, events)
    assert member.transport.writes() == b"\x81\x01x"
    member.pause()
    member.transport.buffer_size = 11
    write_queued(member, b"\x81\x01y", 10, events)
    assert member.close_code == 1013 and dropped == [1013]


async def test_write_by_a_non_member_reaches_a_lone_member():
    """A write whose author is not in the room (a client that left while the room loaded)
    still reaches the room's only member."""
    room, (only,) = room_with(1)
    departed = FakeMember("departed")
    room.set("a", 1, departed)
    await asyncio.sleep(FLUSH)
    assert only.frames() == ["a=1"]
