"""The ramp's gate with Prometheus as its metrics source: `proof observe --metrics-source prometheus`.

Argo Rollouts judges a step with PromQL over what Prometheus already scraped; this module lets the ramp do the same
where the inventory names a Prometheus (role quantum_monitoring) and still decide with the proof's own rules: it turns
the samples Prometheus scraped during the window into the points `observe.sample_points` takes from Redis, and
`observe.judge` decides on them. Raw samples (range-vector queries), never increase()/rate(): those extrapolate, and
the proof's figures are exact counts.

Where each number of a point comes from:

* t: a time redis_exporter scraped the intent stream; one point per `interval` (the first scrape at or after each).
* pending: redis_stream_group_messages_pending of the group; the stream and the group exist when their series do.
* counters: quantum_execution_intents_total of every execution service (the whole group's, like the counters hash),
  each series corrected for restarts and interpolated to the exporter's scrape time; consumed as metrics.with_consumed.
* backlog: redis_exporter 1.45 exports no group lag, so backlog = stream length - consumed + a constant (every entry
  added raises it, every acknowledged one lowers it; the intent stream is never trimmed). The constant comes from a
  point where the group had been delivered the newest entry (lag 0, so backlog = pending); without one the window's
  first point counts as lag 0 (basis "relative"): the growth and the slope, which decide, are exact either way.
* cpu: process_cpu_seconds_total of this host's execution service over the scrape interval before the point.
* failed_checks: group (series missing), units (`up` of this host's execution target is 0), progress (work waiting
  and nothing read, acknowledged or delivered since the exporter's previous scrape).

Prometheus unreachable, or without the series the rules need: one unreadable point, so the decision is hold.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import time
import urllib.parse
import urllib.request
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from .config import ProofSettings, redact_url
from .metrics import with_consumed

log = logging.getLogger(__name__)

Samples = list[tuple[float, float]]
CPU_SOURCE = "prometheus process_cpu_seconds_total"


class PromUnreadable(Exception):
    """Prometheus did not answer, or holds no series a rule needs."""


def selector(name: str, **labels: str) -> str:
    """A series selector with exact label matches (values quoted as PromQL strings)."""
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in labels.items()) + "}"


@dataclass(frozen=True)
class PromSource:
    """One Prometheus and the labels of the execution service observed (its target's `job` and `host`)."""

    url: str
    host: str = field(default_factory=socket.gethostname)
    job: str = "quantum_execution"
    timeout_sec: float = 10.0
    lookback_sec: float = 120.0  # fetched before the window: each series' sample before it, a restart's reset
    settle_sec: float = 60.0  # wait after the window for the scrapes that close it

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """One instant query (`/api/v1/query`) at `at`; the result list."""
        url = f"{self.url.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_sec) as resp:
                body = json.load(resp)
        except (OSError, ValueError) as exc:
            raise PromUnreadable(f"prometheus {redact_url(self.url)} unreadable: {exc}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            why = body.get("error") if isinstance(body, dict) else body
            raise PromUnreadable(f"prometheus {redact_url(self.url)}: {expr}: {why}")
        return body["data"]["result"]

    def series(self, sel: str, start: float, end: float) -> list[tuple[dict[str, str], Samples]]:
        """Every raw sample of the series `sel` matches between start and end."""
        res = self.query(f"{sel}[{max(1, math.ceil(end - start))}s]", end)
        return [(s["metric"], [(float(t), float(v)) for t, v in s["values"]]) for s in res]

    def newest(self, sel: str, now: float) -> float | None:
        """The timestamp of the newest sample of `sel` (None when there is none)."""
        res = self.query(f"max(timestamp({sel}))", now)
        return float(res[0]["value"][1]) if res else None


def value_at(samples: Samples, t: float) -> float | None:
    """The last sample at or before t (as an instant query sees it), None before the first."""
    i = bisect_right(samples, (t, math.inf))
    return samples[i - 1][1] if i else None


def cumulative(samples: Samples, born: bool) -> Samples:
    """A counter's growth since its first sample, corrected for restarts (a drop means it began again from 0); a series
    born during the window (a service started) counts from 0."""
    total = samples[0][1] if born else 0.0
    out = [(samples[0][0], total)]
    for (_, prev), (t, v) in zip(samples, samples[1:]):
        total += v - prev if v >= prev else v
        out.append((t, total))
    return out


def interpolate(samples: Samples, t: float) -> float:
    """A cumulative count at t: linear between the scrapes around it, flat after the last, 0 before the first."""
    i = bisect_right(samples, (t, math.inf))
    if i == 0:
        return 0.0
    if i == len(samples):
        return samples[-1][1]
    (t0, v0), (t1, v1) = samples[i - 1], samples[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


def cpu_percent(samples: Samples, t: float) -> float | None:
    """Percent of one core over the scrape interval ending at the last scrape at or before t."""
    i = bisect_right(samples, (t, math.inf))
    if i < 2:
        return None
    (t0, v0), (t1, v1) = samples[i - 2], samples[i - 1]
    return round(100 * (v1 - v0) / (t1 - t0), 1)


def thin(times: list[float], start: float, interval: float) -> list[float]:
    """The first scrape at or after each start + k*interval, and the last one (the end of the window)."""
    out: list[float] = []
    due = start
    for t in times:
        if t >= due:
            out.append(t)
            due = start + (math.floor((t - start) / interval) + 1) * interval
    if times and out[-1] != times[-1]:
        out.append(times[-1])
    return out


def _one(found: list[tuple[dict[str, str], Samples]]) -> Samples:
    """The series with the newest sample (one exporter, one target per host: there is one)."""
    return max((s for _, s in found if s), key=lambda s: s[-1][0], default=[])


def prom_points(settings: ProofSettings, src: PromSource, *, start: float, end: float, interval: float,
                fetch_end: float | None = None) -> list[dict[str, Any]]:
    """The observation's points at the exporter's scrapes between start and end, from the samples Prometheus holds up
    to fetch_end (later scrapes of the services place their counters at the last point); raises PromUnreadable."""
    stream, group = settings.intent_stream, settings.group
    lo, hi = start - src.lookback_sec, max(end, fetch_end or end)
    length = _one(src.series(selector("redis_stream_length", stream=stream), lo, hi))
    pending = _one(src.series(selector("redis_stream_group_messages_pending", stream=stream, group=group), lo, hi))
    delivered = _one(src.series(selector("redis_stream_group_last_delivered_id", stream=stream, group=group), lo, hi))
    generated = _one(src.series(selector("redis_stream_last_generated_id", stream=stream), lo, hi))
    intents = src.series(selector("quantum_execution_intents_total", stream=stream, group=group), lo, hi)
    cpu_raw = _one(src.series(selector("process_cpu_seconds_total", job=src.job, host=src.host), lo, hi))
    cpu = cumulative(cpu_raw, False) if cpu_raw else []
    up = _one(src.series(selector("up", job=src.job, host=src.host), lo, hi))
    if not up:
        raise PromUnreadable(f"prometheus has no target of job={src.job} host={src.host} (is this host scraped?)")
    times = [t for t, _ in length if start <= t <= end]
    if len(times) < 2:
        raise PromUnreadable(f"fewer than 2 scrapes of redis_stream_length{{stream={stream!r}}} in the window "
                             "(is redis_exporter scraped with -check-streams?)")
    if not intents:
        raise PromUnreadable(f"no quantum_execution_intents_total of group {group!r} (are the services scraped?)")
    by_outcome: dict[str, list[Samples]] = {}
    for labels, samples in intents:
        if samples:
            by_outcome.setdefault(labels.get("outcome", ""), []).append(cumulative(samples, samples[0][0] > start))

    def counts(t: float) -> dict[str, float]:
        return with_consumed({k: sum(interpolate(s, t) for s in ss) for k, ss in by_outcome.items()})

    rows = []
    for t in thin(times, start, interval):
        prev = length[max(0, bisect_right(length, (t, math.inf)) - 2)][0]  # the exporter's scrape before this one
        c, c0 = counts(t), counts(prev)
        xlen, p, d, g = (value_at(s, t) for s in (length, pending, delivered, generated))
        caught_up = d is not None and g is not None and d >= g
        moved = c["consumed"] > c0["consumed"] or (d or 0) > (value_at(delivered, prev) or 0) or (
            p is not None and p < (value_at(pending, prev) or 0))
        rows.append({"t": t, "rel": None if xlen is None else xlen - c["consumed"], "pending": p,
                     "caught_up": caught_up, "moved": moved, "counters": {k: round(v) for k, v in c.items()},
                     "up": value_at(up, t),
                     "cpu": cpu_percent(cpu, t), "window": round(t - prev, 1)})
    anchors = [r["pending"] - r["rel"] for r in rows
               if r["caught_up"] and r["pending"] is not None and r["rel"] is not None]
    first = rows[0]
    base = anchors[0] if anchors else ((first["pending"] or 0) - (first["rel"] or 0))
    basis = "anchored" if anchors else "relative"
    return [_point(r, base, basis, settings, src) for r in rows]


def _point(row: dict[str, Any], base: float, basis: str, settings: ProofSettings, src: PromSource) -> dict[str, Any]:
    """One point in observe.to_point's shape, with the checks it failed."""
    p = row["pending"]
    # Anchored, never under pending: interpolating a counter committed in batches can overshoot by a batch. Relative
    # (no caught-up point to anchor at), the values only carry growth and slope: a clamp at pending would flatten a
    # draining backlog, whose relative values fall below the first point's pending count.
    rel = None if row["rel"] is None else round(row["rel"] + base)
    backlog = None if rel is None or p is None else (max(int(p), rel) if basis == "anchored" else rel)
    lag = None if backlog is None else (0 if row["caught_up"] else max(0, backlog - int(p)))
    failed = []
    if row["rel"] is None:
        failed.append(f"intent stream {settings.intent_stream} does not exist")
    elif p is None:
        failed.append(f"group {settings.group} missing on {settings.intent_stream}")
    if row["up"] != 1:
        failed.append(f"unit not active: {src.job} target of {src.host} down (up={row['up']})")
    if p is not None and not (row["caught_up"] and p == 0) and not row["moved"]:
        failed.append(f"stalled: lag {lag}, pending {int(p)}, nothing read, acked or produced in {row['window']}s")
    return {"t": row["t"], "backlog": backlog, "lag": lag, "pending": None if p is None else int(p),
            "counters": row["counters"], "cpu": row["cpu"], "cpu_source": None if row["cpu"] is None else CPU_SOURCE,
            "failed_checks": failed, "backlog_basis": basis}


def settle(settings: ProofSettings, src: PromSource, end: float) -> tuple[float, float]:
    """Wait for the exporter's first scrape after `end` (the window's last point) and a scrape of the services after
    that one (so the counters can be interpolated to it); that point's time, and the time to read samples up to. After
    settle_sec without them: the newest there is."""
    stream_sel = selector("redis_stream_length", stream=settings.intent_stream)
    intents_sel = selector("quantum_execution_intents_total", stream=settings.intent_stream, group=settings.group)
    deadline = time.monotonic() + src.settle_sec
    while True:
        now = time.time()
        after = [t for t, _ in _one(src.series(stream_sel, end, now)) if t >= end]
        services = src.newest(intents_sel, now)
        if after and services is not None and services > after[0]:
            return after[0], now
        if time.monotonic() >= deadline:
            log.warning("prometheus_settle_timeout exporter=%s services=%s end=%.3f", after[:1], services, end)
            return (after[0] if after else now), now
        time.sleep(0.5)


def sample_prometheus(settings: ProofSettings, src: PromSource, *, window: float, interval: float,
                      warmup: float) -> list[dict[str, Any]]:
    """Let the window pass (after `warmup`), then read its points from Prometheus; an unreadable Prometheus is one
    unreadable point."""
    if warmup > 0:
        time.sleep(warmup)
    start = time.time()
    time.sleep(window)
    try:
        end, fetch_end = settle(settings, src, start + window)
        points = prom_points(settings, src, start=start, end=end, interval=interval, fetch_end=fetch_end)
    except PromUnreadable as exc:
        log.warning("prometheus_unreadable url=%s error=%s", redact_url(src.url), exc)
        return [{"t": None, "error": str(exc)}]
    log.info("prometheus_points url=%s host=%s points=%d", redact_url(src.url), src.host, len(points))
    return points
