"""The verdict: which observations make the pipeline UNHEALTHY, and which are only worth a note.

Rules (each is one check in the report; any failed check makes the verdict UNHEALTHY, exit 1):

1. group      — the intent stream exists and carries the consumer group (the service creates it at start).
2. units      — where systemd is present: every unit installed on this host is loaded and ActiveState=active
                (a unit that is not installed here, e.g. the AI engine on its own host, is a note; none at all fails).
3. progress   — nothing to do (lag 0 and pending 0), or the pipeline moved in the sample window (see
                report: reads, consumed, pending shrinking or results). Work waiting with no movement is a
                stall. With no window to judge (--sample-sec 0 and no previous snapshot) progress is unknown,
                which is not healthy either: a proof must prove.
4. error_rate — the error rate (report's definition) is at most the threshold (default 5 %).

Notes (never change the verdict): a consumer idle for long while holding pending entries, a group without
consumers, dead letters added in the window, limiter keys without a TTL, an estimated lag, a replica.
"""

from __future__ import annotations

from typing import Any

from .sections import Check, Health, Report

IDLE_PENDING_NOTE_MS = 60_000


def check_group(report: Report) -> Check:
    g, intents = report.group, report.intent_stream
    if not intents.exists:
        return Check("group", False, f"intent stream {intents.key} does not exist (service never started?)")
    if not g.exists:
        return Check("group", False, f"group {g.name} missing on {intents.key}")
    return Check("group", True, f"group {g.name} on {intents.key}")


def check_units(sd: dict[str, Any]) -> Check:
    """The units section (systemd.units_state): every unit installed here is loaded and active."""
    if not sd["present"]:
        return Check("units", None, "systemd: not present")
    bad = []
    installed = {n: u for n, u in sd["units"].items() if u.get("load_state") != "not-found"}
    if not installed:
        return Check("units", False, "none of " + ", ".join(sd["units"]) + " is installed on this host")
    for name, u in installed.items():
        if u.get("error"):
            bad.append(f"{name}: {u['error']}")
        elif u.get("load_state") != "loaded":
            bad.append(f"{name} {u.get('load_state')}")
        elif u.get("active_state") != "active":
            bad.append(f"{name} {u.get('active_state')}/{u.get('sub_state')}")
    if bad:
        return Check("units", False, "unit not active: " + ", ".join(bad))
    return Check("units", True, "active: " + ", ".join(installed))


def check_progress(report: Report) -> Check:
    g = report.group
    if not g.exists:
        return Check("progress", None, "no group")
    lag, pending = g.lag, g.pending
    if lag == 0 and pending == 0:
        return Check("progress", True, "nothing to do (lag 0, pending 0)")
    mv = report.movement
    if mv is None:
        return Check("progress", False,
                     f"progress unknown: lag {lag}, pending {pending}, no sample window and no previous snapshot")
    if mv.progress:
        return Check("progress", True, f"moving: read {mv.entries_read}, results {mv.results_added} "
                                       f"in {mv.window_sec}s")
    lag_text = "unknown" if lag is None else str(lag)
    return Check("progress", False, f"stalled: lag {lag_text}, pending {pending}, nothing read, acked or "
                                    f"produced in {mv.window_sec}s")


def check_error_rate(report: Report) -> Check:
    er = report.error_rate
    if er.value is None:
        return Check("error_rate", None, "no consumed intents yet")
    text = f"error rate {er.value * 100:.2f}% ({er.basis}) vs max {er.max * 100:.2f}% [{er.definition}]"
    return Check("error_rate", er.value <= er.max, text)


def notes(report: Report) -> list[str]:
    """Observations an operator should see that do not, alone, mean the pipeline is broken."""
    out = []
    g = report.group
    if g.exists and g.consumer_count == 0:
        out.append(f"group {g.name} has no consumers")
    elif g.exists and (g.lag or g.pending) and not any(c.live for c in report.consumers):
        out.append(f"group {g.name} has no live consumer (none touched the group in the last "
                   f"{report.settings.get('consumer_live_ms', 0) / 1000:.0f}s) while work waits")
    if g.lag_estimated:
        out.append("lag estimated from entries-added − entries-read (Redis reported nil)")
    for c in report.consumers:
        if c.pending > 0 and (c.idle_ms or 0) >= IDLE_PENDING_NOTE_MS:
            out.append(f"consumer {c.name} holds {c.pending} pending, idle {c.idle_ms / 1000:.0f}s "
                       "(crashed? reclaimed after CLAIM_IDLE_MS)")
    mv = report.movement
    if mv and (mv.dlq_added or 0) > 0:
        out.append(f"{mv.dlq_added} dead letters added in the last {mv.window_sec}s")
    for name, u in report.systemd["units"].items():
        if u.get("load_state") == "not-found":
            out.append(f"unit {name} is not installed on this host (runs elsewhere?)")
    for k in report.rate_limiters.keys:
        if k.no_expiry:
            out.append(f"rate limiter {k.key} has no TTL (its window never resets)")
    if report.redis.role not in (None, "master"):
        out.append(f"Redis is a {report.redis.role}: numbers may lag the primary")
    return out


def evaluate(report: Report) -> Health:
    """All checks, the notes, and the verdict line's words."""
    checks = [check_group(report), check_units(report.systemd), check_progress(report), check_error_rate(report)]
    reasons = [c.detail for c in checks if c.ok is False]
    return Health(healthy=not reasons, verdict="HEALTHY" if not reasons else "UNHEALTHY", reasons=reasons,
                  checks=checks, notes=notes(report))


def verdict_line(health: Health) -> str:
    """`VERDICT: HEALTHY` or `VERDICT: UNHEALTHY: reason; reason`."""
    if health.healthy:
        return "VERDICT: HEALTHY"
    return "VERDICT: UNHEALTHY: " + "; ".join(health.reasons)
