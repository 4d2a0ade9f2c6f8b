#!/usr/bin/env python3
"""Benchmark: backlog drain and execution throughput of the service against the raw Redis floor, in one run.

    python -m bench.run            # full size (make bench): 1.4M stale backlog, writes bench/results.json
    python -m bench.run --quick    # a first look (make bench-quick), about 1.5 minutes
    python -m bench.run --smoke    # every figure once at the smallest sizes: the test suite's smoke run

From the project root (the harness/ and consumer/ packages are imported from there). The private redis-server and
the service process are the tests' own (harness/), and the contract floor goes through the service's own stream I/O
(consumer/streams.py, results.py, idempotency.py, ratelimit.py), so a change of the commit's format reaches it too.

One private redis-server (loopback, free port, persistence off unless a figure says otherwise) serves every
measurement, so every ratio compares the service with a floor measured on the same machine, in the same minute:

1. floor    a minimal redis-py + hiredis loop, XREADGROUP COUNT=c then XACK of what it got, at c = 10, 50, 500, over
            the same stream entries the stale drain reads (best of several runs: the floor is the denominator, so its
            best run makes every ratio conservative)
2. stale    the bridge's bulk mode loads intents older than INTENT_MAX_AGE_SEC; the real service (`python -m consumer`
            as a subprocess) drains them, at XREADGROUP_COUNT = 10, 50, 500 (one consumer group per run on the same
            stream). Timed from READY=1 on $NOTIFY_SOCKET (the harness owns the socket) until the counters hash says
            `stale` = N, so interpreter start-up is not counted
3. fresh    N valid fresh intents through parse, validation, idempotency claim, rate limiter, paper execution at 0 ms,
            result + ack commit; EXEC_CONCURRENCY 1 and 4, XREADGROUP_COUNT 50; divided by the floor at COUNT 50
4. io       PAPER_LATENCY_MS=20, EXEC_CONCURRENCY C = 1, 2, 4, 8: achieved intents/s against the ideal C / L
5. aof      the same Redis switched to `appendonly yes` (CONFIG SET, its data dir on a disk filesystem, never tmpfs)
            with `appendfsync everysec`, then `always`: the floor and the stale drain at COUNT 50 and the fresh path,
            each divided by the same figure with `appendonly no` from the same run: what the durability costs
6. memory   peak RSS (VmHWM from /proc) of the service process of every run, read just before it is stopped

Every run is also checked for correctness (all N counted, nothing pending, one result per executed intent, no dead
letter), so a fast but wrong service cannot post a figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hiredis
import redis

from consumer.bridge import Publisher, bulk_load
from consumer.config import Config
from harness import REDIS_SERVER, ROOT, RedisServer, ServiceProcess

CFG = Config()
# The service's default names, from the one place they are written.
STATS = CFG.stats_key
INTENTS = CFG.intent_stream
RESULTS = CFG.result_stream
DLQ = CFG.dlq_stream
MAX_AGE = 600  # INTENT_MAX_AGE_SEC of every service run
STALE_AGE = 3600  # age of the stale backlog: well past the TTL
LATENCY_MS = 20  # paper venue latency of the I/O-bound runs
COUNTS = (10, 50, 500)
TARGETS = {"stale": 0.6, "fresh": 0.3, "io": 0.9, "rss_mb": 150.0}
AOF_POLICIES = ("everysec", "always")  # appendfsync policies measured with appendonly yes
MEMORY_FS = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"}  # an fsync there costs nothing: the figure would lie

SIZES: dict[str, dict[str, Any]] = {
    # stale_n: backlog drained by the service at each COUNT; floor_n: entries per floor run (the floor's rate does not
    # depend on the backlog's length, so a slice of it keeps the full run short); *_reps: runs per figure (best kept)
    # aof_*: the persistence runs (a backlog of aof_stale_n for the floor and the drain under each policy)
    "full": dict(stale_n=1_400_000, floor_n=300_000, floor_reps=5, stale_reps=1, fresh_n=60_000, fresh_reps=3,
                 io_sec=4.0, io_reps=2, aof_stale_n=300_000, aof_floor_n=100_000, aof_floor_reps=3,
                 aof_stale_reps=2, aof_fresh_n=60_000, aof_fresh_reps=2, aof_fresh_concs=(1, 4)),
    "quick": dict(stale_n=100_000, floor_n=60_000, floor_reps=5, stale_reps=3, fresh_n=6_000, fresh_reps=3,
                  io_sec=1.0, io_reps=1, aof_stale_n=30_000, aof_floor_n=10_000, aof_floor_reps=2,
                  aof_stale_reps=1, aof_fresh_n=2_000, aof_fresh_reps=1, aof_fresh_concs=(1,)),
    # The test suite's smoke run: every stage and figure once, at the smallest sizes that still measure something;
    # its figures are too noisy to read (use --quick for a first look).
    "smoke": dict(stale_n=30_000, floor_n=20_000, floor_reps=1, stale_reps=1, fresh_n=2_000, fresh_reps=1,
                  io_sec=0.5, io_reps=1, aof_stale_n=10_000, aof_floor_n=5_000, aof_floor_reps=1,
                  aof_stale_reps=1, aof_fresh_n=1_000, aof_fresh_reps=1, aof_fresh_concs=(1,)),
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(r: redis.Redis) -> float:
    """used_cpu_user + used_cpu_sys of INFO cpu: redis-server's CPU (all its threads) to the microsecond."""
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MiB."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def filesystem(path: Path) -> dict[str, str]:
    """The mount holding ``path`` (longest mount point prefix in /proc/self/mountinfo): type, source, mount point."""
    real = os.path.realpath(path)
    found = {"fstype": "?", "source": "?", "mountpoint": "/"}
    best_len = -1
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].encode().decode("unicode_escape")
            inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= best_len:
                best_len = len(mnt)
                fstype, source = (right.split() + ["?", "?"])[:2]
                found = {"fstype": fstype, "source": source, "mountpoint": mnt}
    return found


def disk_dir(preferred: Path | None) -> Path:
    """Where the private Redis keeps its files: the first candidate on a disk filesystem (an AOF on tmpfs would make
    every fsync free and the persistence figures a lie); falls back to the first candidate, flagged in the results."""
    candidates = [preferred] if preferred else [Path("/var/tmp"), ROOT / "build"]
    for c in candidates:
        c.mkdir(parents=True, exist_ok=True)
        if filesystem(c)["fstype"] not in MEMORY_FS:
            return c
    return candidates[0]


def fdatasync_us(directory: Path, n: int = 200) -> dict[str, float]:
    """Median and 90th percentile of one 2 KB append + fdatasync in ``directory``: the disk's price per AOF fsync."""
    path = directory / f"fsync-probe-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 2048)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    times.sort()
    return {"median": round(1e6 * times[n // 2], 1), "p90": round(1e6 * times[n * 9 // 10], 1)}


def service(server: RedisServer, workdir: Path, name: str, **env: Any) -> ServiceProcess:
    """The service as the benchmark runs it: stale after MAX_AGE, no rate limit in the way, its log in ``workdir``."""
    return ServiceProcess(server.url, log_dir=workdir, name=name, INTENT_MAX_AGE_SEC=MAX_AGE,
                          CONSUMER_NAME=f"bench-{name}", RATE_LIMIT_MAX=10_000_000, PYTHONUNBUFFERED=1, **env)


def wait_counter(r: redis.Redis, field: str, target: int, svc: ServiceProcess, timeout: float) -> tuple[float, float]:
    """Poll the counters hash until ``field`` reaches ``target``; returns (first move, reached) perf_counter times."""
    first = None
    deadline = time.perf_counter() + timeout
    while True:
        raw = r.hget(STATS, field)
        now = time.perf_counter()
        value = int(raw) if raw else 0
        if value and first is None:
            first = now
        if value >= target:
            return first or now, now
        if svc.proc.poll() is not None:
            raise RuntimeError(f"service exited with {svc.proc.returncode} at {field}={value}/{target}; "
                               f"see {svc.log_path}")
        if now > deadline:
            raise RuntimeError(f"timed out at {field}={value}/{target} after {timeout:.0f}s; see {svc.log_path}")
        time.sleep(0.002)


def group_pending(r: redis.Redis, stream: str, group: str) -> tuple[int, int | None]:
    for g in r.xinfo_groups(stream):
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            return int(g["pending"]), (int(g["lag"]) if g.get("lag") is not None else None)
    raise RuntimeError(f"no group {group}")


# -- 1. floor ---------------------------------------------------------------------------------------------------

def floor_once(r: redis.Redis, stream: str, group: str, count: int, n: int) -> float:
    """Entries/s of the plainest possible consumer: XREADGROUP COUNT=count, XACK what came back, repeat."""
    r.xgroup_create(stream, group, id="0")
    done = 0
    t0 = time.perf_counter()
    while done < n:
        reply = r.xreadgroup(group, "floor", {stream: ">"}, count=min(count, n - done))
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        if not entries:
            break
        r.xack(stream, group, *[eid for eid, _ in entries])
        done += len(entries)
    elapsed = time.perf_counter() - t0
    r.xgroup_destroy(stream, group)
    if done < n:
        raise RuntimeError(f"floor read only {done} of {n} entries")
    return n / elapsed


def contract_floor_once(r: redis.Redis, n: int, count: int = 50) -> float:
    """Intents/s of the fresh path's Redis work alone, from one plain loop with nothing of the service around it.

    Per batch of ``count``: the read, the idempotency claims, the rate limiter, the paper venue's script, the commit
    (pre-rendered result documents, ``done`` records, acks, counters), each through the service's own object
    (StreamIO, IdempotencyStore, FixedWindowLimiter) on a private group and keys: the arguments are the service's,
    so a change of the commit's format changes this floor with it rather than leaving it measuring another contract.
    No JSON parsing, no schema, no per-intent result rendering, no thread pool. What is left is what any
    single-threaded redis-py consumer of this contract pays.
    """
    from consumer.executors import Report, paper
    from consumer.idempotency import ClaimRequest, IdempotencyStore
    from consumer.ratelimit import FixedWindowLimiter
    from consumer.results import encode, result_document
    from consumer.streams import Batch, StreamIO
    from consumer.work import Outcome, Work

    cfg = dataclasses.replace(CFG, group="bench-contract", consumer="contract", stats_key="bench:stats",
                              idem_prefix="bench:idem:", wait_replicas=0)
    io = StreamIO(r, cfg)
    idem = IdempotencyStore(r, cfg.idem_prefix, cfg.idempotency_ttl_sec, cfg.consumer)
    limiter = FixedWindowLimiter(r, "bench:rate:", 10**9, 1)
    venue = r.register_script(paper._SUBMIT_MANY)
    # One result document and venue record, rendered by the service's own functions, stand for every intent.
    intent_id = "bulk-0123456789abcdef01234567"
    report = Report(status="FILLED", filled_qty=0.015625, avg_price=64012.5, venue_order_id=f"paper-{intent_id}")
    now = time.time()
    work = Work(entry_id=b"1-0", intent={"intent_id": intent_id, "symbol": "BTCUSDT", "side": "BUY", "qty": 0.015625},
                received_at=now, created=now - 0.0125)
    result = encode(result_document(work, Outcome(report, now, now + 5e-5, False), "paper", "bench-host-12345"))
    record = paper._JSON.encode(report.__dict__)
    ttl = cfg.idempotency_ttl_sec
    io.ensure_group()
    done = 0
    redis_cpu0, loop_cpu0 = redis_cpu_seconds(r), time.process_time()
    t0 = time.perf_counter()
    while done < n:
        entries = io.read(min(count, n - done), None)
        if not entries:
            break
        ids = [eid for eid, _ in entries]
        names = [eid.decode() for eid in ids]
        idem.claim([ClaimRequest(x, x) for x in names])
        limiter.acquire(len(ids))
        venue(keys=[f"bench:paper:{x}" for x in names], args=[ttl, *([record] * len(ids))])
        io.commit(Batch(results=[(idem.key(x), result, idem.done_value(x, "FILLED")) for x in names], acks=ids,
                        counters=Counter(executed=len(ids))))
        done += len(ids)
    elapsed = time.perf_counter() - t0
    loop_cpu, redis_cpu = time.process_time() - loop_cpu0, redis_cpu_seconds(r) - redis_cpu0
    r.xgroup_destroy(INTENTS, cfg.group)
    if done < n:
        raise RuntimeError(f"contract floor read only {done} of {n} entries")
    return {"rate": n / elapsed, "redis_cpu_us_per_intent": round(1e6 * redis_cpu / n, 2),
            "loop_cpu_us_per_intent": round(1e6 * loop_cpu / n, 2)}


# -- the service runs ---------------------------------------------------------------------------------------------

def service_run(server: RedisServer, workdir: Path, name: str, *, field: str, n: int, timeout: float,
                stream: str = INTENTS, group: str = CFG.group, **env: Any) -> dict[str, Any]:
    """Start the service, time READY -> counter ``field`` = n, read its peak RSS and CPU, stop it."""
    r = server.client()
    r.delete(STATS)
    svc = service(server, workdir, name, INTENT_STREAM=stream, CONSUMER_GROUP=group, **env)
    aof0 = server.aof_size()
    redis_cpu0 = redis_cpu_seconds(r)
    ready = svc.start(timeout=30).ready_at
    svc_cpu0 = cpu_seconds(svc.pid)
    try:
        first, done = wait_counter(r, field, n, svc, timeout)
        rss = peak_rss_mb(svc.pid)
        svc_cpu = cpu_seconds(svc.pid) - svc_cpu0
        redis_cpu = redis_cpu_seconds(r) - redis_cpu0
    finally:
        code = svc.stop(timeout=60)
    if code != 0:
        raise RuntimeError(f"service {name} exited with {code}; see {svc.log_path}")
    aof_bytes = server.aof_size() - aof0
    stats = {k.decode(): int(v) for k, v in r.hgetall(STATS).items()}
    pending, lag = group_pending(r, stream, group)
    wall = done - ready
    return {"n": n, "wall_sec": round(wall, 4), "rate": n / wall, "startup_sec": round(ready - svc.started, 3),
            "first_counter_after_ready_sec": round(first - ready, 4), "peak_rss_mb": round(rss, 1),
            "service_cpu_sec": round(svc_cpu, 3), "redis_cpu_sec": round(redis_cpu, 3),
            "service_cpu_us_per_intent": round(1e6 * svc_cpu / n, 2),
            "redis_cpu_us_per_intent": round(1e6 * redis_cpu / n, 2),
            "aof_bytes_per_intent": round(aof_bytes / n, 1),
            "counters": stats,
            "pending_after": pending, "lag_after": lag}


def check(cond: bool, what: str) -> None:
    if not cond:
        raise RuntimeError(f"correctness check failed: {what}")


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda x: x["rate"])


def cpu_fields(b: dict[str, Any]) -> dict[str, Any]:
    """CPU per intent of the kept run: the service process (all threads) and redis-server, in microseconds."""
    return {"service_cpu_us_per_intent": b["service_cpu_us_per_intent"],
            "redis_cpu_us_per_intent": b["redis_cpu_us_per_intent"]}


def fresh_batch(server: RedisServer, pub_stream: str, n: int, prefix: str) -> None:
    r = server.client()
    r.flushall()
    pub = Publisher(r, pub_stream, SCHEMA, CFG.max_payload_bytes)
    bulk_load(pub, n, 0, seed=hash(prefix) & 0xFFFF, prefix=prefix)


def exec_run(server: RedisServer, workdir: Path, name: str, n: int, **env: Any) -> dict[str, Any]:
    fresh_batch(server, INTENTS, n, name.replace("_", "-"))
    run = service_run(server, workdir, name, field="executed", n=n, timeout=600, XREADGROUP_COUNT=50, **env)
    r = server.client()
    c = run["counters"]
    check(c.get("executed") == n and c.get("consumed") == n, f"{name}: executed {c}")
    check(r.xlen(RESULTS) == n, f"{name}: {r.xlen(RESULTS)} results for {n} intents")
    check(not r.exists(DLQ), f"{name}: dead letters written")
    check(run["pending_after"] == 0, f"{name}: {run['pending_after']} pending")
    return run


def persistence_runs(server: RedisServer, workdir: Path, p: dict[str, Any],
                     figures: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The floor and stale drain at COUNT 50 and the fresh path with ``appendonly yes``, under each policy in
    AOF_POLICIES; each divided by the raw floor (``ratio``) and by the same figure with ``appendonly no`` from this
    run (``ratio_to_baseline``). The policies take turns run by run (switching appendfsync costs nothing), so a busy
    minute on a shared machine hits both of them rather than one. Ends with appendonly no again."""
    out: dict[str, dict[str, Any]] = {}
    r = server.client()
    fl50 = figures["floor_count_50"]

    def with_baseline(fig: dict[str, Any], baseline: str) -> dict[str, Any]:
        base = figures[baseline]["value"]
        return {**fig, "floor": "floor_count_50", "floor_value": fl50["value"],
                "ratio": round(fig["value"] / fl50["value"], 3), "baseline": baseline, "baseline_value": base,
                "ratio_to_baseline": round(fig["value"] / base, 3)}

    # a backlog of aof_stale_n stale intents, loaded with appendonly no, then written into the AOF by its rewrite
    r.flushall()
    bulk_load(Publisher(r, INTENTS, SCHEMA, CFG.max_payload_bytes), p["aof_stale_n"], STALE_AGE, seed=2,
              prefix="aof-stale")
    floors: dict[str, list[tuple[float, float]]] = {pol: [] for pol in AOF_POLICIES}
    stales: dict[str, list[dict[str, Any]]] = {pol: [] for pol in AOF_POLICIES}
    freshs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    try:
        t0 = time.perf_counter()
        server.set_persistence(AOF_POLICIES[0])
        log(f"aof on in {time.perf_counter() - t0:.1f}s, aof {server.aof_size() / 2**20:.0f} MiB")
        for i in range(p["aof_floor_reps"]):
            for policy in AOF_POLICIES:
                server.set_persistence(policy)
                a0 = server.aof_size()
                rate = floor_once(r, INTENTS, f"bench-aof-floor-{policy}-{i}", 50, p["aof_floor_n"])
                floors[policy].append((rate, (server.aof_size() - a0) / p["aof_floor_n"]))
                log(f"aof {policy} floor COUNT=50 run {i}: {rate:,.0f}/s")
        for i in range(p["aof_stale_reps"]):
            for policy in AOF_POLICIES:
                server.set_persistence(policy)
                group = f"bench-aof-stale-{policy}-{i}"
                run_ = service_run(server, workdir, f"aof_{policy}_stale_{i}", field="stale", n=p["aof_stale_n"],
                                   timeout=900, group=group, XREADGROUP_COUNT=50)
                c = run_["counters"]
                check(c.get("stale") == p["aof_stale_n"] and c.get("consumed") == p["aof_stale_n"]
                      and not c.get("executed"), f"aof {policy} stale: counters {c}")
                check(run_["pending_after"] == 0, f"aof {policy} stale: {run_['pending_after']} pending")
                r.xgroup_destroy(INTENTS, group)
                stales[policy].append(run_)
                log(f"aof {policy} stale COUNT=50 run {i}: {run_['rate']:,.0f}/s "
                    f"aof {run_['aof_bytes_per_intent']} B/intent")
        for i in range(p["aof_fresh_reps"]):
            for conc in p["aof_fresh_concs"]:
                for policy in AOF_POLICIES:
                    server.set_persistence(policy)
                    run_ = exec_run(server, workdir, f"aof_{policy}_fresh_c{conc}_{i}", p["aof_fresh_n"],
                                    EXEC_CONCURRENCY=conc, PAPER_LATENCY_MS=0)
                    freshs.setdefault((policy, conc), []).append(run_)
                    log(f"aof {policy} fresh EXEC_CONCURRENCY={conc} run {i}: {run_['rate']:,.0f}/s "
                        f"aof {run_['aof_bytes_per_intent']} B/intent")
    finally:
        server.set_persistence("no")

    for policy in AOF_POLICIES:
        rates = [x[0] for x in floors[policy]]
        out[f"floor_aof_{policy}_count_50"] = with_baseline({
            "kind": "floor", "unit": "entries/s", "value": round(max(rates)), "count": 50, "n": p["aof_floor_n"],
            "appendfsync": policy, "runs": [round(x) for x in rates], "kept": f"best of {len(rates)}",
            "aof_bytes_per_entry": round(max(x[1] for x in floors[policy]), 1)}, "floor_count_50")
    for policy in AOF_POLICIES:
        runs = stales[policy]
        b = best(runs)
        out[f"stale_drain_aof_{policy}_count_50"] = with_baseline({
            "kind": "stale", "unit": "intents/s", "value": round(b["rate"]), "count": 50, "n": p["aof_stale_n"],
            "appendfsync": policy, "wall_sec": b["wall_sec"], "target": None,
            "ratio_to_policy_floor": round(b["rate"] / out[f"floor_aof_{policy}_count_50"]["value"], 3),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": [round(x["rate"]) for x in runs],
            "kept": f"best of {len(runs)}", **cpu_fields(b), "detail": b}, "stale_drain_count_50")
    for policy in AOF_POLICIES:
        for conc in p["aof_fresh_concs"]:
            runs = freshs[(policy, conc)]
            b = best(runs)
            out[f"fresh_exec_aof_{policy}_c{conc}"] = with_baseline({
                "kind": "fresh", "unit": "intents/s", "value": round(b["rate"]), "exec_concurrency": conc,
                "count": 50, "n": p["aof_fresh_n"], "appendfsync": policy, "wall_sec": b["wall_sec"], "target": None,
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": [round(x["rate"]) for x in runs],
                "kept": f"best of {len(runs)}", **cpu_fields(b), "detail": b}, f"fresh_exec_c{conc}")
    return out


def persistence_summary(figures: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per base figure: its value with appendonly no, the ratio of each policy to it, and always / everysec."""
    summary: dict[str, Any] = {}
    for base, pattern in (("floor_count_50", "floor_aof_{}_count_50"),
                          ("stale_drain_count_50", "stale_drain_aof_{}_count_50"),
                          ("fresh_exec_c1", "fresh_exec_aof_{}_c1"), ("fresh_exec_c4", "fresh_exec_aof_{}_c4")):
        names = {pol: pattern.format(pol) for pol in AOF_POLICIES}
        if base not in figures or not all(n in figures for n in names.values()):
            continue
        entry: dict[str, Any] = {"appendonly_no": figures[base]["value"]}
        for pol, name in names.items():
            entry[pol] = {"value": figures[name]["value"], "ratio_to_appendonly_no": figures[name]["ratio_to_baseline"]}
        entry["always_over_everysec"] = round(figures[names["always"]]["value"] / figures[names["everysec"]]["value"],
                                              3)
        summary[base] = entry
    return summary


# -- the whole run --------------------------------------------------------------------------------------------------

def versions(server: RedisServer) -> dict[str, Any]:
    out = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    redis_v = next((p.split("=", 1)[1] for p in out.split() if p.startswith("v=")), out.strip())
    import jsonschema_rs

    return {"cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
            "cpu_model": _cpu_model(), "python": platform.python_version(), "redis_server": redis_v,
            "redis_py": redis.__version__, "hiredis": hiredis.__version__,
            "jsonschema_rs": getattr(jsonschema_rs, "__version__", "?"), "platform": platform.platform()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    except OSError:
        return "?"


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: a busy shared machine shows here."""
    return [round(x, 2) for x in os.getloadavg()]


def run(size: str, out: Path, workdir: Path, redis_root: Path | None = None) -> dict[str, Any]:
    p = SIZES[size]
    started = time.time()
    load_before = loadavg()
    root = disk_dir(redis_root)
    disk = {"path": str(root), **filesystem(root), "fdatasync_us": fdatasync_us(root)}
    disk["memory_backed"] = disk["fstype"] in MEMORY_FS
    log(f"redis data dir under {root}: {disk['fstype']} on {disk['source']} (mounted at {disk['mountpoint']}), "
        f"fdatasync median {disk['fdatasync_us']['median']} us p90 {disk['fdatasync_us']['p90']} us")
    if disk["memory_backed"]:
        log(f"WARNING: {root} is {disk['fstype']}: an fsync costs nothing there, the aof figures say nothing about "
            "a disk; pass --redis-dir on a disk filesystem")
    server = RedisServer(data_root=root).start()
    disk["data_dir"] = str(server.dir)  # removed by server.cleanup(); the smoke test checks it is gone
    figures: dict[str, dict[str, Any]] = {}
    try:
        machine = {**versions(server), "redis_dir": disk}
        r = server.client()

        # the stale backlog, loaded once: the floor groups and the service groups all read this same stream
        t0 = time.perf_counter()
        pub = Publisher(r, INTENTS, SCHEMA, CFG.max_payload_bytes)
        bulk_load(pub, p["stale_n"], STALE_AGE, seed=1, prefix="stale")
        log(f"loaded {p['stale_n']} stale intents (age {STALE_AGE}s) in {time.perf_counter() - t0:.1f}s "
            f"(redis used_memory {r.info('memory')['used_memory_human']})")

        # 1. floor
        for count in COUNTS:
            rates = [floor_once(r, INTENTS, f"bench-floor-{count}-{i}", count, p["floor_n"])
                     for i in range(p["floor_reps"])]
            figures[f"floor_count_{count}"] = {
                "kind": "floor", "unit": "entries/s", "value": round(max(rates)), "count": count, "n": p["floor_n"],
                "runs": [round(x) for x in rates], "kept": f"best of {len(rates)}"}
            log(f"floor COUNT={count}: {max(rates):,.0f}/s (runs {', '.join(f'{x:,.0f}' for x in rates)})")

        # 2. stale drain
        for count in COUNTS:
            runs = []
            for i in range(p["stale_reps"]):
                group = f"bench-stale-{count}-{i}"
                run_ = service_run(server, workdir, f"stale_c{count}_{i}", field="stale", n=p["stale_n"],
                                   timeout=900, group=group, XREADGROUP_COUNT=count)
                c = run_["counters"]
                check(c.get("stale") == p["stale_n"] and c.get("consumed") == p["stale_n"]
                      and not c.get("executed"), f"stale COUNT={count}: counters {c}")
                check(run_["pending_after"] == 0, f"stale COUNT={count}: {run_['pending_after']} pending")
                r.xgroup_destroy(INTENTS, group)
                runs.append(run_)
                log(f"stale COUNT={count} run {i}: {run_['rate']:,.0f}/s wall {run_['wall_sec']:.2f}s "
                    f"rss {run_['peak_rss_mb']} MB")
            b = best(runs)
            fl = figures[f"floor_count_{count}"]
            figures[f"stale_drain_count_{count}"] = {
                "kind": "stale", "unit": "intents/s", "value": round(b["rate"]), "count": count, "n": p["stale_n"],
                "wall_sec": b["wall_sec"], "floor": f"floor_count_{count}", "floor_value": fl["value"],
                "ratio": round(b["rate"] / fl["value"], 3), "target": TARGETS["stale"] if count == 50 else None,
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": [round(x["rate"]) for x in runs],
                "kept": f"best of {len(runs)}", **cpu_fields(b), "detail": b}
        r.flushall()

        # 3. fresh path; first the same Redis work without the service (informational, a second denominator)
        contract = []
        for i in range(p["fresh_reps"]):
            fresh_batch(server, INTENTS, p["fresh_n"], f"contract-{i}")
            contract.append(contract_floor_once(server.client(), p["fresh_n"]))
        rates = [x["rate"] for x in contract]
        figures["floor_fresh_work_count_50"] = {
            "kind": "floor", "unit": "intents/s", "value": round(max(rates)), "count": 50, "n": p["fresh_n"],
            "runs": [round(x) for x in rates], "kept": f"best of {len(rates)}",
            # what Redis itself must spend per executed intent on this contract's writes, whoever sends them
            "redis_cpu_us_per_intent": max(contract, key=lambda x: x["rate"])["redis_cpu_us_per_intent"],
            "what": "the fresh path's Redis scripts alone from one plain redis-py loop (no parsing, validation, "
                    "rendering or thread pool)"}
        log(f"fresh contract floor COUNT=50: {max(rates):,.0f}/s (runs {', '.join(f'{x:,.0f}' for x in rates)})")
        fl50 = figures["floor_count_50"]
        for conc in (1, 4):
            runs = []
            for i in range(p["fresh_reps"]):
                run_ = exec_run(server, workdir, f"fresh_c{conc}_{i}", p["fresh_n"], EXEC_CONCURRENCY=conc,
                                PAPER_LATENCY_MS=0)
                runs.append(run_)
                log(f"fresh EXEC_CONCURRENCY={conc} run {i}: {run_['rate']:,.0f}/s rss {run_['peak_rss_mb']} MB "
                    f"cpu service {run_['service_cpu_sec']}s redis {run_['redis_cpu_sec']}s")
            b = best(runs)
            figures[f"fresh_exec_c{conc}"] = {
                "kind": "fresh", "unit": "intents/s", "value": round(b["rate"]), "exec_concurrency": conc, "count": 50,
                "n": p["fresh_n"], "wall_sec": b["wall_sec"], "floor": "floor_count_50", "floor_value": fl50["value"],
                "ratio": round(b["rate"] / fl50["value"], 3), "target": TARGETS["fresh"],
                "ratio_to_contract_floor": round(b["rate"] / figures["floor_fresh_work_count_50"]["value"], 3),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": [round(x["rate"]) for x in runs],
                "kept": f"best of {len(runs)}", **cpu_fields(b), "detail": b}

        # 4. I/O-bound
        for conc in (1, 2, 4, 8):
            ideal = conc * 1000 / LATENCY_MS
            n = int(ideal * p["io_sec"])
            runs = []
            for i in range(p["io_reps"]):
                run_ = exec_run(server, workdir, f"io_c{conc}_{i}", n, EXEC_CONCURRENCY=conc,
                                PAPER_LATENCY_MS=LATENCY_MS)
                runs.append(run_)
                log(f"io EXEC_CONCURRENCY={conc} run {i}: {run_['rate']:,.1f}/s of ideal {ideal:.0f}/s")
            b = best(runs)
            figures[f"io_latency{LATENCY_MS}ms_c{conc}"] = {
                "kind": "io", "unit": "intents/s", "value": round(b["rate"], 1), "exec_concurrency": conc,
                "latency_ms": LATENCY_MS, "count": 50, "n": n, "wall_sec": b["wall_sec"], "floor": "ideal C/L",
                "floor_value": ideal, "ratio": round(b["rate"] / ideal, 3), "target": TARGETS["io"],
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs), "runs": [round(x["rate"], 1) for x in runs],
                "kept": f"best of {len(runs)}", **cpu_fields(b), "detail": b}

        # 5. persistence: the same server, appendonly yes, under each appendfsync policy
        figures.update(persistence_runs(server, workdir, p, figures))
    finally:
        server.cleanup()

    rss_max = max(f["peak_rss_mb"] for f in figures.values() if "peak_rss_mb" in f)
    figures["peak_rss_max"] = {"kind": "memory", "unit": "MiB", "value": rss_max, "target": TARGETS["rss_mb"],
                               "while": f"draining {SIZES[size]['stale_n']} stale intents and every other run"}
    for f in figures.values():
        if f.get("target") is None:
            f["met"] = None
        elif f["kind"] == "memory":
            f["met"] = f["value"] < f["target"]
        else:
            f["met"] = f["ratio"] >= f["target"]
    result = {
        "schema": 1, "size": size, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_sec": round(time.time() - started, 1), "machine": machine,
        "loadavg": {"before": load_before, "after": loadavg()},
        "params": {**p, "intent_max_age_sec": MAX_AGE, "stale_age_sec": STALE_AGE, "counts": list(COUNTS),
                   "timing": "from READY=1 on NOTIFY_SOCKET to the counter reaching N (start-up excluded)"},
        "targets": TARGETS, "all_targets_met": all(f["met"] is not False for f in figures.values()),
        "figures": figures, "persistence": persistence_summary(figures),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    return result


def table(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"bench size={result['size']}  cpus={m['cpu_count']}  python {m['python']}  "
             f"redis-server {m['redis_server']}  redis-py {m['redis_py']}  hiredis {m['hiredis']}  "
             f"({result['duration_sec']}s, load {result.get('loadavg', {}).get('before', ['?'])[0]})"
             + disk_note(m.get("redis_dir")),
             f"{'figure':<34}{'value':>14}  {'unit':<10}{'divided by':<18}{'ratio':>7}{'target':>8}  "
             f"{'ok':<4}{'rss MB':>7}{'svc us/i':>10}{'redis us/i':>11}"]
    for name, f in result["figures"].items():
        ratio = f"{f['ratio']:.2f}" if "ratio" in f else ""
        target = "" if f.get("target") is None else (f"<{f['target']:.0f}" if f["kind"] == "memory"
                                                       else f"{f['target']:.2f}")
        ok = {True: "yes", False: "NO", None: ""}[f.get("met")]
        value = f"{f['value']:,.1f}" if isinstance(f["value"], float) else f"{f['value']:,}"
        lines.append(f"{name:<34}{value:>14}  {f['unit']:<10}{f.get('floor', ''):<18}{ratio:>7}{target:>8}  "
                     f"{ok:<4}{f.get('peak_rss_mb', ''):>7}{f.get('service_cpu_us_per_intent', ''):>10}"
                     f"{f.get('redis_cpu_us_per_intent', ''):>11}")
    work = [f"{name} {f['ratio_to_contract_floor']:.2f}" for name, f in result["figures"].items()
            if "ratio_to_contract_floor" in f]
    if work:
        lines.append("fresh path / floor_fresh_work_count_50 (the same Redis work from a bare loop): "
                     + ", ".join(work))
    lines += persistence_lines(result.get("persistence") or {})
    lines.append("all targets met" if result["all_targets_met"] else "SOME TARGETS MISSED")
    return "\n".join(lines)


def disk_note(disk: dict[str, Any] | None) -> str:
    """Where the Redis files (the AOF) were, for the header: a figure measured on tmpfs says so loudly."""
    if not disk:
        return ""
    note = (f"  redis dir {disk['path']}: {disk['fstype']} on {disk['source']}, "
            f"fdatasync {disk['fdatasync_us']['median']:.0f} us")
    return note + ("  (MEMORY-BACKED: the aof figures cost no disk)" if disk.get("memory_backed") else "")


def persistence_lines(summary: dict[str, Any]) -> list[str]:
    """Two lines: each figure with appendonly yes over the same figure with appendonly no, then always / everysec."""
    if not summary:
        return []
    short = {"floor_count_50": "floor", "stale_drain_count_50": "stale drain", "fresh_exec_c1": "fresh c1",
             "fresh_exec_c4": "fresh c4"}
    parts = [f"{short.get(base, base)} " + "/".join(f"{e[pol]['ratio_to_appendonly_no']:.2f}" for pol in AOF_POLICIES)
             for base, e in summary.items()]
    cost = [f"{short.get(base, base)} {100 * (e['always_over_everysec'] - 1):+.0f} %" for base, e in summary.items()]
    return [f"appendonly yes / appendonly no ({' / '.join(AOF_POLICIES)}): " + ", ".join(parts),
            "cost of appendfsync always vs everysec (throughput change): " + ", ".join(cost)]


SCHEMA = None


def main(argv: list[str] | None = None) -> int:
    global SCHEMA
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sizes = ap.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="a first look (about 1.5 minutes)")
    sizes.add_argument("--smoke", action="store_true", help="the test suite's smoke run: every figure once, the "
                       "smallest sizes (figures not worth reading)")
    ap.add_argument("--redis-dir", type=Path, default=None, help="parent of the private Redis's data dir (the AOF); "
                    "default the first of /var/tmp and build/ that is not memory-backed")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results.json, "
                    "bench/out/results-<size>.json with --quick or --smoke)")
    ap.add_argument("--table", type=Path, metavar="RESULTS", help="only print the table of an existing results file")
    args = ap.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    size = "quick" if args.quick else "smoke" if args.smoke else "full"
    out = args.out or (ROOT / "bench" / ("results.json" if size == "full" else f"out/results-{size}.json"))
    from consumer.validation import SchemaValidator, load_schema

    SCHEMA = SchemaValidator(load_schema(CFG.schema_dir / "trade_intent.schema.json"))
    workdir = Path(tempfile.mkdtemp(prefix="quantum-bench-"))
    keep = False
    try:
        result = run(size, out, workdir, args.redis_dir)
    except Exception:
        keep = True
        log(f"failed; service logs kept in {workdir}")
        raise
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(result))
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
