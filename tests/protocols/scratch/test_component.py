"""The Scratch protocol's facade service (protocols.scratch.component.ScratchService): its
checks accept exactly the writes a client's `set` gets stored, under each setting."""

from __future__ import annotations

import pytest

from protocols.scratch import ScratchOptions, ScratchSection
from protocols.scratch.component import ScratchService
from protocols.scratch.wire import variable_key
from tests.protocols.scratch.test_engine import Scratch, set_var

VALUES = ["42", "-1.5", "1e3", "abc", "", ".", "-", "٣", 12, -0.5, 1e308, 10**400, True, None,
          [1], {"a": 1}, "9" * 20, "9" * 21]
NAMES = ["☁ score", ":cloud: x", "plain", "☁ "]
SETTINGS = [{}, {"allow_non_numeric_values": True}, {"strict_variable_names": True},
            {"max_value_length": 20}]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "defaults")
async def test_service_agrees_with_a_clients_set(tmp_path, settings):
    """For every value and name, the service refuses exactly what the engine drops."""
    scratch = Scratch(tmp_path, **settings)
    service = ScratchService(ScratchOptions.from_config(ScratchSection(**settings)))
    peer = scratch.join("room")
    room = scratch.rooms.get("room")
    for name in NAMES:
        for value in VALUES:
            room.values.pop(variable_key(name), None)
            set_var(peer, name, value)
            stored = variable_key(name) in room.values
            assert (service.write_refusal(name, value) is None) == stored, (name, value)


def test_refusals_explain_themselves():
    """A refused value or name comes with a reason naming the setting to change."""
    service = ScratchService(ScratchOptions.from_config(ScratchSection(strict_variable_names=True)))
    assert "max_value_length" in service.write_refusal("☁ a", "abc")
    assert "strict_variable_names" in service.write_refusal("plain", "1")
    assert service.write_refusal("☁ a", "1") is None


def test_room_ids_and_config_blocks():
    """Room ids follow max_room_id_length; blocked_rooms counts as blocked by config."""
    service = ScratchService(ScratchOptions.from_config(
        ScratchSection(max_room_id_length=5, blocked_rooms=["666"])))
    assert service.valid_room_id("12345") and not service.valid_room_id("123456")
    assert not service.valid_room_id("")
    assert service.blocked_by_config("666") and not service.blocked_by_config("667")
    assert service.blocked_code == 4004
