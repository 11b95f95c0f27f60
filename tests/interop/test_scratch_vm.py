"""Real Scratch 3 runtimes (npm scratch-vm in Node, TurboWarp-style cloud provider) against the
server. Setup: `npm ci --prefix tests/interop/node`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json

import pytest
from websockets.asyncio.client import connect

from tests.interop import sb3
from tests.interop.vm import ScratchVM, ScratchVMUnavailable, check_setup
from tests.plugins.testdata import SCRATCHCOMMUNICATION_SB3, fixture_path

pytestmark = pytest.mark.slow

COMMAND = "☁ command"
REPLY = "☁ reply"
SCORE = "☁ score"


@pytest.fixture(scope="module", autouse=True)
def node_harness():
    try:
        check_setup()
    except ScratchVMUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def responder_project(score=0) -> bytes:
    """when flag clicked: forever { if ☁ command = 1 { set ☁ reply to 42; change seen by 1;
    set ☁ command to 0 }; wait 0 }"""
    return sb3.make_project(
        {COMMAND: 0, REPLY: 0, SCORE: score},
        variables={"seen": 0},
        scripts=[
            [
                sb3.when_flag_clicked(),
                sb3.set_var("seen", 0),
                sb3.forever(
                    [
                        sb3.if_(
                            sb3.equals(sb3.var(COMMAND), 1),
                            [
                                sb3.set_var(REPLY, 42),
                                sb3.change_var("seen", 1),
                                sb3.set_var(COMMAND, 0),
                            ],
                        ),
                        sb3.wait(0),
                    ]
                ),
            ]
        ],
    )


async def handshake(url: str, room: str, user: str = "pyclient"):
    ws = await connect(url, compression=None, user_agent_header="stratus-tests (interop)")
    await ws.send(json.dumps({"method": "handshake", "user": user, "project_id": room}) + "\n")
    return ws


async def send_set(ws, name: str, value) -> None:
    await ws.send(
        json.dumps({"method": "set", "name": name, "value": value}, ensure_ascii=False) + "\n"
    )


async def recv_sets(ws, timeout: float):
    """Yield (name, value) of every set line received until `timeout` passes without one."""
    while True:
        try:
            message = await asyncio.wait_for(ws.recv(), timeout)
        except TimeoutError:
            return
        for line in message.split("\n"):
            if line:
                data = json.loads(line)
                yield data.get("name"), data.get("value")


async def wait_for_set(ws, name: str, value, timeout: float = 10.0) -> list:
    seen = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        async for item in recv_sets(ws, deadline - loop.time()):
            seen.append(item)
            if item == (name, value):
                return seen
    raise AssertionError(f"{name}={value!r} never arrived; got {seen!r}")


async def test_value_set_in_one_vm_reaches_the_other(server, room):
    project = responder_project()
    vm_a = ScratchVM(server.url, project, project_id=room, user="player111", name="A")
    vm_b = ScratchVM(server.url, project, project_id=room, user="player222", name="B")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(vm_a.close)
        stack.push_async_callback(vm_b.close)
        await asyncio.gather(vm_a.start(), vm_b.start())
        assert vm_a.ready_info["cloud_vars"] == [COMMAND, REPLY, SCORE]
        await vm_a.greenflag()
        await vm_b.greenflag()
        # Both handshakes must be in before A sets (else B would just get it in its dump).
        await asyncio.sleep(0.3)

        await vm_a.set_var(SCORE, 123)
        assert await vm_b.wait_for_var(SCORE, 123) == 123
        # Strings are relayed verbatim (no number conversion on the way).
        await asyncio.sleep(0.1)  # past A's 50 ms client-side throttle
        await vm_a.set_var(SCORE, "007")
        assert await vm_b.wait_for_var(SCORE, "007") == "007"

        assert {"method": "set", "name": SCORE, "value": 123} in vm_b.received
        handshakes = [m for m in vm_a.sent if m["method"] == "handshake"]
        assert handshakes == [{"method": "handshake", "user": "player111", "project_id": room}]
        # The sender never gets its own update back.
        assert not any(m.get("name") == SCORE for m in vm_a.received)


async def test_server_side_set_changes_project_behaviour(server, room):
    async with ScratchVM(server.url, responder_project(), project_id=room) as vm:
        await vm.greenflag()
        ws = await handshake(server.url, room)
        try:
            await asyncio.sleep(0.2)
            assert await vm.get_var("seen") == "0"  # "set seen to 0" stores the text
            await send_set(ws, COMMAND, 1)
            # The VM sees ☁ command = 1, its script answers through the cloud.
            seen = await wait_for_set(ws, REPLY, "42")
            assert await vm.wait_for_var("seen", 1) == 1
            assert await vm.get_var(REPLY) == "42"
            # ...and resets the command (sent after the 50 ms throttle).
            if (COMMAND, "0") not in seen:
                await wait_for_set(ws, COMMAND, "0")
            assert await vm.wait_for_var(COMMAND, "0") == "0"
            assert {"method": "set", "name": COMMAND, "value": 1} in vm.received
        finally:
            await ws.close()


async def test_stored_values_reach_a_vm_on_connect(server, room):
    ws = await handshake(server.url, room)
    await send_set(ws, SCORE, "99")
    await send_set(ws, REPLY, 7)
    await asyncio.sleep(0.1)
    await ws.close()
    # A second plain client proves the server stored them (its handshake dump).
    probe = await handshake(server.url, room, user="probe")
    try:
        message = await asyncio.wait_for(probe.recv(), 10)
        dump = [json.loads(line) for line in message.split("\n") if line]
    finally:
        await probe.close()
    assert {"method": "set", "name": SCORE, "value": "99"} in dump
    assert {"method": "set", "name": REPLY, "value": 7} in dump

    async with ScratchVM(server.url, responder_project(score=0), project_id=room) as vm:
        assert await vm.wait_for_var(SCORE, "99") == "99"
        assert await vm.wait_for_var(REPLY, 7) == 7
        dump_lines = [m for m in vm.received if m.get("method") == "set"]
        assert {"method": "set", "name": SCORE, "value": "99"} in dump_lines


async def test_patched_testdata_sprite_runs_its_own_custom_block():
    """sb3.patch_project + sb3.call drive a real sprite's custom block (no server needed)."""
    path = fixture_path(SCRATCHCOMMUNICATION_SB3)

    def patch(project):
        stage = sb3.find_target(project)
        stage["variables"]["stratus-probe"] = ["probe", ""]
        sb3.add_script(
            project,
            [
                sb3.when_flag_clicked(),
                sb3.call("_ sha256 %s", "abc"),
                sb3.set_var("probe", sb3.var("[sha] sha256 [sha256_in]:out")),
            ],
            target="CloudConnection",
        )

    patched = sb3.patch_project(path.read_bytes(), patch)
    async with ScratchVM(None, patched, connect="never") as vm:
        await vm.greenflag()
        digest = await vm.wait_for_var("probe", lambda value: value != "", timeout=30)
    assert digest == hashlib.sha256(b"abc").hexdigest()
