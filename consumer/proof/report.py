"""Turn two samples (and the previous run's snapshot) into movement: deltas, rates, drain ETA and the error rate.

Definitions, shared with the ramp gates (they read the JSON report):

* backlog = group lag + group pending: entries the service has not finished.
* progress = in the window, the group read entries, or the service's `consumed` counter moved, or pending shrank,
  or the result stream grew. A stale-only backlog drains without producing results, so results alone are not
  progress.
* error rate = (Δfailed + Δdead_lettered) / Δconsumed. `invalid` is not added: the service counts every invalid
  intent in `dead_lettered` too (which also holds entries over MAX_DELIVERIES), so adding it would count twice. The window is the previous run's snapshot when it
  is younger than `snapshot_max_age_sec`, else this run's sample window. When that window saw fewer than
  `error_min_sample` consumed entries the cumulative ratio of the counters (since they were created) is used instead,
  so a quiet window neither hides a broken executor nor turns one failure in three intents into a 33 % alarm.
"""

from __future__ import annotations

from typing import Any

from .collect import Sample
from .config import ERROR_COUNTERS, ProofSettings

ERROR_RATE_DEFINITION = "(failed + dead_lettered) / consumed"


def _delta(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return None
    return b - a


def _id_advanced(a: str | None, b: str | None) -> bool:
    return b is not None and a != b


def movement(a: dict[str, Any], b: Sample, since: float) -> dict[str, Any]:
    """Deltas between an earlier snapshot-shaped dict `a` and the sample `b` over `since` seconds."""
    window = max(0.0, b.t - since)
    results_d = _delta(a.get("result_entries_added"), b.results.get("entries_added"))
    if results_d is None and _id_advanced(a.get("result_last_id"), b.results.get("last_generated_id")):
        results_d = 1  # entries-added unknown (pre-7.0 Redis): at least one entry was added
    read_d = _delta(a.get("group_entries_read"), b.group.get("entries_read"))
    intents_d = _delta(a.get("intent_entries_added"), b.intents.get("entries_added"))
    counters_d = {k: v - a.get("counters", {}).get(k, 0) for k, v in b.counters["values"].items()}
    reset = any(v < 0 for v in counters_d.values())
    pending_d = _delta(a.get("pending"), b.group.get("pending"))
    backlog_a = None if a.get("lag") is None or a.get("pending") is None else a["lag"] + a["pending"]
    backlog_b = b.backlog
    backlog_d = _delta(backlog_a, backlog_b)

    def rate(d: int | None) -> float | None:
        return None if d is None or window <= 0 else round(d / window, 2)

    progress = any((
        (results_d or 0) > 0, (read_d or 0) > 0, (not reset and counters_d.get("consumed", 0) > 0),
        (pending_d or 0) < 0,
    ))
    return {
        "window_sec": round(window, 3),
        "results_added": results_d,
        "results_per_sec": rate(results_d),
        "entries_read": read_d,
        "read_per_sec": rate(read_d),
        "intents_added": intents_d,
        "intents_per_sec": rate(intents_d),
        "backlog_change": backlog_d,
        "dlq_added": _delta(a.get("dlq_length"), b.dlq_length),
        "counters": None if reset else counters_d,
        "counters_reset": reset,
        "progress": progress,
    }


def drain(sample: Sample, mv: dict[str, Any] | None) -> dict[str, Any]:
    """How fast the backlog shrinks (read rate minus inflow) and when it will be empty at that pace."""
    backlog = sample.backlog
    out: dict[str, Any] = {"backlog": backlog, "net_per_sec": None, "eta_sec": None}
    if backlog == 0:
        out["eta_sec"] = 0.0
    if mv is None or mv["window_sec"] <= 0 or mv["backlog_change"] is None:
        return out
    net = -mv["backlog_change"] / mv["window_sec"]
    out["net_per_sec"] = round(net, 2)
    if backlog and net > 0:
        out["eta_sec"] = round(backlog / net, 1)
    return out


def error_rate(settings: ProofSettings, totals: dict[str, int], window: dict[str, Any] | None,
               window_source: str) -> dict[str, Any]:
    """The error rate by the definition above, with both candidate values and which one the verdict uses."""
    errors_total = sum(totals.get(k, 0) for k in ERROR_COUNTERS)
    consumed_total = totals.get("consumed", 0)
    out: dict[str, Any] = {
        "definition": ERROR_RATE_DEFINITION,
        "max": settings.error_rate_max,
        "min_sample": settings.error_min_sample,
        "total": round(errors_total / consumed_total, 6) if consumed_total else None,
        "total_errors": errors_total,
        "total_consumed": consumed_total,
        "window": None, "window_errors": None, "window_consumed": None, "window_sec": None,
        "window_source": None,
        "value": None, "basis": "none",
    }
    counters_d = window.get("counters") if window else None
    if counters_d is not None:
        w_err = sum(counters_d.get(k, 0) for k in ERROR_COUNTERS)
        w_con = counters_d.get("consumed", 0)
        out.update(window_errors=w_err, window_consumed=w_con, window_sec=window["window_sec"],
                   window_source=window_source, window=round(w_err / w_con, 6) if w_con > 0 else None)
        if w_con >= settings.error_min_sample:
            out.update(value=out["window"], basis="window")
            return out
    if out["total"] is not None:
        out.update(value=out["total"], basis="total")
    return out
