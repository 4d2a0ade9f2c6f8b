"""Configuration from the environment, validated once at start.

A bad value must stop the service before it touches Redis: exit code 2 and one line that names the variable and what
is allowed. There is no silent fallback, because a trading service running with a value nobody chose is worse than one
that does not start.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


class ConfigError(ValueError):
    """A configuration variable has a value the service refuses to run with."""


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    try:
        value = int(text, 10)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer (allowed: {lo}..{hi})") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range (allowed: {lo}..{hi})")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number (allowed: {lo}..{hi})") from None
    if not lo <= value <= hi:  # also rejects nan
        raise ConfigError(f"{name}={raw.strip()} is out of range (allowed: {lo}..{hi})")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (allowed: true/false, 1/0, yes/no, on/off)")


def _str(env: Mapping[str, str], name: str, default: str, pattern_ok=lambda s: True, allowed: str = "") -> str:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip()
    if not pattern_ok(value):
        raise ConfigError(f"{name}={value!r} is not allowed ({allowed})")
    return value


def default_consumer() -> str:
    """``<hostname>-<pid>``: unique per process, and the proof reads the host back from it."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _url_ok(s: str) -> bool:
    return s.split("://", 1)[0] in ("redis", "rediss", "unix")


def _key_ok(s: str) -> bool:
    return 0 < len(s) <= 200 and all(c.isprintable() and not c.isspace() for c in s)


@dataclass(frozen=True)
class Config:
    """Effective settings of one service process.

    Each field's default is written here and nowhere else: ``from_env`` falls back to the class attribute, and tests
    take stream, group and key names from it (``Config.intent_stream``) instead of copying them.
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    intent_stream: str = "quantum:stream:trade.intent"
    result_stream: str = "quantum:stream:execution.result"
    dlq_stream: str = "quantum:stream:trade.intent.dlq"
    group: str = "quantum-execution"
    consumer: str = field(default_factory=default_consumer)
    intent_max_age_sec: int = 600
    xreadgroup_count: int = 10
    exec_concurrency: int = 1
    pipeline_diag: bool = False
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    max_deliveries: int = 5
    max_payload_bytes: int = 16_384
    clock_skew_sec: int = 30
    idempotency_ttl_sec: int = 7 * 24 * 3600
    rate_limit_max: int = 50
    rate_limit_window_sec: int = 1
    shutdown_timeout_sec: int = 20
    stale_log_interval_sec: float = 30.0
    executor: str = "paper"
    paper_latency_ms: int = 0
    paper_fail_rate: float = 0.0
    # The paper venue's order book on a Redis of its own (a venue does not fail over with ours); empty: REDIS_URL's.
    paper_venue_url: str = ""
    schema_dir: Path = DEFAULT_SCHEMA_DIR
    stats_key: str = "quantum:stats:execution"
    idem_prefix: str = "quantum:idem:"
    rate_prefix: str = "quantum:rate:orders:"
    stream_maxlen: int = 1_000_000
    metrics_port: int = 0
    metrics_addr: str = "127.0.0.1"
    # Also write the log to this file (the runbook's /var/log/quantum/*.log); empty: stderr (the journal) only.
    log_file: str = ""
    # REDIS_SENTINELS + REDIS_SENTINEL_MASTER instead of REDIS_URL (consumer/connection.py); None: REDIS_URL.
    sentinel: Any = None
    # WAIT for this many replicas after each idempotency claim and each commit (default 1 with Sentinel, else 0).
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Read and validate every variable; raise ConfigError naming the first bad one."""
        e = os.environ if env is None else env
        redis_url = _str(e, "REDIS_URL", cls.redis_url, _url_ok, "a redis://, rediss:// or unix:// URL")
        from .connection import sentinel_from_env  # connection.py imports ConfigError from here

        sentinel = sentinel_from_env(e)
        cfg = cls(
            redis_url=redis_url,
            intent_stream=_str(e, "INTENT_STREAM", cls.intent_stream, _key_ok, "a Redis key without spaces"),
            result_stream=_str(e, "RESULT_STREAM", cls.result_stream, _key_ok, "a Redis key without spaces"),
            dlq_stream=_str(e, "DLQ_STREAM", cls.dlq_stream, _key_ok, "a Redis key without spaces"),
            group=_str(e, "CONSUMER_GROUP", cls.group, _key_ok, "a group name without spaces"),
            consumer=_str(e, "CONSUMER_NAME", default_consumer(), _key_ok,
                          "a consumer name without spaces"),
            intent_max_age_sec=_int(e, "INTENT_MAX_AGE_SEC", cls.intent_max_age_sec, 1, 7 * 24 * 3600),
            xreadgroup_count=_int(e, "XREADGROUP_COUNT", cls.xreadgroup_count, 1, 1000),
            exec_concurrency=_int(e, "EXEC_CONCURRENCY", cls.exec_concurrency, 1, 64),
            pipeline_diag=_bool(e, "PIPELINE_DIAG", cls.pipeline_diag),
            block_ms=_int(e, "XREADGROUP_BLOCK_MS", cls.block_ms, 10, 10_000),
            claim_idle_ms=_int(e, "CLAIM_IDLE_MS", cls.claim_idle_ms, 1000, 24 * 3600 * 1000),
            max_deliveries=_int(e, "MAX_DELIVERIES", cls.max_deliveries, 1, 100),
            max_payload_bytes=_int(e, "MAX_PAYLOAD_BYTES", cls.max_payload_bytes, 256, 1_048_576),
            clock_skew_sec=_int(e, "INTENT_CLOCK_SKEW_SEC", cls.clock_skew_sec, 0, 3600),
            idempotency_ttl_sec=_int(e, "IDEMPOTENCY_TTL_SEC", cls.idempotency_ttl_sec, 60, 365 * 24 * 3600),
            rate_limit_max=_int(e, "RATE_LIMIT_MAX", cls.rate_limit_max, 1, 10_000_000),
            rate_limit_window_sec=_int(e, "RATE_LIMIT_WINDOW_SEC", cls.rate_limit_window_sec, 1, 3600),
            shutdown_timeout_sec=_int(e, "SHUTDOWN_TIMEOUT_SEC", cls.shutdown_timeout_sec, 1, 600),
            stale_log_interval_sec=float(_int(e, "STALE_LOG_INTERVAL_SEC", int(cls.stale_log_interval_sec), 1,
                                              3600)),
            executor=_str(e, "EXECUTOR", cls.executor, lambda s: s.replace("_", "").replace(".", "").replace(":", "").isalnum(),
                          "an executor name such as 'paper' or 'package.module:Class'"),
            paper_latency_ms=_int(e, "PAPER_LATENCY_MS", cls.paper_latency_ms, 0, 60_000),
            paper_fail_rate=_float(e, "PAPER_FAIL_RATE", cls.paper_fail_rate, 0.0, 1.0),
            paper_venue_url=_str(e, "PAPER_VENUE_URL", cls.paper_venue_url, _url_ok,
                                 "a redis://, rediss:// or unix:// URL"),
            schema_dir=Path(_str(e, "SCHEMA_DIR", str(cls.schema_dir))),
            stream_maxlen=_int(e, "RESULT_STREAM_MAXLEN", cls.stream_maxlen, 1000, 1_000_000_000),
            metrics_port=_int(e, "METRICS_PORT", cls.metrics_port, 0, 65535),
            metrics_addr=_str(e, "METRICS_ADDR", cls.metrics_addr, lambda s: all(c.isalnum() or c in ".:" for c in s),
                              "an IP address to listen on"),
            log_file=_str(e, "LOG_FILE", cls.log_file, lambda s: s.startswith("/"), "an absolute path"),
            sentinel=sentinel,
            wait_replicas=_int(e, "REDIS_WAIT_REPLICAS", 1 if sentinel else 0, 0, 16),
            wait_timeout_ms=_int(e, "REDIS_WAIT_TIMEOUT_MS", cls.wait_timeout_ms, 1, 60_000),
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        """Cross-variable rules that single ranges cannot express."""
        if self.idempotency_ttl_sec <= self.intent_max_age_sec:
            raise ConfigError(
                f"IDEMPOTENCY_TTL_SEC={self.idempotency_ttl_sec} must exceed INTENT_MAX_AGE_SEC="
                f"{self.intent_max_age_sec} (a duplicate must meet its record before it goes stale)")
        if not (self.schema_dir / "trade_intent.schema.json").is_file():
            raise ConfigError(f"SCHEMA_DIR={str(self.schema_dir)!r} has no trade_intent.schema.json")

    @property
    def max_in_flight(self) -> int:
        """Backpressure bound: unacknowledged intents held by this process."""
        return self.exec_concurrency + self.xreadgroup_count

    def banner(self) -> str:
        """The one start-up line operators and the deploy play grep for."""
        return (f"P0.D.5 Config: INTENT_MAX_AGE_SEC={self.intent_max_age_sec}, "
                f"XREADGROUP_COUNT={self.xreadgroup_count}, EXEC_CONCURRENCY={self.exec_concurrency}")


def main(argv: list[str] | None = None) -> int:
    """``python -m consumer.config NAME=VALUE ...``: judge settings by the service's own rules without starting it.

    The deploy's pre-flight runs this on the control node with the inventory's values, so the ranges live here only.
    Prints the one line the service would print and exits 2 when a value is refused, 0 otherwise.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    env = dict(a.partition("=")[::2] for a in args)
    try:
        Config.from_env(env)
    except ConfigError as exc:
        print(exc)
        return 2
    print("settings accepted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
