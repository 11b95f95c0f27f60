"""The shared .sb3 fixtures (shared/testdata beside the checkout, or $STRATUS_TESTDATA).

A missing fixture skips the test on a developer machine, with a message saying where to get the
files and where to put them; under CI (CI=true), where shared/ is always beside the clone, it
fails instead: the real sprites must never be skipped silently there.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

DEFAULT_TESTDATA = Path(__file__).resolve().parents[2].parent / "shared" / "testdata"
TESTDATA = Path(os.environ.get("STRATUS_TESTDATA") or DEFAULT_TESTDATA)
SCRATCHCOMMUNICATION_SB3 = "scratchcommunication-cloudrequests-2.0.sb3"
SCRATCHATTACH_SB3 = "scratchattach-cloudrequests-template.sb3"
# Where each unmodified project comes from (the commits the known-answer values were taken at),
# and its SHA-256. README.md "Tests" shows the download commands.
SOURCES = {
    SCRATCHCOMMUNICATION_SB3: (
        "https://raw.githubusercontent.com/TheCommCraft/scratchcommunication/"
        "1ea701d6e7a4d9afea25e921594234f7a21e9200/assets/Advanced%20CloudRequests%202.0.sb3",
        "94ce346cf25d179bcfa719d74e79635d5f915a9f002e14ad25f5612e59427029",
    ),
    SCRATCHATTACH_SB3: (
        "https://raw.githubusercontent.com/TimMcCool/scratchattach/"
        "1a66a4622a27562dbb9360a7ecc48eb3b24b14e6/assets/CloudRequests_Template.sb3",
        "8d61cc7df46583379681d4bdc10f124ecb422043f848569fcda5d801130b00b0",
    ),
}


def missing_message(filename: str) -> str:
    """What a developer must do to run the tests that need `filename`."""
    url, _ = SOURCES[filename]
    return (f"needs the real sprite project {TESTDATA / filename}. To run it, put "
            f"{filename} (download: curl -Lo {filename} '{url}') into {DEFAULT_TESTDATA} "
            f"(shared/testdata beside this clone), or set STRATUS_TESTDATA to the folder "
            f"holding it; see README.md, Tests")


def fixture_path(filename: str) -> Path:
    """Path of a fixture; skips (or, under CI, fails) the calling test if it is missing."""
    path = TESTDATA / filename
    if not path.is_file():
        message = missing_message(filename)
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SOURCES[filename][1]:
        pytest.fail(f"{path} is not the published file (SHA-256 {digest}, expected "
                    f"{SOURCES[filename][1]}): {missing_message(filename)}", pytrace=False)
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
