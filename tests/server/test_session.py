"""The protocol registry on its own (server.session): order, detection and tokens."""

from __future__ import annotations

import pytest

from server.session import ProtocolEntry, ProtocolRegistry


def entry(name: str, detect, opened: list | None = None) -> ProtocolEntry:
    def open_session(peer, token):
        if opened is not None:
            opened.append((name, peer, token))
        return (name, token)

    return ProtocolEntry(name, detect, open_session)


def test_first_protocol_that_claims_the_message_wins():
    """Protocols are asked in registration order; the first to claim the message serves it."""
    registry = ProtocolRegistry()
    registry.add(entry("json", lambda text: text if text.startswith("{") else None))
    registry.add(entry("anything", lambda text: True))
    chosen, token = registry.select('{"cmd":"x"}')
    assert chosen.name == "json" and token == '{"cmd":"x"}'
    chosen, token = registry.select("hello")
    assert chosen.name == "anything" and token is True


def test_detect_token_reaches_open():
    """What detect learnt is handed to open, so the first message is parsed once."""
    opened = []
    registry = ProtocolRegistry()
    registry.add(entry("cl4", lambda text: {"parsed": text}, opened))
    chosen, token = registry.select("m")
    assert chosen.open("peer", token) == ("cl4", {"parsed": "m"})
    assert opened == [("cl4", "peer", {"parsed": "m"})]


def test_falsy_tokens_other_than_none_still_claim():
    """Only None passes a message on: a falsy token such as {} or 0 still claims it."""
    registry = ProtocolRegistry()
    registry.add(entry("empty", lambda text: {}))
    registry.add(entry("fallback", lambda text: True))
    assert registry.select("x")[0].name == "empty"


def test_no_claim_selects_nothing():
    """When no protocol claims the first message, select returns None."""
    registry = ProtocolRegistry()
    assert registry.select("x") is None
    registry.add(entry("never", lambda text: None))
    assert registry.select("x") is None


def test_first_puts_a_protocol_before_the_others():
    """add(first=True) puts a protocol ahead of those registered before it."""
    registry = ProtocolRegistry()
    registry.add(entry("scratch", lambda text: True))
    registry.add(entry("cl4", lambda text: True), first=True)
    assert registry.names() == ["cl4", "scratch"]
    assert registry.select("x")[0].name == "cl4"


def test_a_name_is_registered_once():
    """Registering two protocols with one name raises ValueError."""
    registry = ProtocolRegistry()
    registry.add(entry("scratch", lambda text: True))
    with pytest.raises(ValueError, match="twice"):
        registry.add(entry("scratch", lambda text: True))
