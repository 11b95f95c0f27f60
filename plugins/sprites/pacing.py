"""Per-connection outbound pacing and variable rotation for sprite replies (spec §5, §13.7).

The sprites poll their inbound variables once per frame and only notice a variable whose value
changed, so sets to one client must be spaced out, rotate over the variables, and never repeat a
variable's previous value. The pacer only plans; the plugin writes each value at `not_before`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_MIN_INTERVAL = 0.1
MIN_ALLOWED_INTERVAL = 0.05  # one frame at 20 fps; below this the sprite may lose values
MAX_REROLLS = 1000


@dataclass(frozen=True)
class ScheduledSet:
    """Write `value` to `variable` of the owning connection no earlier than `not_before`."""

    variable: str
    value: str
    not_before: float


class OutboundPacer:
    """Plans one connection's sets: ≥ min_interval apart, round-robin, no repeated values."""

    def __init__(self, variables: Sequence[str], min_interval: float = DEFAULT_MIN_INTERVAL):
        if not variables:
            raise ValueError("at least one variable is needed")
        if min_interval < MIN_ALLOWED_INTERVAL:
            raise ValueError(f"min_interval must be at least {MIN_ALLOWED_INTERVAL} s")
        self.variables = tuple(variables)
        self.min_interval = min_interval
        self._next_variable = 0
        self._last_time: float | None = None
        self._last_values: dict[str, str] = {}

    def next_slot(self, now: float) -> float:
        """The earliest time the next set may happen."""
        if self._last_time is None:
            return now
        return max(now, self._last_time + self.min_interval)

    def schedule(
        self,
        value: str,
        now: float,
        *,
        earliest: float | None = None,
        reroll: Callable[[str], str] | None = None,
    ) -> ScheduledSet:
        """Plan one set after all earlier ones; `reroll` varies a value that would repeat."""
        not_before = self.next_slot(now if earliest is None else max(now, earliest))
        index = self._next_variable
        if self._last_values.get(self.variables[index]) == value:
            if reroll is not None:
                value = self._rerolled(value, self.variables[index], reroll)
            else:
                # No variant possible: use the next variable whose last value differs, if any.
                for step in range(1, len(self.variables)):
                    candidate = (index + step) % len(self.variables)
                    if self._last_values.get(self.variables[candidate]) != value:
                        index = candidate
                        break
        variable = self.variables[index]
        self._next_variable = (index + 1) % len(self.variables)
        self._last_time = not_before
        self._last_values[variable] = value
        return ScheduledSet(variable, value, not_before)

    def schedule_all(
        self, values: Sequence[str], now: float, reroll: Callable[[str], str] | None = None
    ) -> list[ScheduledSet]:
        """Plan one message's values in order (final value last)."""
        return [self.schedule(value, now, reroll=reroll) for value in values]

    def _rerolled(self, value: str, variable: str, reroll: Callable[[str], str]) -> str:
        for _ in range(MAX_REROLLS):
            value = reroll(value)
            if value != self._last_values.get(variable):
                return value
        raise RuntimeError("reroll kept producing the variable's previous value")
