"""Names unique across the nodes (`server.backplane.NameClaims` of the Redis engine).

  stratus:u:<space>  hash  name -> "<node id> <owner>" of the owner holding it

A claim is a script that takes the name unless an owner on a live node (`stratus:node:<id>`
exists) holds it, so of two nodes claiming one name at the same moment, exactly one wins: Redis
runs scripts one at a time. A release deletes the name only if the same owner still holds it.
Claims and releases go out with the cluster's writer batches (no extra connection, nothing on
the write path of room variables); a claim's answer arrives one round trip later.

Names of a dead node are ignored by claims at once and removed when another node notices it
died, or when a node starts (which also removes those an earlier process under its node id left
behind: they would otherwise look alive). While Redis is
unreachable a claim is granted from what the node sees itself; when the link is back, every
name this node's owners hold is claimed again. If an owner on another node took one meanwhile,
the claim Redis already holds wins and the `on_lost` listeners hear about the other.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from ..logsafe import printable
from .redis_rooms import LINK_ERRORS, NODE_KEY, encode, one_line

log = logging.getLogger("stratus.cluster")

CLAIMS_PREFIX = b"stratus:u:"

# KEYS: the space's claims; ARGV: name, holder ("<node> <owner>"), the node key prefix.
# Returns 1 if the holder has the name now, 0 if an owner on a live node holds it.
CLAIM_SCRIPT = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and held ~= ARGV[2] then
  local node = string.match(held, '^(%S+) ')
  if node and redis.call('EXISTS', ARGV[3] .. node) == 1 then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: the space's claims; ARGV: name, holder. Deletes the name if the holder holds it.
RELEASE_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""

# KEYS: the space's claims; ARGV: the node key prefix, a node id whose names go regardless (an
# earlier process under this node's id) or "". Removes the names of dead nodes (and of that
# one); returns how many.
PURGE_SCRIPT = """
local claims = redis.call('HGETALL', KEYS[1])
local alive = {}
local removed = 0
for i = 1, #claims, 2 do
  local node = string.match(claims[i + 1], '^(%S+) ')
  local keep = false
  if node and node ~= ARGV[2] then
    if alive[node] == nil then
      alive[node] = redis.call('EXISTS', ARGV[1] .. node) == 1
    end
    keep = alive[node]
  end
  if not keep then
    redis.call('HDEL', KEYS[1], claims[i])
    removed = removed + 1
  end
end
return removed
"""

CLAIM_SCRIPTS = {name: (text, hashlib.sha1(text.encode()).hexdigest())
                 for name, text in (("claim", CLAIM_SCRIPT), ("release", RELEASE_SCRIPT),
                                    ("purge", PURGE_SCRIPT))}

CLAIM, RELEASE = "claim", "release"

# (operation, space, name, owner, the future a waiting claimer holds or None)
Queued = tuple[str, str, str, str, "asyncio.Future[bool] | None"]


def claims_key(space: str) -> bytes:
    """The hash of one space's names."""
    return CLAIMS_PREFIX + encode(space)


class RedisClaims:
    """The `NameClaims` of `[cluster] backend = "redis"` (`RedisCluster.claims`)."""

    def __init__(self, cluster: Any) -> None:
        # `cluster`: the `redis_link.RedisCluster` (not imported: it imports this module).
        self.cluster = cluster
        self.node = cluster.node
        self.queue: list[Queued] = []  # waiting for the writer
        # Names this node's owners hold, granted or on their way: (space, name) -> owner.
        self.held: dict[tuple[str, str], str] = {}
        self._lost: list[Callable[[str, str, str], None]] = []
        self._tasks: set[asyncio.Task] = set()

    # The NameClaims interface

    def claim(self, space: str, name: str, owner: str) -> bool | asyncio.Future[bool]:
        """Claim `name`: refused at once if another owner of this node holds it, granted at
        once while Redis is unreachable, else decided by Redis (a future)."""
        key = (space, name)
        holder = self.held.get(key)
        if holder is not None and holder != owner:
            return False
        self.held[key] = owner
        if not self.cluster.up:
            return True  # claimed again when the link is back (`relinked`)
        future = asyncio.get_running_loop().create_future()
        self.queue.append((CLAIM, space, name, owner, future))
        self.cluster.wake()
        return future

    def release(self, space: str, name: str, owner: str) -> None:
        """Give `name` back (sent to Redis with the next batch, or once the link is back)."""
        key = (space, name)
        if self.held.get(key) != owner:
            return
        del self.held[key]
        self.queue.append((RELEASE, space, name, owner, None))
        self.cluster.wake()

    def on_lost(self, listener: Callable[[str, str, str], None]) -> None:
        """Call `listener(space, name, owner)` when a claim granted without Redis is found
        taken once Redis answers."""
        self._lost.append(listener)

    # The writer

    def drain(self, commands: list[tuple]) -> Callable[[list | None], None] | None:
        """Append queued claims and releases to `commands`; the returned function sees the
        replies (None: the link failed)."""
        if not self.queue:
            return None
        queue, self.queue = self.queue, []
        node, prefix = self.node, NODE_KEY
        for operation, space, name, owner, _future in queue:
            commands.append((b"EVALSHA", CLAIM_SCRIPTS[operation][1], 1, claims_key(space),
                             encode(name), node + b" " + encode(owner), prefix))

        def finish(replies: list | None) -> None:
            self._finish(queue, replies)

        return finish

    def _finish(self, queue: list[Queued], replies: list | None) -> None:
        retry: list[Queued] = []
        for index, entry in enumerate(queue):
            operation, space, name, owner, future = entry
            reply = replies[index] if replies is not None else None
            if replies is None or isinstance(reply, Exception):
                if isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT"):
                    self.cluster.scripts_lost()
                if operation == CLAIM:
                    # Nobody waits on a broken link: granted from this node's view, and
                    # claimed again (after a lost link, `relinked` claims every held name).
                    _settle(future, True)
                    if replies is not None and self.held.get((space, name)) == owner:
                        retry.append((CLAIM, space, name, owner, None))
                else:
                    retry.append(entry)
                continue
            if operation == RELEASE:
                continue
            if reply == 1:
                _settle(future, True)
                continue
            # Another live node's owner holds it.
            ours = self.held.get((space, name)) == owner
            if ours:
                del self.held[(space, name)]
            if future is not None:
                _settle(future, False)  # the claimer is told (it was not granted yet)
            elif ours:
                self._claim_lost(space, name, owner)
        if retry:
            self.queue[:0] = retry
        if replies is not None and retry:
            log.warning("Redis refused %d name claims or releases (%s); retrying", len(retry),
                        one_line(next(r for r in replies if isinstance(r, Exception))))

    def _claim_lost(self, space: str, name: str, owner: str) -> None:
        log.warning("the name %s (%s) that this node granted without Redis (unreachable, or "
                    "refusing the claim) is held by another node's client: the claim Redis "
                    "already had keeps it",
                    printable(name), printable(space))
        for listener in self._lost:
            try:
                listener(space, name, owner)
            except Exception:
                log.exception("claim-lost listener %r failed", listener)

    # From the cluster

    def link_down(self) -> None:
        """The link failed: claims not sent yet are granted now (claimed again once it is
        back); releases wait for it."""
        kept: list[Queued] = []
        for entry in self.queue:
            if entry[0] == CLAIM:
                _settle(entry[4], True)
            else:
                kept.append(entry)
        self.queue = kept

    def relinked(self) -> None:
        """The link is back (or Redis lost its data, or this node was counted dead): claim
        every name this node's owners hold again."""
        self.queue.extend((CLAIM, space, name, owner, None)
                          for (space, name), owner in self.held.items())

    async def purge(self, earlier: bytes = b"") -> None:
        """Remove the names dead nodes hold, in every space (and every name held under node
        id `earlier`: an earlier process of this node)."""
        redis = self.cluster.redis
        async for key in redis.scan_iter(match=CLAIMS_PREFIX + b"*", count=1000):
            await redis.evalsha(CLAIM_SCRIPTS["purge"][1], 1, key, NODE_KEY, earlier)

    def node_gone(self, node: bytes) -> None:
        """A node died: its names are free (they already were for claims; this frees the
        memory)."""
        if self.cluster.redis is None:
            return
        task = asyncio.get_running_loop().create_task(self._purge_dead())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _purge_dead(self) -> None:
        try:
            await self.purge()
        except LINK_ERRORS as exc:
            log.info("could not remove the names of a dead node from Redis (%s); claims "
                     "ignore them anyway", one_line(exc))

    def close(self) -> None:
        """Stop purging."""
        for task in list(self._tasks):
            task.cancel()


def _settle(future: asyncio.Future[bool] | None, result: bool) -> None:
    if future is not None and not future.done():
        future.set_result(result)
