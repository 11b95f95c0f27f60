"""A cluster engine for tests of `--workers N` only: lets several workers start without Redis.

`[server] workers > 1` refuses the "local" backend, since each worker would keep its own
rooms. Supervision (start, restart, stop) does not depend on shared rooms, so its tests name
this class as `[cluster] backend = "tests.server.unshared_cluster:UnsharedCluster"`: it is the
local engine under another name, and rooms are NOT shared between workers.
"""

from __future__ import annotations

from server.backplane import LocalCluster

BACKEND = "tests.server.unshared_cluster:UnsharedCluster"


class UnsharedCluster(LocalCluster):
    """Test only: each worker serves its own rooms (nothing is shared across workers)."""
