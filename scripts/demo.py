#!/usr/bin/env python3
"""The execution service on a mixed backlog, end to end, against a private redis-server.

Loads 200k stale + 10k valid + 1k invalid + 1k duplicated intents, runs ``python -m consumer`` until every entry has
an outcome, stops it with SIGTERM and prints what happened. Exit 0 only when the outcome is exactly as expected.
Sizes are flags so the tests can run a smaller copy. Run from the project root: ``python -m scripts.demo``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter

from consumer.bridge import Publisher, bulk_load, synthetic_intent
from consumer.config import Config
from tests.support import DLQ, GROUP, INTENTS, RESULTS, RedisServer, ServiceProcess, pending, stats, wait_until

INVALID_KINDS = [
    lambda rng, d: json.dumps({**d, "side": "HOLD"}),
    lambda rng, d: json.dumps({k: v for k, v in d.items() if k != "qty"}),
    lambda rng, d: json.dumps({**d, "qty": -1}),
    lambda rng, d: "{not json",
    lambda rng, d: json.dumps({**d, "symbol": "btc usdt"}),
    lambda rng, d: json.dumps([d]),
    lambda rng, d: json.dumps(d).replace(str(d["qty"]), "NaN", 1),
    lambda rng, d: json.dumps({**d, "surprise": True}),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stale", type=int, default=200_000)
    p.add_argument("--valid", type=int, default=10_000)
    p.add_argument("--invalid", type=int, default=1_000)
    p.add_argument("--duplicates", type=int, default=1_000)
    p.add_argument("--count", type=int, default=50, help="XREADGROUP_COUNT for the run")
    p.add_argument("--concurrency", type=int, default=4, help="EXEC_CONCURRENCY for the run")
    args = p.parse_args()

    server = RedisServer().start()
    try:
        r = server.client()
        pub = Publisher.from_config(Config.from_env({"REDIS_URL": server.url}), r)
        t0 = time.monotonic()
        bulk_load(pub, args.stale, age_sec=3600, seed=1, prefix="stale")
        rng = random.Random(2)
        valid = [synthetic_intent(rng, prefix="valid") for _ in range(args.valid)]
        payloads = [json.dumps(d, separators=(",", ":")).encode() for d in valid]
        pub.publish_many(payloads)
        pub.publish_many(INVALID_KINDS[i % len(INVALID_KINDS)](rng, valid[i % len(valid)]).encode()
                         for i in range(args.invalid))
        pub.publish_many(payloads[i * len(payloads) // max(1, args.duplicates)] for i in range(args.duplicates))
        total = args.stale + args.valid + args.invalid + args.duplicates
        print(f"loaded {total} entries in {time.monotonic() - t0:.1f}s: {args.stale} stale, {args.valid} valid, "
              f"{args.invalid} invalid, {args.duplicates} duplicated")

        svc = ServiceProcess(server.url, XREADGROUP_COUNT=args.count, EXEC_CONCURRENCY=args.concurrency,
                             RATE_LIMIT_MAX=1_000_000)
        t1 = time.monotonic()
        svc.start()
        wait_until(lambda: stats(r).get("consumed", 0) >= total and pending(r) == 0, timeout=600, interval=0.05,
                   what="every entry to get an outcome")
        elapsed = time.monotonic() - t1
        rc = svc.stop()

        s = stats(r)
        ids = Counter(json.loads(f[b"payload"])["intent_id"] for _, f in r.xrange(RESULTS))
        reasons = Counter(f[b"reason"].decode().split(":")[0] for _, f in r.xrange(DLQ))
        group = next(g for g in r.xinfo_groups(INTENTS) if g["name"] == GROUP.encode())
        log = svc.log().strip().splitlines()
        print(f"drained in {elapsed:.1f}s ({total / elapsed:,.0f} entries/s), service exit code {rc}")
        print(f"results: {sum(ids.values())} for {len(ids)} intent_ids (max per id {max(ids.values(), default=0)})")
        print(f"dead letters: {r.xlen(DLQ)}, reasons by field: {dict(reasons.most_common(8))}")
        print(f"counters: {dict(sorted(s.items()))}")
        print(f"group: pending={group['pending']} lag={group.get('lag')}")
        print(f"service log ({len(log)} lines):")
        for line in log:
            print(f"  {line}")
        ok = (rc == 0 and len(ids) == args.valid and max(ids.values()) == 1 and r.xlen(DLQ) == args.invalid
              and s.get("stale") == args.stale and s.get("duplicate") == args.duplicates and group["pending"] == 0
              and len(log) <= 5)  # config, one stale drop, one dead letter, the stop line (+1 if a window passes)
        print("DEMO OK" if ok else "DEMO FAILED")
        return 0 if ok else 1
    finally:
        server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
