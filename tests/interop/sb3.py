"""Build small Scratch 3 projects (.sb3) in memory, and patch project.json of existing ones.

A project is a zip with `project.json` (targets, variables, blocks) plus asset files. Scripts are
written with the block helpers below and turned into raw Scratch 3 block JSON, e.g.::

    from tests.interop import sb3

    project = sb3.make_project(
        {"☁ command": 0, "☁ reply": 0},
        variables={"seen": 0},
        scripts=[[
            sb3.when_flag_clicked(),
            sb3.forever([
                sb3.if_(sb3.equals(sb3.var("☁ command"), 1), [
                    sb3.set_var("☁ reply", 42),
                    sb3.change_var("seen", 1),
                ]),
                sb3.wait(0),
            ]),
        ]],
    )

Driving a sprite's own custom blocks in an existing project (one extra green-flag script)::

    patched = sb3.patch_project(original, lambda project: sb3.add_script(
        project,
        [sb3.when_flag_clicked(), sb3.call("[cloud socket] connect insecurely")],
        target="CloudConnection",
    ))

`call()` finds the argument ids from the procedure's prototype in the target when the script is
added; pass `argumentids=` to give them explicitly. Variable, list and broadcast names are
resolved against the target and then the stage (a missing broadcast is created on the stage).
"""

from __future__ import annotations

import copy
import hashlib
import io
import itertools
import json
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

CLOUD_PREFIX = "☁ "

# A tiny SVG costume shared by every generated target (an .sb3 target needs one costume).
_COSTUME_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="2" height="2" viewBox="0 0 2 2">'
    b'<rect width="2" height="2" fill="#4c97ff"/></svg>'
)
_COSTUME_MD5 = hashlib.md5(_COSTUME_SVG).hexdigest()  # noqa: S324 - Scratch asset ids are md5

# Primitive codes used in compressed inputs (scratch-vm src/serialization/sb3.js).
MATH_NUM = 4
POSITIVE_NUM = 5
WHOLE_NUM = 6
INTEGER_NUM = 7
TEXT = 10
BROADCAST = 11
VAR = 12
LIST = 13

# Input slots that hold a boolean block without a shadow.
_SHADOWLESS_SLOTS = {
    ("control_if", "CONDITION"),
    ("control_if_else", "CONDITION"),
    ("control_wait_until", "CONDITION"),
    ("control_repeat_until", "CONDITION"),
    ("control_while", "CONDITION"),
    ("operator_and", "OPERAND1"),
    ("operator_and", "OPERAND2"),
    ("operator_or", "OPERAND1"),
    ("operator_or", "OPERAND2"),
    ("operator_not", "OPERAND"),
}


# ---------------------------------------------------------------------------------------------
# zip and project.json


def read_project(sb3: bytes) -> dict:
    """The parsed project.json of an .sb3."""
    with zipfile.ZipFile(io.BytesIO(sb3)) as archive:
        return json.loads(archive.read("project.json"))


def write_sb3(project: dict, assets: dict[str, bytes] | None = None) -> bytes:
    """An .sb3 holding `project` as project.json plus the given asset files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("project.json", json.dumps(project, ensure_ascii=False))
        for name, data in (assets or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def patch_project(sb3: bytes, fn: Callable[[dict], dict | None]) -> bytes:
    """A copy of `sb3` whose project.json is `fn(project)`.

    `fn` may modify the dict in place and return None, or return a new dict. Every other file of
    the archive is copied unchanged.
    """
    with zipfile.ZipFile(io.BytesIO(sb3)) as source:
        project = json.loads(source.read("project.json"))
        result = fn(project)
        if result is not None:
            project = result
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if info.filename == "project.json":
                    target.writestr("project.json", json.dumps(project, ensure_ascii=False))
                else:
                    target.writestr(info, source.read(info.filename))
    return buffer.getvalue()


def find_target(project: dict, name: str | None = None) -> dict:
    """The target called `name` (the stage if None, "Stage" or "_stage_")."""
    for target in project["targets"]:
        if name in (None, "_stage_") and target["isStage"]:
            return target
        if target["name"] == name:
            return target
    raise KeyError(f"no target named {name!r}")


def stage_variables(project: dict) -> dict[str, Any]:
    """{name: saved value} of the stage's scalar variables."""
    return {v[0]: v[1] for v in find_target(project)["variables"].values()}


def set_saved_value(project: dict, name: str, value: Any, target: str | None = None) -> None:
    """Change the saved value of a variable (e.g. clear a session key before the green flag)."""
    for var in find_target(project, target)["variables"].values():
        if var[0] == name:
            var[1] = value
            return
    raise KeyError(f"no variable named {name!r}")


# ---------------------------------------------------------------------------------------------
# Block helpers


@dataclass
class Block:
    """One block: `inputs` values may be literals, `Block`s, `VarRef`/`ListRef` or, for
    substacks (SUBSTACK, SUBSTACK2), lists of `Block`s. `fields` values are literals or refs."""

    opcode: str
    inputs: dict[str, Any] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    mutation: dict | None = None
    primitive: int = TEXT  # shadow type for literal inputs of this block


@dataclass(frozen=True)
class VarRef:
    name: str


@dataclass(frozen=True)
class ListRef:
    name: str


@dataclass(frozen=True)
class BroadcastRef:
    name: str


@dataclass(frozen=True)
class Literal:
    """A literal input with an explicit shadow primitive (e.g. Literal(4, 1) for a number)."""

    primitive: int
    value: Any


def var(name: str) -> VarRef:
    """The `(variable)` reporter."""
    return VarRef(name)


def list_contents(name: str) -> ListRef:
    """The `(list)` reporter (items joined)."""
    return ListRef(name)


def num(value: Any) -> Literal:
    return Literal(MATH_NUM, value)


def block(
    opcode: str,
    inputs: dict | None = None,
    fields: dict | None = None,
    mutation: dict | None = None,
) -> Block:
    """Any other block, by opcode."""
    return Block(opcode, dict(inputs or {}), dict(fields or {}), mutation)


# Hats
def when_flag_clicked() -> Block:
    return Block("event_whenflagclicked")


def when_broadcast_received(name: str) -> Block:
    return Block("event_whenbroadcastreceived", fields={"BROADCAST_OPTION": BroadcastRef(name)})


# Stack blocks
def set_var(name: str, value: Any) -> Block:
    return Block("data_setvariableto", {"VALUE": value}, {"VARIABLE": VarRef(name)})


def change_var(name: str, by: Any = 1) -> Block:
    return Block(
        "data_changevariableby", {"VALUE": by}, {"VARIABLE": VarRef(name)}, primitive=MATH_NUM
    )


def add_to_list(name: str, item: Any) -> Block:
    return Block("data_addtolist", {"ITEM": item}, {"LIST": ListRef(name)})


def delete_all_of_list(name: str) -> Block:
    return Block("data_deletealloflist", fields={"LIST": ListRef(name)})


def broadcast(name: str) -> Block:
    return Block("event_broadcast", {"BROADCAST_INPUT": BroadcastRef(name)})


def broadcast_and_wait(name: str) -> Block:
    return Block("event_broadcastandwait", {"BROADCAST_INPUT": BroadcastRef(name)})


def wait(seconds: Any) -> Block:
    return Block("control_wait", {"DURATION": seconds}, primitive=POSITIVE_NUM)


def wait_until(condition: Block) -> Block:
    return Block("control_wait_until", {"CONDITION": condition})


def forever(body: Sequence[Block]) -> Block:
    return Block("control_forever", {"SUBSTACK": list(body)})


def repeat(times: Any, body: Sequence[Block]) -> Block:
    return Block("control_repeat", {"TIMES": times, "SUBSTACK": list(body)}, primitive=WHOLE_NUM)


def repeat_until(condition: Block, body: Sequence[Block]) -> Block:
    return Block("control_repeat_until", {"CONDITION": condition, "SUBSTACK": list(body)})


def if_(condition: Block, body: Sequence[Block]) -> Block:
    return Block("control_if", {"CONDITION": condition, "SUBSTACK": list(body)})


def if_else(condition: Block, body: Sequence[Block], else_body: Sequence[Block]) -> Block:
    return Block(
        "control_if_else",
        {"CONDITION": condition, "SUBSTACK": list(body), "SUBSTACK2": list(else_body)},
    )


def stop_all() -> Block:
    return Block(
        "control_stop",
        fields={"STOP_OPTION": "all"},
        mutation={"tagName": "mutation", "children": [], "hasnext": "false"},
    )


def call(
    proccode: str, *args: Any, argumentids: Sequence[str] | None = None, warp: bool | None = None
) -> Block:
    """Call a custom block by its proccode (e.g. "send %s and wait"), arguments in order."""
    mutation = {"tagName": "mutation", "children": [], "proccode": proccode}
    if argumentids is not None:
        mutation["argumentids"] = json.dumps(list(argumentids))
    if warp is not None:
        mutation["warp"] = "true" if warp else "false"
    return Block("procedures_call", {"_args": list(args)}, mutation=mutation)


# Reporters
def join(a: Any, b: Any) -> Block:
    return Block("operator_join", {"STRING1": a, "STRING2": b})


def add(a: Any, b: Any) -> Block:
    return Block("operator_add", {"NUM1": a, "NUM2": b}, primitive=MATH_NUM)


def subtract(a: Any, b: Any) -> Block:
    return Block("operator_subtract", {"NUM1": a, "NUM2": b}, primitive=MATH_NUM)


def equals(a: Any, b: Any) -> Block:
    return Block("operator_equals", {"OPERAND1": a, "OPERAND2": b})


def less_than(a: Any, b: Any) -> Block:
    return Block("operator_lt", {"OPERAND1": a, "OPERAND2": b})


def greater_than(a: Any, b: Any) -> Block:
    return Block("operator_gt", {"OPERAND1": a, "OPERAND2": b})


def and_(a: Block, b: Block) -> Block:
    return Block("operator_and", {"OPERAND1": a, "OPERAND2": b})


def or_(a: Block, b: Block) -> Block:
    return Block("operator_or", {"OPERAND1": a, "OPERAND2": b})


def not_(a: Block) -> Block:
    return Block("operator_not", {"OPERAND": a})


def item_of_list(name: str, index: Any) -> Block:
    return Block(
        "data_itemoflist", {"INDEX": index}, {"LIST": ListRef(name)}, primitive=INTEGER_NUM
    )


def length_of_list(name: str) -> Block:
    return Block("data_lengthoflist", fields={"LIST": ListRef(name)})


# ---------------------------------------------------------------------------------------------
# Serialisation of scripts into a target


class _Emitter:
    def __init__(self, project: dict, target: dict):
        self.project = project
        self.target = target
        self.stage = find_target(project)
        self.blocks = target.setdefault("blocks", {})
        self.prefix = uuid.uuid4().hex[:8]
        self.counter = itertools.count()

    def new_id(self) -> str:
        while True:
            block_id = f"stratus-{self.prefix}-{next(self.counter)}"
            if block_id not in self.blocks:
                return block_id

    def _lookup(self, key: str, name: str) -> str:
        for owner in (self.target, self.stage):
            for item_id, item in owner.get(key, {}).items():
                if item[0] == name:
                    return item_id
        kind = "variable" if key == "variables" else "list"
        raise KeyError(f"no {kind} named {name!r} in {self.target['name']!r} or the stage")

    def var_id(self, name: str) -> str:
        return self._lookup("variables", name)

    def list_id(self, name: str) -> str:
        return self._lookup("lists", name)

    def broadcast_id(self, name: str) -> str:
        for owner in (self.target, self.stage):
            for item_id, item_name in owner.get("broadcasts", {}).items():
                if item_name == name:
                    return item_id
        item_id = f"broadcast-{self.new_id()}"
        self.stage.setdefault("broadcasts", {})[item_id] = name
        return item_id

    def prototype(self, proccode: str) -> dict:
        for candidate in self.target["blocks"].values():
            if (
                isinstance(candidate, dict)
                and candidate.get("opcode") == "procedures_prototype"
                and candidate.get("mutation", {}).get("proccode") == proccode
            ):
                return candidate["mutation"]
        raise KeyError(f"no custom block {proccode!r} in {self.target['name']!r}")

    def field(self, value: Any) -> list:
        if isinstance(value, VarRef):
            return [value.name, self.var_id(value.name)]
        if isinstance(value, ListRef):
            return [value.name, self.list_id(value.name)]
        if isinstance(value, BroadcastRef):
            return [value.name, self.broadcast_id(value.name)]
        return [value, None]

    def input(self, parent: Block, parent_id: str, name: str, value: Any) -> list:
        if isinstance(value, Block):
            child_id = self.emit(value, parent_id)
            if (parent.opcode, name) in _SHADOWLESS_SLOTS:
                return [2, child_id]
            return [3, child_id, [parent.primitive, ""]]
        if isinstance(value, VarRef):
            return [3, [VAR, value.name, self.var_id(value.name)], [parent.primitive, ""]]
        if isinstance(value, ListRef):
            return [3, [LIST, value.name, self.list_id(value.name)], [parent.primitive, ""]]
        if isinstance(value, BroadcastRef):
            return [1, [BROADCAST, value.name, self.broadcast_id(value.name)]]
        if isinstance(value, Literal):
            return [1, [value.primitive, _literal(value.value)]]
        return [1, [parent.primitive, _literal(value)]]

    def stack(self, blocks: Sequence[Block], parent_id: str | None, top: bool = False) -> str:
        first_id = None
        previous_id = None
        previous: dict | None = None
        for item in blocks:
            block_id = self.emit(item, previous_id if previous_id else parent_id)
            if previous is not None:
                previous["next"] = block_id
            else:
                first_id = block_id
            previous_id = block_id
            previous = self.blocks[block_id]
        if first_id is None:
            raise ValueError("empty script")
        if top:
            self.blocks[first_id].update(topLevel=True, parent=None)
        return first_id

    def emit(self, item: Block, parent_id: str | None) -> str:
        if not isinstance(item, Block):
            raise TypeError(f"expected a Block, got {item!r}")
        block_id = self.new_id()
        data: dict[str, Any] = {
            "opcode": item.opcode,
            "next": None,
            "parent": parent_id,
            "inputs": {},
            "fields": {},
            "shadow": False,
            "topLevel": False,
        }
        self.blocks[block_id] = data
        mutation = copy.deepcopy(item.mutation) if item.mutation else None
        inputs = dict(item.inputs)
        if item.opcode == "procedures_call":
            mutation = self._call_mutation(mutation)
            arg_ids = json.loads(mutation["argumentids"])
            args = inputs.pop("_args", [])
            if len(args) != len(arg_ids):
                raise ValueError(
                    f"{mutation['proccode']!r} takes {len(arg_ids)} arguments, got {len(args)}"
                )
            inputs = dict(zip(arg_ids, args, strict=True))
        for name, value in inputs.items():
            if isinstance(value, list):
                if value:
                    data["inputs"][name] = [2, self.stack(value, block_id)]
                continue
            data["inputs"][name] = self.input(item, block_id, name, value)
        for name, value in item.fields.items():
            data["fields"][name] = self.field(value)
        if mutation is not None:
            data["mutation"] = mutation
        return block_id

    def _call_mutation(self, mutation: dict) -> dict:
        proccode = mutation["proccode"]
        if "argumentids" not in mutation or "warp" not in mutation:
            proto = self.prototype(proccode)
            mutation.setdefault("argumentids", proto.get("argumentids", "[]"))
            mutation.setdefault("warp", proto.get("warp", "false"))
        return mutation


def _literal(value: Any) -> str:
    """Field text as the Scratch editor saves it (always a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return str(value)


def add_script(
    project: dict, script: Sequence[Block], target: str | None = None, x: int = 0, y: int = 0
) -> dict:
    """Add one script (a list of blocks, hat first) to `target` (the stage if None).

    Modifies `project` in place and also returns it, so it can be used as a patch function.
    """
    owner = find_target(project, target)
    emitter = _Emitter(project, owner)
    first = emitter.stack(list(script), None, top=True)
    owner["blocks"][first].update(x=x, y=y)
    return project


# ---------------------------------------------------------------------------------------------
# Whole projects


def _costume() -> dict:
    return {
        "name": "costume1",
        "bitmapResolution": 1,
        "dataFormat": "svg",
        "assetId": _COSTUME_MD5,
        "md5ext": f"{_COSTUME_MD5}.svg",
        "rotationCenterX": 1,
        "rotationCenterY": 1,
    }


def _variables(prefix: str, values: dict[str, Any], cloud: bool) -> dict:
    result = {}
    for index, (name, value) in enumerate(values.items()):
        entry = [name, value, True] if cloud else [name, value]
        result[f"{prefix}-{index}"] = entry
    return result


def make_project(
    cloud_vars: dict[str, Any],
    scripts: Iterable[Sequence[Block]] = (),
    *,
    variables: dict[str, Any] | None = None,
    lists: dict[str, list] | None = None,
    broadcasts: Iterable[str] = (),
    sprite: str | None = None,
    sprite_scripts: Iterable[Sequence[Block]] = (),
    sprite_variables: dict[str, Any] | None = None,
) -> bytes:
    """A minimal Scratch 3 project as .sb3 bytes.

    `cloud_vars` become stage cloud variables (name → saved value; names are used verbatim, so
    include the "☁ " prefix), `variables`/`lists` ordinary stage variables and lists. `scripts`
    go on the stage; with `sprite`, one sprite of that name holds `sprite_scripts` and its own
    `sprite_variables`.
    """
    stage_vars = _variables("cloud", cloud_vars, cloud=True)
    stage_vars.update(_variables("var", variables or {}, cloud=False))
    stage = {
        "isStage": True,
        "name": "Stage",
        "variables": stage_vars,
        "lists": {
            f"list-{i}": [name, list(items)]
            for i, (name, items) in enumerate((lists or {}).items())
        },
        "broadcasts": {f"broadcast-{i}": name for i, name in enumerate(broadcasts)},
        "blocks": {},
        "comments": {},
        "currentCostume": 0,
        "costumes": [_costume()],
        "sounds": [],
        "volume": 100,
        "layerOrder": 0,
        "tempo": 60,
        "videoTransparency": 50,
        "videoState": "off",
        "textToSpeechLanguage": None,
    }
    project: dict[str, Any] = {
        "targets": [stage],
        "monitors": [],
        "extensions": [],
        "meta": {"semver": "3.0.0", "vm": "5.0.300", "agent": "stratus-interop sb3.py"},
    }
    if sprite is not None:
        project["targets"].append(
            {
                "isStage": False,
                "name": sprite,
                "variables": _variables("local", sprite_variables or {}, cloud=False),
                "lists": {},
                "broadcasts": {},
                "blocks": {},
                "comments": {},
                "currentCostume": 0,
                "costumes": [_costume()],
                "sounds": [],
                "volume": 100,
                "layerOrder": 1,
                "visible": True,
                "x": 0,
                "y": 0,
                "size": 100,
                "direction": 90,
                "draggable": False,
                "rotationStyle": "all around",
            }
        )
    for index, script in enumerate(scripts):
        add_script(project, script, None, x=0, y=index * 400)
    for index, script in enumerate(sprite_scripts):
        if sprite is None:
            raise ValueError("sprite_scripts needs sprite=NAME")
        add_script(project, script, sprite, x=0, y=index * 400)
    return write_sb3(project, {f"{_COSTUME_MD5}.svg": _COSTUME_SVG})
