"""A backplane for tests of `--workers N` only: lets several workers start without Redis.

`[server] workers > 1` refuses the "local" backend, since each worker would keep its own
rooms. Supervision (start, restart, stop) does not depend on shared rooms, so its tests name
this class as `[cluster] backend = "tests.server.test_only_backplane:UnsharedBackplane"`: it
is the local backplane under another name, and rooms are NOT shared between workers.
"""

from __future__ import annotations

from server.backplane import LocalBackplane

BACKEND = "tests.server.test_only_backplane:UnsharedBackplane"


class UnsharedBackplane(LocalBackplane):
    """Test only: each worker delivers to its own members (no rooms shared across workers)."""
