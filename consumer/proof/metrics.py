"""The proof's arithmetic, written once: backlog, per-second rates over a window, counter deltas and the error rate.

The report, the live view and the ramp's gate all judge the same pipeline; if each did its own sums, a change of
definition (say, which counters are errors) would reach one of them and not the others.

* backlog = group lag + group pending: entries the service has not finished (unknown when the lag is).
* error rate = (Δfailed + Δdead_lettered) / Δconsumed. `invalid` is not added: the service counts every invalid
  intent in `dead_lettered` too (which also holds entries over MAX_DELIVERIES), so adding it would count twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .config import ERROR_COUNTERS

ERROR_RATE_DEFINITION = "(failed + dead_lettered) / consumed"
# The service's Prometheus counter has no `consumed` outcome: every acknowledged entry is counted under exactly one of
# these (failed inside executed, invalid inside dead_lettered), so their sum is the counters hash's `consumed`.
CONSUMED_OUTCOMES = ("executed", "stale", "duplicate", "dead_lettered")


def with_consumed(outcomes: Mapping[str, float]) -> dict[str, float]:
    """Counters by outcome (the service's Prometheus counter) plus `consumed`, named as in the counters hash."""
    return {**outcomes, "consumed": sum(outcomes.get(k, 0) for k in CONSUMED_OUTCOMES)}


def backlog(lag: int | None, pending: int | None) -> int | None:
    """Entries not yet done: never delivered (lag) plus delivered but unacknowledged (pending)."""
    if lag is None or pending is None:
        return None
    return lag + pending


def per_sec(delta: float | None, window: float) -> float | None:
    """A change over a window as a rate; unknown when the change is, or when the window is empty."""
    if delta is None or window <= 0:
        return None
    return delta / window


def counter_deltas(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int] | None:
    """Each counter's growth from `before` to `after` (a missing one counts from 0); None when any went backwards,
    which means the counters hash was reset in between and no delta of it is true."""
    deltas = {name: value - before.get(name, 0) for name, value in after.items()}
    return None if any(v < 0 for v in deltas.values()) else deltas


@dataclass(frozen=True)
class ErrorTally:
    """Errors and consumed entries, from cumulative counters or from their deltas over a window."""

    errors: int
    consumed: int

    @classmethod
    def of(cls, counters: Mapping[str, int]) -> "ErrorTally":
        return cls(sum(counters.get(k, 0) for k in ERROR_COUNTERS), counters.get("consumed", 0))

    @property
    def rate(self) -> float | None:
        """errors / consumed; None when nothing was consumed (no rate, rather than a division by zero)."""
        return self.errors / self.consumed if self.consumed > 0 else None
