"""The local backplane on its own (server.backplane): publishing is delivery, synchronously."""

from __future__ import annotations

from server.backplane import Backplane, LocalBackplane


async def test_publish_before_attach_goes_nowhere():
    """A change published before anyone attached is dropped without error."""
    LocalBackplane().publish("room", "key", None)


async def test_publish_delivers_synchronously_after_attach():
    """After attach, publish calls the deliver function at once with the same arguments."""
    backplane = LocalBackplane()
    delivered = []
    backplane.attach(lambda room, key, author: delivered.append((room, key, author)))
    backplane.publish("room", "key", "author")
    assert delivered == [("room", "key", "author")]
    backplane.publish("room", "other", None)
    assert delivered[-1] == ("room", "other", None)
    await backplane.close()


def test_local_backplane_has_the_backplane_methods():
    """LocalBackplane offers every method of the Backplane interface."""
    for name in ("attach", "publish", "close"):
        assert callable(getattr(LocalBackplane(), name))
        assert hasattr(Backplane, name)
