#!/usr/bin/env python3
"""The fresh path's cost per executed intent, in a minute: CPU of the service and of Redis, and rates against floors.

    python -m bench.hotpath                    # 60k intents, EXEC_CONCURRENCY 1 and 4, best of 3 each
    python -m bench.hotpath --n 20000 --reps 2 --json /tmp/hot.json

The same parts and checks as `bench.run`'s fresh figures (harness/, the paper venue at 0 ms, COUNT 50), without the
stale drains, the I/O and the persistence runs, so a change on the hot path can be measured before and after in the
same session. Rates are noisy on a shared machine; CPU per intent (service process, all threads; redis-server from
INFO's used_cpu_user + used_cpu_sys) much less so, and it is what a change to the hot path moves.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import run as bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60_000, help="intents per run")
    ap.add_argument("--reps", type=int, default=3, help="runs per figure (best rate kept; CPU: the median)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    from consumer.validation import SchemaValidator, load_schema

    bench.SCHEMA = SchemaValidator(load_schema(bench.CFG.schema_dir / "trade_intent.schema.json"))
    workdir = Path(tempfile.mkdtemp(prefix="quantum-hot-"))
    server = bench.RedisServer(data_root=bench.disk_dir(None)).start()
    out: dict[str, Any] = {"n": args.n, "reps": args.reps, "loadavg_before": bench.loadavg()}
    try:
        r = server.client()
        bench.bulk_load(bench.Publisher(r, bench.INTENTS, bench.SCHEMA, bench.CFG.max_payload_bytes), 300_000,
                        bench.STALE_AGE, seed=1, prefix="floor")
        floor = max(bench.floor_once(r, bench.INTENTS, f"hot-floor-{i}", 50, 100_000) for i in range(5))
        r.flushall()
        contract = []
        for i in range(args.reps):
            bench.fresh_batch(server, bench.INTENTS, args.n, f"contract-{i}")
            contract.append(bench.contract_floor_once(server.client(), args.n))
        out["floor_count_50"] = round(floor)
        out["floor_fresh_work_count_50"] = best = max(contract, key=lambda x: x["rate"])
        lines = [f"floor COUNT=50 {floor:,.0f}/s; contract floor {best['rate']:,.0f}/s, its redis "
                 f"{_median(contract, 'redis_cpu_us_per_intent')} us/i, "
                 f"its loop {_median(contract, 'loop_cpu_us_per_intent')} us/i"]
        for conc in args.concurrency:
            runs = [bench.exec_run(server, workdir, f"hot_c{conc}_{i}", args.n, EXEC_CONCURRENCY=conc,
                                   PAPER_LATENCY_MS=0) for i in range(args.reps)]
            rate = max(x["rate"] for x in runs)
            fig = {"rate": round(rate), "ratio": round(rate / floor, 3),
                   "ratio_to_contract_floor": round(rate / best["rate"], 3),
                   "service_cpu_us_per_intent": _median(runs, "service_cpu_us_per_intent"),
                   "redis_cpu_us_per_intent": _median(runs, "redis_cpu_us_per_intent"),
                   "runs": [{k: x[k] for k in ("rate", "service_cpu_us_per_intent", "redis_cpu_us_per_intent")}
                            for x in runs]}
            out[f"fresh_exec_c{conc}"] = fig
            lines.append(f"fresh c{conc}: {rate:,.0f}/s ratio {fig['ratio']} (to contract floor "
                         f"{fig['ratio_to_contract_floor']}); svc {fig['service_cpu_us_per_intent']} us/i, redis "
                         f"{fig['redis_cpu_us_per_intent']} us/i (medians; runs "
                         + ", ".join(f"{x['service_cpu_us_per_intent']}/{x['redis_cpu_us_per_intent']}" for x in runs)
                         + ")")
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    out["loadavg_after"] = bench.loadavg()
    print("\n".join(lines))
    print(f"load {out['loadavg_before']} -> {out['loadavg_after']}  ({time.strftime('%H:%M:%S')})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _median(runs: list[dict[str, Any]], key: str) -> float:
    values = sorted(x[key] for x in runs)
    return values[len(values) // 2]


if __name__ == "__main__":
    sys.exit(main())
