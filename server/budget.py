"""A connection's read budget: how many frames and bytes per second it may have read.

A client pays for its own input. The connection counts down a credit handed out here and only
looks at the clock when it runs out; over budget, it stops reading until the budget refills.
"""

from __future__ import annotations

from dataclasses import dataclass

# A connection over its read budget sleeps until this much of a second's budget has refilled,
# so a client sending at the limit costs a timer and a read every 50 ms, not one per frame.
THROTTLE_QUANTUM = 0.05
UNLIMITED = 1 << 62


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """How fast one connection's input is read: frames (any opcode) and bytes per second.

    0 means no limit. `frame_burst` frames may arrive at once; bytes may burst one second's
    worth, and a message larger than that is read whole, the connection then waits longer.
    """

    frames_per_second: float = 0.0
    frame_burst: int = 1
    bytes_per_second: float = 0.0


def refill(tokens: float, elapsed: float, rate: float, burst: float) -> float:
    tokens += elapsed * rate
    return burst if tokens > burst else tokens
