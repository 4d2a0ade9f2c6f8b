"""What the tests share: the real parts (harness/: a private redis-server, the service process), the service's names,
and helpers that build intents and read outcomes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any

import harness
import redis
from harness import REDIS_SERVER, ROOT, RedisServer, free_port, wait_until  # noqa: F401  (the tests import them here)

from consumer.config import Config

# The service's default names, from the one place they are written.
INTENTS = Config.intent_stream
RESULTS = Config.result_stream
DLQ = Config.dlq_stream
GROUP = Config.group
STATS = Config.stats_key
IDEM_PREFIX = Config.idem_prefix
RATE_PREFIX = Config.rate_prefix


class ServiceProcess(harness.ServiceProcess):
    """The service with the tests' defaults: nothing reclaimed within a test (CLAIM_IDLE_MS 60 s) and a rate limit
    that no test reaches unless it sets one."""

    def __init__(self, redis_url: str, **env: Any) -> None:
        super().__init__(redis_url, **{"CLAIM_IDLE_MS": "60000", "RATE_LIMIT_MAX": "100000", **env})


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def intent(n: int | str = 0, age_sec: float = 0.0, **overrides: Any) -> dict[str, Any]:
    """A valid LIMIT intent; ``overrides`` replace fields (None removes one)."""
    doc: dict[str, Any] = {
        "intent_id": f"test-{n:08d}" if isinstance(n, int) else n,
        "symbol": "BTCUSDT", "side": "BUY", "order_type": "LIMIT", "qty": 0.5, "price": 64000.5,
        "timestamp": iso(time.time() - age_sec), "source": "tests", "confidence": 0.9,
    }
    return changed(doc, **overrides)


def changed(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``changes`` applied; a change to None removes the field."""
    out = {k: v for k, v in doc.items() if k not in changes or changes[k] is not None}
    out.update((k, v) for k, v in changes.items() if v is not None)
    return out


def xadd(r: redis.Redis, doc: Any, stream: str = INTENTS, **fields: Any) -> bytes:
    payload = doc if isinstance(doc, (bytes, str)) else json.dumps(doc)
    return r.xadd(stream, {"payload": payload, **fields})


def results(r: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(f[b"payload"]) for _, f in r.xrange(RESULTS)]


def dead_letters(r: redis.Redis) -> list[dict[bytes, bytes]]:
    return [f for _, f in r.xrange(DLQ)]


def stats(r: redis.Redis) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in r.hgetall(STATS).items()}


def pending(r: redis.Redis) -> int:
    try:
        return int(r.xpending(INTENTS, GROUP)["pending"])
    except redis.ResponseError:
        return 0


def drained(r: redis.Redis, total: int) -> bool:
    """Every one of ``total`` entries has an outcome and nothing is pending."""
    return stats(r).get("consumed", 0) >= total and pending(r) == 0
