"""The publisher bridge (the AI engine's side): validate, then XADD.

An intent that does not match the schema is refused here with the reason, before it can reach the stream. The CLI
also makes traffic: ``--demo RATE`` publishes realistic synthetic intents (the lab's AI engine), and ``--bulk N``
loads a backlog with pipelining (1.4M stale intents in seconds, for tests and benchmarks).

    python -m consumer.bridge '{"intent_id": ...}'      # publish documents (arguments or stdin lines)
    python -m consumer.bridge --demo 5                   # 5 intents/s until SIGTERM
    python -m consumer.bridge --bulk 1400000 --age-sec 3600
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

import redis

from . import connection, logs, sdnotify
from .config import Config, ConfigError
from .validation import InvalidIntent, SchemaValidator, load_schema, parse_payload

log = logging.getLogger("quantum.bridge")

SYMBOLS = {"BTCUSDT": 64_000.0, "ETHUSDT": 3_100.0, "SOLUSDT": 145.0, "BNBUSDT": 580.0, "XRPUSDT": 0.52,
           "ADAUSDT": 0.45, "AVAXUSDT": 36.0, "LINKUSDT": 14.5}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def synthetic_intent(rng: random.Random, created: float | None = None, prefix: str = "demo") -> dict[str, Any]:
    """A plausible intent: real symbols, prices near the market, limit orders with a price."""
    symbol = rng.choice(list(SYMBOLS))
    base = SYMBOLS[symbol]
    order_type = "LIMIT" if rng.random() < 0.6 else "MARKET"
    intent: dict[str, Any] = {
        "intent_id": f"{prefix}-{uuid.UUID(int=rng.getrandbits(128)).hex[:24]}",
        "symbol": symbol,
        "side": rng.choice(("BUY", "SELL")),
        "order_type": order_type,
        "qty": round(rng.uniform(0.01, 2.0) * (1000 / max(base, 1.0)) + 0.001, 6),
        "timestamp": iso(time.time() if created is None else created),
        "source": "ai-engine-demo",
        "confidence": round(rng.uniform(0.5, 0.99), 3),
    }
    if order_type == "LIMIT":
        intent["price"] = round(base * rng.uniform(0.995, 1.005), 4)
        intent["time_in_force"] = "GTC"
    return intent


class NotReplicated(redis.ConnectionError):
    """XADD answered, but fewer replicas than REDIS_WAIT_REPLICAS confirmed it: a failover may still lose it.

    A ConnectionError, so every caller that retries an outage retries this too; publishing the same intent again is
    safe (the service acks the second entry as a duplicate of the intent_id).
    """


class Publisher:
    """Validates against the shared schema and publishes to the intent stream."""

    def __init__(self, client: redis.Redis, stream: str, schema: SchemaValidator,
                 max_payload_bytes: int = 16_384, wait_replicas: int = 0, wait_timeout_ms: int = 1000) -> None:
        self.r = client
        self.stream = stream
        self.schema = schema
        self.max_payload_bytes = max_payload_bytes
        self.wait_replicas = wait_replicas  # >0: an intent counts as published once that many replicas hold it
        self.wait_timeout_ms = wait_timeout_ms

    @classmethod
    def from_config(cls, cfg: Config, client: redis.Redis | None = None) -> "Publisher":
        schema = SchemaValidator(load_schema(cfg.schema_dir / "trade_intent.schema.json"))
        client = client or connection.connect(cfg.redis_url, cfg.sentinel, socket_connect_timeout=2,
                                              socket_timeout=max(5.0, cfg.wait_timeout_ms / 1000 + 2))
        return cls(client, cfg.intent_stream, schema, cfg.max_payload_bytes, cfg.wait_replicas, cfg.wait_timeout_ms)

    def encode(self, intent: dict[str, Any] | str | bytes) -> bytes:
        """Validated payload bytes; InvalidIntent names what is wrong."""
        if isinstance(intent, dict):
            raw = json.dumps(intent, separators=(",", ":"), allow_nan=False).encode()
        else:
            raw = intent.encode() if isinstance(intent, str) else intent
        doc = parse_payload(raw, self.max_payload_bytes)
        self.schema.check(doc)
        return raw

    def publish(self, intent: dict[str, Any] | str | bytes) -> str:
        """Validate and XADD one intent; returns its entry id (with WAIT: once a replica holds it too).

        Raises NotReplicated when the replicas did not confirm in time: the caller publishes the same intent again.
        """
        payload = self.encode(intent)
        if self.wait_replicas:
            pipe = self.r.pipeline(transaction=False)  # one connection: WAIT covers the XADD sent on it
            pipe.xadd(self.stream, {"payload": payload})
            pipe.wait(self.wait_replicas, self.wait_timeout_ms)
            entry_id, acked = pipe.execute()
            if acked < self.wait_replicas:
                raise NotReplicated(f"XADD {entry_id!r} confirmed by {acked} of {self.wait_replicas} replicas "
                                    f"within {self.wait_timeout_ms} ms")
        else:
            entry_id = self.r.xadd(self.stream, {"payload": payload})
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    def publish_many(self, payloads: Iterable[bytes], ids: Iterator[str] | None = None, chunk: int = 2000) -> int:
        """Pipelined XADD of already-encoded payloads (bulk loads)."""
        n = 0
        pipe = self.r.pipeline(transaction=False)
        for payload in payloads:
            pipe.xadd(self.stream, {"payload": payload}, id=next(ids) if ids else "*")
            n += 1
            if n % chunk == 0:
                pipe.execute()
        pipe.execute()
        return n


def backdated_ids(client: redis.Redis, stream: str, at_ms: int) -> Iterator[str] | None:
    """Entry ids carrying the given time, as a backlog that built up then would have; None if the stream is newer.

    None as well when the publisher may not read the stream (a write-only ACL user, as the AI engine's is): without
    the stream's last id a backdated id could be refused, so the entries get fresh ids and are stale by timestamp.
    """
    try:
        last = client.xinfo_stream(stream)["last-generated-id"]
        last_ms = int((last.decode() if isinstance(last, bytes) else last).split("-")[0])
    except redis.exceptions.NoPermissionError:
        return None
    except redis.ResponseError:
        last_ms = 0
    if last_ms >= at_ms:
        return None
    return (f"{at_ms}-{seq}" for seq in range(1, 1 << 62))


def bulk_payloads(n: int, age_sec: float, seed: int, prefix: str) -> Iterator[bytes]:
    rng = random.Random(seed)
    created = time.time() - age_sec
    for _ in range(n):
        yield json.dumps(synthetic_intent(rng, created, prefix), separators=(",", ":")).encode()


def bulk_load(pub: Publisher, n: int, age_sec: float, seed: int = 1, prefix: str = "bulk") -> int:
    """Load n valid intents created ``age_sec`` ago; backdated entry ids when the stream allows it."""
    ids = backdated_ids(pub.r, pub.stream, int((time.time() - age_sec) * 1000)) if age_sec > 0 else None
    if age_sec > 0 and ids is None:
        log.warning("bulk_ids_not_backdated reason=stream_has_newer_entries")
    first = next(bulk_payloads(1, age_sec, seed, prefix))
    pub.encode(first)  # the generator's output must pass the same gate as everything else
    return pub.publish_many(bulk_payloads(n, age_sec, seed, prefix), ids)


def run_demo(pub: Publisher, rate: float, count: int | None, stop: threading.Event, seed: int | None = None) -> int:
    """Publish ``rate`` intents per second until stopped; a Redis outage is waited out, not fatal."""
    rng = random.Random(seed)
    interval = 1.0 / rate
    sent = 0
    next_at = time.monotonic()
    backoff = 0.0
    doc: dict[str, Any] | None = None
    while not stop.is_set() and (count is None or sent < count):
        doc = doc or synthetic_intent(rng)
        try:
            pub.publish(doc)  # the same intent until it is acknowledged: a second copy is acked as a duplicate
            sent += 1
            doc = None
            backoff = 0.0
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
            if isinstance(exc, redis.ResponseError) and not connection.is_failover_reply(exc):
                raise
            if isinstance(exc, redis.ResponseError):
                connection.reset(pub.r)  # a demoted master (UNBLOCKED, NOREPLICAS...): ask the sentinels again
            backoff = min(5.0, max(0.2, backoff * 2))
            log.warning("redis_unavailable error=%r retry_in_sec=%.1f", str(exc)[:120], backoff)
            stop.wait(backoff)
            continue
        next_at += interval
        stop.wait(max(0.0, next_at - time.monotonic()))
    return sent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m consumer.bridge", description=__doc__.split("\n\n")[0])
    p.add_argument("documents", nargs="*", help="intent JSON documents to publish (default: one per stdin line)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--demo", type=float, metavar="RATE", help="publish synthetic intents at RATE per second")
    mode.add_argument("--bulk", type=int, metavar="N", help="load N synthetic intents with pipelining")
    p.add_argument("--count", type=int, help="with --demo: stop after this many")
    p.add_argument("--age-sec", type=float, default=0.0, help="with --bulk: how old the intents are")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible traffic")
    p.add_argument("--prefix", default="bulk", help="with --bulk: intent_id prefix")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = dict(os.environ)
    try:
        cfg = Config.from_env(env)
        logs.setup(log_file=cfg.log_file)
    except (ConfigError, logs.LogFileError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    pub = Publisher.from_config(cfg)
    if args.demo is not None:
        if not 0 < args.demo <= 100_000:
            print("error: --demo RATE must be in (0, 100000]", file=sys.stderr)
            return 2
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        log.info("bridge_demo rate=%s stream=%s", args.demo, cfg.intent_stream)
        sdnotify.notify("READY=1")
        sent = run_demo(pub, args.demo, args.count, stop, args.seed)
        log.info("bridge_stopped sent=%d", sent)
        return 0
    if args.bulk is not None:
        started = time.monotonic()
        n = bulk_load(pub, args.bulk, args.age_sec, args.seed or 1, args.prefix)
        print(f"loaded {n} intents aged {args.age_sec:.0f}s into {cfg.intent_stream} "
              f"in {time.monotonic() - started:.1f}s")
        return 0
    docs = args.documents or [line for line in sys.stdin.read().splitlines() if line.strip()]
    refused = 0
    for doc in docs:
        try:
            print(pub.publish(doc))
        except InvalidIntent as exc:
            refused += 1
            print(f"refused: {exc.reason}", file=sys.stderr)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
