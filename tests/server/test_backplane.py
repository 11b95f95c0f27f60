"""The local backplane on its own (server.backplane): publishing is delivery, synchronously."""

from __future__ import annotations

from server.backplane import Backplane, LocalBackplane, LocalCluster


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


def test_local_cluster_makes_local_backplanes_and_has_no_bus():
    """One process: LocalCluster gives LocalBackplanes, no message bus and never a fault."""
    cluster = LocalCluster()
    backplane = cluster.backplane("scratch")
    assert isinstance(backplane, LocalBackplane)
    assert cluster.bus is None and cluster.fault is None
    assert backplane.is_settled("any room")


def test_local_backplane_publish_is_the_deliver_function_itself():
    """The hot path costs no call of its own: after attach, publish *is* deliver."""
    backplane = LocalBackplane()

    def deliver(room, key, author):
        return None

    backplane.attach(deliver)
    assert backplane.publish is deliver
