"""The real, unmodified sprites in scratch-vm against the sprite plugins of a real server.

Each test loads a project from shared/testdata, adds one green-flag script in memory that
calls the sprite's own custom blocks (by proccode; argument ids come from the prototype),
times the connect with Scratch's own timer, and reads the sprite's result variables. The
scratchcommunication demo's own green-flag script is detached (it would connect and request on
its own), and the session state the project was saved with is cleared, as the testdata README
advises. Handshake times measured here are printed (`pytest -s`) and recorded in the report.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from websockets.asyncio.client import connect

from tests.conftest import ServerProcess, toml_value
from tests.interop import sb3
from tests.interop.vm import ScratchVM, ScratchVMUnavailable, check_setup
from tests.plugins.server_keys import Keys
from tests.plugins.testdata import (
    SCRATCHATTACH_SB3,
    SCRATCHCOMMUNICATION_SB3,
    TESTDATA,
    fixture_path,
)

pytestmark = pytest.mark.slow

SCRATCHCOMMUNICATION = TESTDATA / SCRATCHCOMMUNICATION_SB3
SCRATCHATTACH = TESTDATA / SCRATCHATTACH_SB3
HANDLERS = "examples.sprite_handlers:Handlers"
SOCKET_SPRITE = "CloudConnection"
ATTACH_SPRITE = "Cloud Requests"

SPRITE_VARIABLES = {"☁ FROM_CLIENT", "☁ TO_HOST"} | {f"☁ TO_CLIENT_{n}" for n in range(1, 5)} | {
    f"☁ FROM_HOST_{n}" for n in range(1, 10)
}

# Stage variables added to the projects for the test script's results.
T0, T1, T2, DONE, SECOND = "stratus t0", "stratus t1", "stratus t2", "stratus done", "stratus r2"


@pytest.fixture(scope="module", autouse=True)
def node_harness():
    """Fail with setup instructions if node or the npm packages are missing."""
    try:
        check_setup()
    except ScratchVMUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    for filename in (SCRATCHCOMMUNICATION_SB3, SCRATCHATTACH_SB3):
        fixture_path(filename)



@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    """A fresh EC and RSA key pair for the server."""
    return Keys(tmp_path_factory.mktemp("vm-keys"))


@pytest.fixture(scope="module")
def sprite_server(tmp_path_factory, keys) -> ServerProcess:
    """A server with CloudRequests on `sc-*` and ScratchattachRequests on `sa-*` / `sa256-*`."""
    proc = ServerProcess(tmp_path_factory.mktemp("vm-sprite-server"))
    plugins = [
        {"use": "plugins.sprites.scratchcommunication:CloudRequests", "rooms": ["sc-*"],
         "handlers": HANDLERS, "ec_key_file": str(keys.ec_file),
         "rsa_key_file": str(keys.rsa_file)},
        {"use": "plugins.sprites.scratchattach_plugin:ScratchattachRequests",
         "rooms": ["sa-*"], "handlers": HANDLERS},
        {"use": "plugins.sprites.scratchattach_plugin:ScratchattachRequests",
         "rooms": ["sa256-*"], "handlers": HANDLERS, "max_value_length": 256},
    ]
    lines = []
    for entry in plugins:
        lines.append("[[plugins]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
        lines.append("")
    with proc.config_path.open("a", encoding="utf-8") as handle:
        handle.write("\n" + "\n".join(lines))
    proc.start()
    yield proc
    proc.stop()


def room(prefix: str) -> str:
    """A fresh room id for one plugin's glob."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def add_result_variables(project: dict) -> None:
    """Stage variables the test script writes its timings and results into."""
    stage = sb3.find_target(project)
    for index, name in enumerate((T0, T1, T2, DONE, SECOND)):
        stage["variables"][f"stratus-result-{index}"] = [name, ""]


def detach_demo_script(project: dict) -> None:
    """Detach the scratchcommunication demo (green flag → connect securely → `test 5`)."""
    blocks = sb3.find_target(project, SOCKET_SPRITE)["blocks"]
    for block in list(blocks.values()):
        if not (isinstance(block, dict) and block.get("opcode") == "event_whenflagclicked"):
            continue
        first = blocks.get(block.get("next"))
        if first and first.get("mutation", {}).get("proccode", "").startswith("[cloud socket]"):
            block["next"] = None
            first.update(parent=None, topLevel=True, x=2000, y=2000)  # a loose stack never runs


def timer() -> sb3.Block:
    """Scratch's `(timer)` reporter."""
    return sb3.block("sensing_timer")


class Spectator:
    """A plain cloud client in the same room that records every variable name it is sent."""

    def __init__(self, url: str, room_id: str) -> None:
        self.url, self.room_id = url, room_id
        self.names: set[str] = set()

    async def __aenter__(self) -> Spectator:
        self.ws = await connect(self.url, compression=None, proxy=None,
                                user_agent_header="stratus-tests (spectator)")
        handshake = {"method": "handshake", "user": "spectator", "project_id": self.room_id}
        await self.ws.send(json.dumps(handshake))
        self.task = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        async for frame in self.ws:
            for line in str(frame).split("\n"):
                if line:
                    self.names.add(json.loads(line).get("name"))

    async def __aexit__(self, *exc_info) -> None:
        await self.ws.close()
        self.task.cancel()


def socket_project(connect_block: str, secure: dict[str, object], clear: bool = True) -> bytes:
    """The scratchcommunication project with public data patched and one driving script."""

    def patch(project: dict) -> None:
        detach_demo_script(project)
        add_result_variables(project)
        cleared = {"[secure] client key": "", "[secure] client id": ""} if clear else {}
        for name, value in {**cleared, "# TIMEOUT": "20", **secure}.items():
            sb3.set_saved_value(project, name, value)
        sb3.add_script(project, [
            sb3.when_flag_clicked(),
            sb3.wait(0.3),
            sb3.set_var(T0, timer()),
            sb3.call(connect_block),
            sb3.set_var(T1, timer()),
            sb3.call("[cloud requests] initiate new request %s", "test"),
            sb3.call("[cloud requests] add argument %s", "5"),
            sb3.call("[cloud requests] send initiated request"),
            sb3.set_var(T2, timer()),
            sb3.set_var(SECOND, sb3.var("[cloud] reception")),
            # Negative numbers and exponents go out unquoted: "add -3 1e1".
            sb3.call("[cloud requests] initiate new request %s", "add"),
            sb3.call("[cloud requests] add argument %s", "-3"),
            sb3.call("[cloud requests] add argument %s", "1e1"),
            sb3.call("[cloud requests] send initiated request"),
            sb3.set_var(DONE, 1),
        ], target=SOCKET_SPRITE, x=3000, y=0)

    return sb3.patch_project(SCRATCHCOMMUNICATION.read_bytes(), patch)


async def run_socket_sprite(server: ServerProcess, connect_block: str,
                            secure: dict[str, object], timeout: float,
                            clear: bool = True) -> dict[str, object]:
    """Run the project in scratch-vm; the result variables and timings.

    A spectator in the same room must see none of the sprite's traffic.
    """
    project = socket_project(connect_block, secure, clear)
    room_id = room("sc")
    async with Spectator(server.url, room_id) as spectator, \
            ScratchVM(server.url, project, project_id=room_id, user="sprite") as vm:
        await vm.greenflag()
        await vm.wait_for_var(DONE, lambda value: str(value) == "1", timeout=timeout)
        values = {name: await vm.get_var(name)
                  for name in (T0, T1, T2, SECOND, "[cloud] reception", "[cloud] status")}
        await asyncio.sleep(0.2)
        assert not (spectator.names & SPRITE_VARIABLES), spectator.names
    values["connect_seconds"] = float(values[T1]) - float(values[T0])
    values["request_seconds"] = float(values[T2]) - float(values[T1])
    return values


def report(label: str, values: dict[str, object]) -> None:
    """Print the measured handshake and request times (shown with `pytest -s`)."""
    print(f"\n[scratch-vm] {label}: connect {values['connect_seconds']:.2f} s, "
          f"request round trip {values['request_seconds']:.2f} s")


def check_round_trips(values: dict[str, object]) -> None:
    """Both requests got their replies in the sprite's own variables."""
    assert values[SECOND] == "Hello client! 5 squared is 25."
    assert values["[cloud] reception"] == "7"
    assert values["[cloud] status"] == "done"


async def test_scratchcommunication_insecure_round_trip(sprite_server):
    """The real sprite: connect insecurely, then `test 5` and `add -3 1e1` round trips."""
    values = await run_socket_sprite(
        sprite_server, "[cloud socket] connect insecurely", {}, timeout=30
    )
    report("insecure", values)
    check_round_trips(values)


async def test_scratchcommunication_insecure_with_saved_key_left_in(sprite_server):
    """Saved session state not cleared: the encrypted `_connect` still opens a session."""
    values = await run_socket_sprite(
        sprite_server, "[cloud socket] connect insecurely", {}, timeout=30, clear=False
    )
    check_round_trips(values)


async def test_scratchcommunication_ec_round_trip(sprite_server, keys):
    """The real sprite: EC secure connect with a fresh server key, then two requests."""
    values = await run_socket_sprite(
        sprite_server, "[cloud socket] connect securely",
        {"[secure] key exchange scheme": "EC",
         "[secure] public base": keys.ec.base.hex(),
         "[secure] public point": keys.ec.public_point.hex()},
        timeout=60,
    )
    report("EC", values)
    check_round_trips(values)


async def test_scratchcommunication_rsa_round_trip(sprite_server, keys):
    """The real sprite: RSA secure connect (e = 3, 2080-bit modulus), then two requests."""
    values = await run_socket_sprite(
        sprite_server, "[cloud socket] connect securely",
        {"[secure] key exchange scheme": "RSA",
         "[secure] public exponent": str(keys.rsa.public_exponent),
         "[secure] public modulus": str(keys.rsa.modulus)},
        timeout=90,
    )
    report("RSA", values)
    check_round_trips(values)


def attach_project(calls: list[sb3.Block]) -> bytes:
    """The scratchattach template with one driving script on its sprite."""

    def patch(project: dict) -> None:
        add_result_variables(project)
        script = [sb3.when_flag_clicked(), sb3.wait(0.5), sb3.set_var(T0, timer())]
        for index, call in enumerate(calls):
            script.append(call)
            if index == 0:
                script.append(sb3.set_var(T1, timer()))
                script.append(sb3.set_var(SECOND, sb3.list_contents("response")))
        script.append(sb3.set_var(DONE, 1))
        sb3.add_script(project, script, target=ATTACH_SPRITE, x=3000, y=0)

    return sb3.patch_project(SCRATCHATTACH.read_bytes(), patch)


async def test_scratchattach_template_round_trip(sprite_server):
    """The real template: `ping` → pong, then `foo&TimMcCool` → a 3-item response list."""
    project = attach_project([
        sb3.call("Send request | request name: %s and wait", "ping"),
        sb3.call("Send Request | request name: %s argument1: %s and wait", "foo", "TimMcCool"),
    ])
    room_id = room("sa")
    async with Spectator(sprite_server.url, room_id) as spectator, \
            ScratchVM(sprite_server.url, project, project_id=room_id) as vm:
        await vm.greenflag()
        await vm.wait_for_var(DONE, lambda value: str(value) == "1", timeout=30)
        first = await vm.get_var(SECOND)
        response = await vm.get_list("response")
        status = await vm.get_var("_request status")
        seconds = float(await vm.get_var(T1)) - float(await vm.get_var(T0))
        await asyncio.sleep(0.2)
        assert not (spectator.names & SPRITE_VARIABLES), spectator.names
    print(f"\n[scratch-vm] scratchattach: ping round trip {seconds:.2f} s")
    assert first == "pong"
    assert response == ["TimMcCool", "200", "TimMcCool"]
    assert status == "DONE"


async def test_scratchattach_template_multipart_response(sprite_server):
    """The real template assembles a response sent in parts (256-character values)."""
    project = attach_project([
        sb3.call("Send request | request name: %s argument1: %s argument2: %s and wait",
                 "repeat", "ab", "300"),
    ])
    async with ScratchVM(sprite_server.url, project, project_id=room("sa256")) as vm:
        await vm.greenflag()
        await vm.wait_for_var(DONE, lambda value: str(value) == "1", timeout=30)
        response = await vm.get_list("response")
        status = await vm.get_var("_request status")
    assert status == "DONE"
    assert response == ["ab" * 300]
