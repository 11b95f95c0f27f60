"""The shared .sb3 fixtures (shared/testdata beside the checkout, or $STRATUS_TESTDATA).

A missing fixture skips the test on a developer machine but fails it under CI (CI=true), where
shared/ is always beside the clone: the real sprites must never be skipped silently there.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

TESTDATA = Path(
    os.environ.get("STRATUS_TESTDATA")
    or Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
)
SCRATCHCOMMUNICATION_SB3 = "scratchcommunication-cloudrequests-2.0.sb3"
SCRATCHATTACH_SB3 = "scratchattach-cloudrequests-template.sb3"


def fixture_path(filename: str) -> Path:
    """Path of a fixture; skips (or, under CI, fails) the calling test if it is missing."""
    path = TESTDATA / filename
    if not path.is_file():
        message = f"fixture {path} not available (set STRATUS_TESTDATA to shared/testdata)"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def load_project(filename: str) -> dict:
    """project.json of a fixture; skips (CI: fails) the calling test if it is missing."""
    path = fixture_path(filename)
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
