"""One proof run: sample twice over the window, read the details once, and assemble the report.

The report is the single source for the human layout, `--json` (schemas/report.schema.json) and the ramp gates.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime, timezone
from typing import Any

import redis

from . import collect
from . import state
from .config import ProofSettings
from .cpu import CpuMeter, meter_for_pid, unit_cpu_reader
from .health import evaluate
from .report import drain, error_rate, movement
from .sections import CpuReading, Movement, PreviousRun, RedisFacts, Report, ResultStream, Snapshot
from .systemd import unit_state, units_state

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2


class RedisUnreachable(Exception):
    """Redis did not answer: the CLI turns this into one line and exit 2."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def open_redis(settings: ProofSettings) -> redis.Redis:
    """Connect and PING, translating every connection-level failure to RedisUnreachable."""
    try:
        r = collect.connect(settings)
        r.ping()
        return r
    except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError) as exc:
        raise RedisUnreachable(f"Redis unreachable at {collect.where(settings)}: {exc}") from None


def _cpu_meters(units: dict[str, Any], cpu_pids: tuple[int, ...]) -> dict[str, CpuMeter]:
    meters: dict[str, CpuMeter] = {}
    for name, u in units.get("units", {}).items():
        picked = unit_cpu_reader(u, show=lambda n=name: unit_state(n))
        if picked is not None:
            meters[name] = CpuMeter(*picked)
    for pid in cpu_pids:
        meters[f"pid:{pid}"] = meter_for_pid(pid)
    return meters


def _previous_usable(settings: ProofSettings, snap: Snapshot | None, now: float) -> Snapshot | None:
    if snap is None:
        return None
    age = now - snap.t
    return snap if 0 < age <= settings.snapshot_max_age_sec else None


def gather(settings: ProofSettings, r: redis.Redis, *, use_state: bool = True,
           cpu_pids: tuple[int, ...] = ()) -> Report:
    """Run the sampling procedure and return the full report with its health verdict."""
    try:
        return _gather(settings, r, use_state=use_state, cpu_pids=cpu_pids)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RedisUnreachable(f"Redis unreachable at {collect.where(settings)}: {exc}") from None


def _gather(settings: ProofSettings, r: redis.Redis, *, use_state: bool, cpu_pids: tuple[int, ...]) -> Report:
    previous = state.load(settings) if use_state else None
    units = units_state(settings.units, enabled=settings.systemd)
    meters = _cpu_meters(units, cpu_pids) if settings.sample_sec > 0 else {}
    first = collect.take_sample(r, settings)
    if settings.sample_sec > 0:
        time.sleep(settings.sample_sec)
    last = collect.take_sample(r, settings) if settings.sample_sec > 0 else first
    cpu: dict[str, CpuReading] = {name: m.result() for name, m in meters.items()}
    for name, u in units.get("units", {}).items():
        u["cpu"] = cpu.get(name)

    sample_mv = movement(state.to_snapshot(first), last, first.t) if settings.sample_sec > 0 else None
    prev = _previous_usable(settings, previous, last.t)
    prev_mv = movement(prev, last, prev.t) if prev else None
    primary: Movement | None
    primary, basis = (sample_mv, "sample") if sample_mv else ((prev_mv, "snapshot") if prev_mv else (None, "none"))
    err_window, err_source = (prev_mv, "previous_run") if prev_mv else (sample_mv, "sample")

    last_ms = collect.id_ms(last.results.last_generated_id)
    result_stream = ResultStream(
        **dataclasses.asdict(last.results),
        last_entry_age_sec=None if last_ms is None else round(max(0.0, last.t - last_ms / 1000), 3),
        advancing=None if primary is None else (primary.results_added or 0) > 0,
        advancing_basis=basis,
    )
    version, role = collect.server_facts(r)
    report = Report(
        schema_version=SCHEMA_VERSION,
        generated_at=iso(last.t),
        redis=RedisFacts(url=collect.where(settings), version=version, role=role, server_time=last.t,
                         topology=collect.topology(r)),
        settings={
            "intent_stream": settings.intent_stream, "result_stream": settings.result_stream,
            "dlq_stream": settings.dlq_stream, "group": settings.group, "stats_key": settings.stats_key,
            "sample_sec": settings.sample_sec, "error_rate_max": settings.error_rate_max,
            "error_min_sample": settings.error_min_sample, "consumer_live_ms": settings.consumer_live_ms,
        },
        result_stream=result_stream,
        intent_stream=last.intents,
        group=last.group,
        consumers=(collect.consumers(r, settings.intent_stream, settings.group, settings.consumer_live_ms)
                   if last.group.exists else []),
        drain=drain(last, primary),
        dlq=collect.dlq_info(r, settings.dlq_stream, settings.dlq_newest),
        rate_limiters=collect.rate_limiters(r, settings.rate_pattern, last.t, settings.rate_keys_max,
                                            settings.rate_window_sec),
        counters=last.counters,
        error_rate=error_rate(settings, last.counters.values, err_window, err_source),
        movement=primary,
        movement_basis=basis,
        previous_run=None if prev is None or prev_mv is None else PreviousRun(age_sec=round(last.t - prev.t, 3),
                                                                               movement=prev_mv),
        systemd=units,
        cpu={k: v for k, v in cpu.items() if k.startswith("pid:")},
    )
    report.health = evaluate(report)
    if use_state:
        state.save(settings, last)
    return report
