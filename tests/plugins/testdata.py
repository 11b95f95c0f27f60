"""Read saved variables and costumes from the shared .sb3 fixtures (skipping if absent)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
SCRATCHCOMMUNICATION_SB3 = "scratchcommunication-cloudrequests-2.0.sb3"
SCRATCHATTACH_SB3 = "scratchattach-cloudrequests-template.sb3"


def load_project(filename: str) -> dict:
    """project.json of a fixture; skips the calling test if the fixture is missing."""
    path = TESTDATA / filename
    if not path.is_file():
        pytest.skip(f"fixture {path} not available")
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("project.json"))


def saved_variables(filename: str) -> dict[str, object]:
    """All saved variable values of a fixture by name (names are unique in both projects)."""
    values: dict[str, object] = {}
    for target in load_project(filename)["targets"]:
        for name, value, *_ in target["variables"].values():
            values[name] = value
    return values


def costume_names(filename: str, sprite: str) -> list[str]:
    """Costume names of one sprite, in order."""
    for target in load_project(filename)["targets"]:
        if target["name"] == sprite:
            return [costume["name"] for costume in target["costumes"]]
    raise AssertionError(f"no sprite {sprite!r} in {filename}")
