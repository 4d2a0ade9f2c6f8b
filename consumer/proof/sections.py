"""The report's sections as typed records: what the collectors return, the rules judge and the layouts print.

Field order is the JSON key order of `proof --json` (schemas/proof_report.schema.json), which the ramp, the deploy
checks and the tests read: `as_json` turns a section (or the whole report) into plain JSON values, field by field.
Unit states and CPU readings stay mappings: their keys follow what systemd and each CPU source can say.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from . import metrics

UnitState = dict[str, Any]  # systemctl show, as systemd.unit_state reads it (`error` set when it could not answer)
CpuReading = dict[str, Any]  # cpu.CpuMeter.result: source, percent, window_sec (and `error` when unreadable)
MovementBasis = Literal["sample", "snapshot", "none"]  # measured over this run's sample or since the last run's file


def as_json(section: Any) -> Any:
    """A section, a list of them or the report as JSON values (dicts in field order)."""
    if isinstance(section, list):
        return [as_json(x) for x in section]
    return dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section


@dataclass
class StreamInfo:
    """Length, last-generated-id and entries-added of a stream (a missing stream has had nothing added: 0)."""

    key: str
    exists: bool
    length: int = 0
    last_generated_id: str | None = None
    entries_added: int | None = 0


@dataclass
class ResultStream(StreamInfo):
    """The result stream, with whether it moved: results are what the pipeline is for."""

    last_entry_age_sec: float | None = None
    advancing: bool | None = None
    advancing_basis: MovementBasis = "none"


@dataclass
class GroupInfo:
    """The consumer group on the intent stream."""

    stream: str
    name: str
    exists: bool = False
    lag: int | None = None
    lag_estimated: bool = False
    pending: int = 0
    entries_read: int | None = None
    last_delivered_id: str | None = None
    consumer_count: int = 0

    @property
    def backlog(self) -> int | None:
        return metrics.backlog(self.lag, self.pending) if self.exists else None


@dataclass
class Consumer:
    """One consumer of the group; the host is read from the service's default name `<hostname>-<pid>`."""

    name: str | None
    host: str | None
    pending: int
    idle_ms: int | None
    inactive_ms: int | None
    live: bool


@dataclass
class DeadLetter:
    id: str
    reason: str | None
    source_id: str | None


@dataclass
class Dlq:
    key: str
    length: int
    newest: list[DeadLetter]


@dataclass
class RateKey:
    key: str
    count: int | None
    ttl_sec: float | None
    resets_at: float | None
    no_expiry: bool


@dataclass
class RateLimiters:
    pattern: str
    total: int
    keys: list[RateKey]
    truncated: bool


@dataclass
class Counters:
    """The service's counters hash; `values` holds every known counter (missing ones read 0)."""

    key: str
    exists: bool
    values: dict[str, int]
    extra: dict[str, str]


@dataclass
class Snapshot:
    """The few numbers a later run compares against (the previous-run file holds exactly these)."""

    t: float
    result_entries_added: int | None = None
    result_last_id: str | None = None
    group_entries_read: int | None = None
    intent_entries_added: int | None = None
    lag: int | None = None
    pending: int | None = None
    dlq_length: int | None = None
    counters: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Snapshot":
        """Tolerant of older or partial files: unknown keys are ignored, missing ones are unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Movement:
    """What changed between an earlier snapshot and a later sample."""

    window_sec: float
    results_added: int | None
    results_per_sec: float | None
    entries_read: int | None
    read_per_sec: float | None
    intents_added: int | None
    intents_per_sec: float | None
    backlog_change: int | None
    dlq_added: int | None
    counters: dict[str, int] | None  # None when the counters were reset in the window
    counters_reset: bool
    progress: bool


@dataclass
class Drain:
    backlog: int | None
    net_per_sec: float | None = None
    eta_sec: float | None = None


@dataclass
class Tally:
    """Errors over consumed intents; `rate` is None while nothing was consumed."""

    rate: float | None
    errors: int
    consumed: int


@dataclass
class WindowTally(Tally):
    """The tally over a window: its length and whether it is this run's sample or the time since the last run."""

    sec: float
    source: Literal["sample", "previous_run"]


@dataclass
class ErrorRate:
    """Both candidate error rates and which one the verdict uses (`basis`): the window once it holds min_sample."""

    definition: str
    max: float
    min_sample: int
    total: Tally
    window: WindowTally | None
    value: float | None
    basis: Literal["window", "total", "none"]


@dataclass
class PreviousRun:
    age_sec: float
    movement: Movement


@dataclass
class ReplicaLink:
    """One replica as the master sees it: lag in bytes behind its offset and seconds since its last ack."""

    address: str
    state: str | None
    lag_bytes: int
    lag_sec: int | None


@dataclass
class SentinelView:
    """What one sentinel answers for the master's address (None when it did not answer)."""

    address: str
    master: str | None
    reachable: bool


@dataclass
class Topology:
    """Master, replicas and (with REDIS_SENTINELS) every sentinel's view: who is master and whether they agree."""

    role: str | None
    master: str | None
    repl_offset: int
    min_replicas_good: int | None
    replicas: list[ReplicaLink]
    sentinels: list[SentinelView]


@dataclass
class RedisFacts:
    url: str
    version: str | None
    role: str | None
    server_time: float
    topology: Topology | None = None


@dataclass
class Check:
    """One health rule's outcome: ok True/False, or None when there was nothing to judge."""

    name: str
    ok: bool | None
    detail: str


@dataclass
class Health:
    healthy: bool
    verdict: str
    reasons: list[str]
    checks: list[Check]
    notes: list[str]

    def failed(self, names: tuple[str, ...] | None = None) -> list[Check]:
        """The failed checks (of `names` only, when given)."""
        return [c for c in self.checks if c.ok is False and (names is None or c.name in names)]


@dataclass
class Report:
    """One proof run; `health` is filled last, by health.evaluate over the rest."""

    schema_version: int
    generated_at: str
    redis: RedisFacts
    settings: dict[str, Any]
    result_stream: ResultStream
    intent_stream: StreamInfo
    group: GroupInfo
    consumers: list[Consumer]
    drain: Drain
    dlq: Dlq
    rate_limiters: RateLimiters
    counters: Counters
    error_rate: ErrorRate
    movement: Movement | None
    movement_basis: MovementBasis
    previous_run: PreviousRun | None
    systemd: dict[str, Any]  # {"present": bool, "units": {name: UnitState}}
    cpu: dict[str, CpuReading]
    health: Health | None = None
