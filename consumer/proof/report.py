"""Turn two samples (and the previous run's snapshot) into movement: deltas, rates, drain ETA and the error rate.

Definitions, shared with the ramp gates (they read the JSON report):

* backlog and the error rate: metrics.py (one definition for the report, the live view and the ramp's gate).
* progress = in the window, the group read entries, or the service's `consumed` counter moved, or pending shrank,
  or the result stream grew. A stale-only backlog drains without producing results, so results alone are not
  progress.
* the error rate's window is the previous run's snapshot when it is younger than `snapshot_max_age_sec`, else this
  run's sample window. When that window saw fewer than `error_min_sample` consumed entries the cumulative ratio of
  the counters (since they were created) is used instead, so a quiet window neither hides a broken executor nor
  turns one failure in three intents into a 33 % alarm.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from .collect import Sample
from .config import ProofSettings
from .metrics import ERROR_RATE_DEFINITION, ErrorTally, counter_deltas, per_sec
from .metrics import backlog as backlog_of
from .sections import Drain, ErrorRate, Movement, Snapshot, Tally, WindowTally


def _delta(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    return b - a


def _id_advanced(a: str | None, b: str | None) -> bool:
    return b is not None and a != b


def movement(a: Snapshot, b: Sample, since: float) -> Movement:
    """Deltas between an earlier snapshot `a` and the sample `b` over `since` seconds."""
    window = max(0.0, b.t - since)
    results_d = _delta(a.result_entries_added, b.results.entries_added)
    if results_d is None and _id_advanced(a.result_last_id, b.results.last_generated_id):
        results_d = 1  # entries-added unknown (pre-7.0 Redis): at least one entry was added
    read_d = _delta(a.group_entries_read, b.group.entries_read)
    intents_d = _delta(a.intent_entries_added, b.intents.entries_added)
    counters_d = counter_deltas(a.counters, b.counters.values)
    pending_d = _delta(a.pending, b.group.pending)

    def rate(d: int | None) -> float | None:
        value = per_sec(d, window)
        return None if value is None else round(value, 2)

    progress = any((
        (results_d or 0) > 0, (read_d or 0) > 0, (counters_d is not None and counters_d.get("consumed", 0) > 0),
        (pending_d or 0) < 0,
    ))
    return Movement(
        window_sec=round(window, 3),
        results_added=results_d,
        results_per_sec=rate(results_d),
        entries_read=read_d,
        read_per_sec=rate(read_d),
        intents_added=intents_d,
        intents_per_sec=rate(intents_d),
        backlog_change=_delta(backlog_of(a.lag, a.pending), b.backlog),
        dlq_added=_delta(a.dlq_length, b.dlq_length),
        counters=counters_d,
        counters_reset=counters_d is None,
        progress=progress,
    )


def drain(sample: Sample, mv: Movement | None) -> Drain:
    """How fast the backlog shrinks (read rate minus inflow) and when it will be empty at that pace."""
    backlog = sample.backlog
    out = Drain(backlog=backlog, eta_sec=0.0 if backlog == 0 else None)
    if mv is None or mv.window_sec <= 0 or mv.backlog_change is None:
        return out
    net = -mv.backlog_change / mv.window_sec
    out.net_per_sec = round(net, 2)
    if backlog and net > 0:
        out.eta_sec = round(backlog / net, 1)
    return out


def _tally(counters: dict[str, int]) -> Tally:
    t = ErrorTally.of(counters)
    return Tally(rate=None if t.rate is None else round(t.rate, 6), errors=t.errors, consumed=t.consumed)


def error_rate(settings: ProofSettings, totals: dict[str, int], window: Movement | None,
               window_source: Literal["sample", "previous_run"]) -> ErrorRate:
    """The error rate by the definition above, with both candidate values and which one the verdict uses."""
    total, win = _tally(totals), None
    if window is not None and window.counters is not None:
        win = WindowTally(**dataclasses.asdict(_tally(window.counters)), sec=window.window_sec, source=window_source)
    value, basis = None, "none"
    if win is not None and win.consumed >= settings.error_min_sample:
        value, basis = win.rate, "window"
    elif total.rate is not None:
        value, basis = total.rate, "total"
    return ErrorRate(definition=ERROR_RATE_DEFINITION, max=settings.error_rate_max,
                     min_sample=settings.error_min_sample, total=total, window=win, value=value, basis=basis)
