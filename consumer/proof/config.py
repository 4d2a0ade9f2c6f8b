"""Settings of the proof / ops CLI: stream names, thresholds and the snapshot directory.

The proof CLI reads the same environment names as the service (REDIS_URL, INTENT_STREAM, RESULT_STREAM, DLQ_STREAM,
CONSUMER_GROUP) so that one env file describes both, but it deliberately does not import the service's Config: an
operator must be able to prove a pipeline whose service configuration is broken, and the proof must not refuse to run
because, say, XREADGROUP_COUNT is out of range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from ..config import Config

COUNTER_NAMES = (
    "consumed", "executed", "stale", "invalid", "duplicate", "failed", "dead_lettered", "reclaimed", "reconciled",
)
# Numerator of the error rate; `consumed` (every entry acked with an outcome, stale drops included) is the
# denominator. The service counts an invalid intent in both `invalid` and `dead_lettered`, and a failed execution in
# both `executed` and `failed`, so failed + dead_lettered counts each bad outcome exactly once.
ERROR_COUNTERS = ("failed", "dead_lettered")
UNITS = ("quantum-ai-engine", "quantum-execution")
DEFAULT_STATE_DIR = Path("/var/lib/quantum/proof")


class UsageError(ValueError):
    """A flag or PROOF_* variable has a value the CLI refuses (exit 64, never confused with exit 2)."""


def _env_float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number (allowed: {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise UsageError(f"{name}={raw} is out of range (allowed: {lo}..{hi})")
    return value


def redact_url(url: str) -> str:
    """Hide a password in a Redis URL before it reaches a terminal, a log or a JSON report."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable REDIS_URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def default_state_dir(env: Mapping[str, str]) -> Path:
    """Where the previous run's snapshot lives: PROOF_STATE_DIR, the host's /var/lib, else the user's state dir."""
    explicit = env.get("PROOF_STATE_DIR", "").strip()
    if explicit:
        return Path(explicit)
    if os.access(DEFAULT_STATE_DIR, os.W_OK) or (
        not DEFAULT_STATE_DIR.exists() and os.access(DEFAULT_STATE_DIR.parent, os.W_OK)
    ):
        return DEFAULT_STATE_DIR
    xdg = env.get("XDG_STATE_HOME", "").strip() or str(Path.home() / ".local" / "state")
    return Path(xdg) / "quantum" / "proof"


@dataclass(frozen=True)
class ProofSettings:
    """Everything one proof run needs to know; built from the environment, then overridden by flags."""

    redis_url: str = Config.redis_url  # the names and their defaults are the service's own (docs/contract.md)
    intent_stream: str = Config.intent_stream
    result_stream: str = Config.result_stream
    dlq_stream: str = Config.dlq_stream
    group: str = Config.group
    stats_key: str = Config.stats_key
    rate_pattern: str = "quantum:rate:*"
    sample_sec: float = 2.0
    error_rate_max: float = 0.05
    error_min_sample: int = 20
    snapshot_max_age_sec: float = 3600.0
    dlq_newest: int = 5
    rate_keys_max: int = 20
    rate_window_sec: int = Config.rate_limit_window_sec  # a window key's index times this is when it began
    state_dir: Path | None = field(default=None)
    systemd: bool = True
    units: tuple[str, ...] = UNITS
    connect_timeout_sec: float = 3.0
    # A consumer idle for at most this long is live: above the service's longest read block (10 s) with a margin.
    consumer_live_ms: int = 15_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ProofSettings":
        """Read the shared stream names and the PROOF_* knobs; raise UsageError naming a bad variable."""
        e = os.environ if env is None else env

        def s(name: str, default: str) -> str:
            return e.get(name, "").strip() or default

        return cls(
            redis_url=s("REDIS_URL", cls.redis_url),
            intent_stream=s("INTENT_STREAM", cls.intent_stream),
            result_stream=s("RESULT_STREAM", cls.result_stream),
            dlq_stream=s("DLQ_STREAM", cls.dlq_stream),
            group=s("CONSUMER_GROUP", cls.group),
            sample_sec=_env_float(e, "PROOF_SAMPLE_SEC", cls.sample_sec, 0.0, 600.0),
            error_rate_max=_env_float(e, "PROOF_ERROR_RATE_MAX", cls.error_rate_max, 0.0, 1.0),
            error_min_sample=int(_env_float(e, "PROOF_ERROR_MIN_SAMPLE", cls.error_min_sample, 1, 1e9)),
            rate_window_sec=int(_env_float(e, "RATE_LIMIT_WINDOW_SEC", cls.rate_window_sec, 1, 3600)),
            consumer_live_ms=int(_env_float(e, "PROOF_CONSUMER_LIVE_MS", cls.consumer_live_ms, 1000, 3.6e6)),
            state_dir=default_state_dir(e),
            units=tuple(u.strip() for u in s("PROOF_UNITS", ",".join(UNITS)).split(",") if u.strip()),
        )
