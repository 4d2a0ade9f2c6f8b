#!/usr/bin/env python3
"""Profile one service run of the benchmark with py-spy (all threads, idle included) and summarise the stacks.

    pip install py-spy            # into the venv only; not a runtime requirement
    python -m bench.profile fresh --n 30000 --concurrency 1
    python -m bench.profile stale --n 300000 --count 50

Writes bench/out/profile-<kind>.txt (collapsed stacks, flamegraph input) and prints the functions with the most
samples, inclusive and exclusive, per thread.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import run as bench


def summarise(path: Path, top: int) -> str:
    incl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    excl: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    total: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(" ")[0].strip('"') if frames else "?"
        thread = "exec-worker" if "exec" in frames[0] else ("main" if "MainThread" in frames[0] or "consumer" in
                                                            frames[0] else frames[0][:40])
        count = int(n)
        total[thread] += count
        for f in set(frames[1:]):
            incl[thread][f] += count
        if len(frames) > 1:
            excl[thread][frames[-1]] += count
    out = []
    for thread, n in total.most_common():
        out.append(f"== thread {thread}: {n} samples")
        out.append("   inclusive:")
        for f, c in incl[thread].most_common(top):
            out.append(f"   {100 * c / n:5.1f}%  {f}")
        out.append("   exclusive:")
        for f, c in excl[thread].most_common(top):
            out.append(f"   {100 * c / n:5.1f}%  {f}")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=("fresh", "stale"))
    ap.add_argument("--n", type=int, default=30_000)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--latency-ms", type=int, default=0)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--cpu-only", action="store_true", help="leave out idle samples (waits on sockets and locks)")
    args = ap.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not py_spy:
        print("py-spy not found: pip install py-spy", file=sys.stderr)
        return 2
    from consumer.validation import SchemaValidator, load_schema

    bench.SCHEMA = SchemaValidator(load_schema(bench.CFG.schema_dir / "trade_intent.schema.json"))
    out_dir = bench.ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    stacks = out_dir / f"profile-{args.kind}.txt"
    workdir = Path(tempfile.mkdtemp(prefix="quantum-prof-"))
    server = bench.RedisServer().start()
    try:
        r = server.client()
        pub = bench.Publisher(r, bench.INTENTS, bench.SCHEMA, bench.CFG.max_payload_bytes)
        age = bench.STALE_AGE if args.kind == "stale" else 0
        bench.bulk_load(pub, args.n, age, prefix=f"prof-{int(time.time())}")
        svc = bench.service(server, workdir, "prof", XREADGROUP_COUNT=args.count,
                            EXEC_CONCURRENCY=args.concurrency, PAPER_LATENCY_MS=args.latency_ms)
        svc.start()
        spy = subprocess.Popen([py_spy, "record", "--pid", str(svc.proc.pid), "--rate", str(args.rate),
                                *([] if args.cpu_only else ["--idle"]), "--threads", "--format", "raw",
                                "--output", str(stacks), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # py-spy attaches
        field = "stale" if args.kind == "stale" else "executed"
        t0 = time.perf_counter()
        cpu0 = open(f"/proc/{svc.proc.pid}/stat").read().rsplit(")", 1)[1].split()[11:13]
        _, done = bench.wait_counter(r, field, args.n, svc, 600)
        cpu1 = open(f"/proc/{svc.proc.pid}/stat").read().rsplit(")", 1)[1].split()[11:13]
        tck = bench.os.sysconf("SC_CLK_TCK")
        user, system = ((int(b) - int(a)) / tck for a, b in zip(cpu0, cpu1))
        print(f"{args.n} {args.kind} in {done - t0:.2f}s: {args.n / (done - t0):,.0f}/s (under py-spy); service "
              f"cpu user {user:.2f}s system {system:.2f}s = {1e6 * (user + system) / args.n:.1f} us per intent")
        spy.send_signal(2)
        spy.wait(30)
        svc.stop()
    finally:
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
    print(summarise(stacks, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
