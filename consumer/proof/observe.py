"""`proof observe`: watch the pipeline over a window and decide healthy / unhealthy / hold — the ramp's gate.

Modelled on how Argo Rollouts and Flagger judge a step: a warm-up, samples at an interval over a window, a failure
limit, and a metric that cannot be read is "inconclusive" (hold, no decision) rather than a failure. Each sample is one
proof report (the same code as `--json`), so the ramp gates and operators see the same numbers.

Rules over the window (thresholds are flags; the ramp passes its variables):

* lag_increasing — backlog (lag + pending) grew by more than `lag_growth_min` entries from the first to the last
  sample AND its least-squares slope exceeds `lag_slope_max` entries/s (both, so that batch-sized jitter is not a
  trend).
* error_rate_high — (Δfailed + Δdead_lettered) / Δconsumed between the first and last sample exceeds
  `error_rate_max`. Fewer than `error_min_consumed` consumed entries in the window: not judged (noted).
* cpu_high — more than `failure_limit` samples with the unit's CPU (percent of one core over each sample's window)
  above `cpu_max`.
* unhealthy — more than `failure_limit` samples whose proof verdict failed a group, units or progress check (the
  proof's own error-rate check is left out: it may look at history before the window).

Decision: `hold` when a source needed by a rule could not be read (Redis down, no CPU source, counters reset),
else `unhealthy` when any rule fired, else `healthy`. Exit 0 healthy, 1 unhealthy, 3 hold.

The points come from the proof's own sampling (default) or, with `--metrics-source prometheus`, from what Prometheus
scraped over the same window (promsource.py); the rules above judge both.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from .config import ProofSettings, redact_url
from .exitcode import ExitCode
from .gather import RedisUnreachable, gather, open_redis
from .metrics import ErrorTally, counter_deltas
from .promsource import PromSource, sample_prometheus
from .sections import CpuReading, Report

log = logging.getLogger(__name__)

JUDGED_CHECKS = ("group", "units", "progress")


@dataclass(frozen=True)
class Thresholds:
    """Limits of one observation; the ramp sets them from its variables (short in tests, long in production)."""

    error_rate_max: float = ProofSettings.error_rate_max  # the proof's own threshold: one 5 % for both
    error_min_consumed: int = ProofSettings.error_min_sample
    cpu_max: float = 80.0
    lag_growth_min: int = 20
    lag_slope_max: float = 0.5
    failure_limit: int = 1


def cpu_of(report: Report, unit: str, pid: int | None) -> CpuReading | None:
    """The CPU reading a sample took for the watched unit (or PID)."""
    if pid is not None:
        return report.cpu.get(f"pid:{pid}")
    return (report.systemd.get("units", {}).get(unit) or {}).get("cpu")


def to_point(report: Report, unit: str, pid: int | None) -> dict[str, Any]:
    """The few numbers of one sample the rules use."""
    cpu = cpu_of(report, unit, pid)
    assert report.health is not None
    failed = [c.detail for c in report.health.failed(JUDGED_CHECKS)]
    return {
        "t": report.redis.server_time,
        "backlog": report.drain.backlog,
        "lag": report.group.lag,
        "pending": report.group.pending,
        "counters": report.counters.values,
        "cpu": None if not cpu else cpu.get("percent"),
        "cpu_source": None if not cpu else cpu.get("source"),
        "failed_checks": failed,
    }


def sample_points(settings: ProofSettings, *, window: float, interval: float, warmup: float, unit: str,
                  pid: int | None) -> list[dict[str, Any]]:
    """Take proof samples every `interval` seconds for `window` seconds (after `warmup`); unreadable ones too."""
    if warmup > 0:
        time.sleep(warmup)
    per = dataclasses.replace(settings, sample_sec=min(2.0, max(0.2, interval / 2)))
    points: list[dict[str, Any]] = []
    start = time.monotonic()
    r: redis.Redis | None = None
    k = 0
    while True:
        try:
            r = r or open_redis(per)
            rep = gather(per, r, use_state=False, cpu_pids=(pid,) if pid is not None else ())
            points.append(to_point(rep, unit, pid))
        except RedisUnreachable as exc:
            r = None
            points.append({"t": None, "error": str(exc)})
        k += 1
        if time.monotonic() - start >= window and k >= 2:
            return points
        time.sleep(max(0.0, start + k * interval - time.monotonic()))


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 when xs do not vary)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den


def judge_lag(points: list[dict[str, Any]], th: Thresholds) -> dict[str, Any]:
    pts = [p for p in points if p.get("t") is not None and p.get("backlog") is not None]
    if len(pts) < 2:
        return {"readable": False, "fired": None, "detail": "backlog unreadable (fewer than 2 samples with a lag)"}
    s = slope([p["t"] for p in pts], [p["backlog"] for p in pts])
    growth = pts[-1]["backlog"] - pts[0]["backlog"]
    fired = growth > th.lag_growth_min and s > th.lag_slope_max
    return {"readable": True, "fired": fired, "first": pts[0]["backlog"], "last": pts[-1]["backlog"],
            "min": min(p["backlog"] for p in pts), "max": max(p["backlog"] for p in pts),
            "growth": growth, "slope_per_sec": round(s, 3),
            "detail": f"backlog {pts[0]['backlog']}→{pts[-1]['backlog']} (slope {s:+.2f}/s)"}


def judge_errors(points: list[dict[str, Any]], th: Thresholds) -> dict[str, Any]:
    pts = [p for p in points if p.get("t") is not None]
    if len(pts) < 2:
        return {"readable": False, "fired": None, "detail": "counters unreadable"}
    d = counter_deltas(pts[0]["counters"], pts[-1]["counters"])
    if d is None:
        return {"readable": False, "fired": None, "detail": "counters went backwards (reset) during the window"}
    tally = ErrorTally.of(d)
    errors, consumed, value = tally.errors, tally.consumed, tally.rate
    if consumed < th.error_min_consumed:
        return {"readable": True, "fired": False, "errors": errors, "consumed": consumed, "value": value,
                "detail": f"error rate not judged: {consumed} consumed < {th.error_min_consumed} in the window"}
    return {"readable": True, "fired": value > th.error_rate_max, "errors": errors, "consumed": consumed,
            "value": round(value, 6), "detail": f"error rate {value * 100:.2f}% ({errors}/{consumed})"}


def judge_cpu(points: list[dict[str, Any]], th: Thresholds) -> dict[str, Any]:
    vals = [p["cpu"] for p in points if p.get("cpu") is not None]
    if not vals:
        return {"readable": False, "fired": None, "detail": "service CPU unreadable (no systemd/cgroup/proc source)"}
    above = sum(v > th.cpu_max for v in vals)
    source = next(p["cpu_source"] for p in points if p.get("cpu") is not None)
    mean = sum(vals) / len(vals)
    return {"readable": True, "fired": above > th.failure_limit, "mean": round(mean, 1), "max": max(vals),
            "samples_above": above, "samples": len(vals), "source": source, "values": vals,
            "detail": f"cpu mean {mean:.1f}% max {max(vals):.1f}% ({above}/{len(vals)} samples > {th.cpu_max}%, "
                      f"{source})"}


def judge_verdicts(points: list[dict[str, Any]], th: Thresholds) -> dict[str, Any]:
    pts = [p for p in points if p.get("t") is not None]
    bad = [p for p in pts if p["failed_checks"]]
    reasons = sorted({r for p in bad for r in p["failed_checks"]})
    return {"readable": bool(pts), "fired": len(bad) > th.failure_limit, "samples_failed": len(bad),
            "detail": f"{len(bad)}/{len(pts)} samples unhealthy" + (f": {'; '.join(reasons[:3])}" if reasons else ""),
            "reasons": reasons}


RULES = {"lag_increasing": judge_lag, "error_rate_high": judge_errors, "cpu_high": judge_cpu,
         "unhealthy": judge_verdicts}


def judge(points: list[dict[str, Any]], th: Thresholds) -> dict[str, Any]:
    """Apply every rule; hold when any is unreadable, else unhealthy when any fired."""
    rules = {name: fn(points, th) for name, fn in RULES.items()}
    unreadable = [n for n, r in rules.items() if not r["readable"]]
    fired = [n for n, r in rules.items() if r["readable"] and r["fired"]]
    decision = "hold" if unreadable else ("unhealthy" if fired else "healthy")
    readable_n = sum(1 for p in points if p.get("t") is not None)
    errors = sorted({p["error"] for p in points if p.get("error")})
    summary = "; ".join(r["detail"] for r in rules.values())
    if readable_n == 0:
        summary = "no sample could be read" + (f": {errors[0]}" if errors else "")
    return {
        "decision": decision,
        "fired": fired,
        "unreadable": unreadable,
        "rules": rules,
        "samples": len(points),
        "samples_readable": readable_n,
        "errors": errors,
        "thresholds": dataclasses.asdict(th),
        "summary": f"{decision.upper()}: {summary} [{readable_n}/{len(points)} samples readable]",
    }


def observe(settings: ProofSettings, th: Thresholds, *, window: float, interval: float, warmup: float = 0.0,
            unit: str = "quantum-execution", pid: int | None = None,
            prometheus: PromSource | None = None) -> dict[str, Any]:
    """Sample over the window (the proof's own sampling, or Prometheus) and judge it; the dict is what
    `proof observe --json` prints."""
    if prometheus is None:
        points = sample_points(settings, window=window, interval=interval, warmup=warmup, unit=unit, pid=pid)
        source: dict[str, Any] = {"name": "proof"}
    else:
        points = sample_prometheus(settings, prometheus, window=window, interval=interval, warmup=warmup)
        source = {"name": "prometheus", "url": redact_url(prometheus.url), "host": prometheus.host,
                  "job": prometheus.job}
        source.update(backlog_basis=next((p["backlog_basis"] for p in points if "backlog_basis" in p), None))
    out = judge(points, th)
    if prometheus is not None:  # the ramp's messages and state file say which source measured
        out["summary"] += f" from Prometheus {source['url']} (host {prometheus.host})"
    out.update(window_sec=window, interval_sec=interval, warmup_sec=warmup, unit=unit, pid=pid, source=source,
               points=points)
    return out


def exit_code(result: dict[str, Any]) -> ExitCode:
    return {"healthy": ExitCode.OK, "unhealthy": ExitCode.UNHEALTHY}.get(result["decision"], ExitCode.HOLD)
