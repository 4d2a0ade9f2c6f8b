"""The proof / ops CLI against a real redis-server: verdicts, exit codes, the JSON schema and the live drain view.

Every situation is built by writing to the streams directly (XADD, XGROUP CREATE, XREADGROUP, XACK, HSET), the way
the service would leave them, and the CLI runs as operators run it: `python -m consumer.proof` in a subprocess.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import redis
from jsonschema import Draft202012Validator
from support import DLQ, GROUP, INTENTS, RESULTS, STATS, ServiceProcess, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "proof_report.schema.json").read_text())
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def proof_redis(redis_server) -> str:
    """URL of the session's redis-server (tests/conftest.py); the `r` fixture below flushes it."""
    return redis_server.url


@pytest.fixture
def r(proof_redis: str) -> Iterator[redis.Redis]:
    """A client on an empty database."""
    client = redis.Redis.from_url(proof_redis, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def env(proof_redis: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: the test Redis and a private snapshot dir."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("PROOF_", "INTENT_", "RESULT_", "DLQ_", "CONSUMER_"))}
    e.update(REDIS_URL=proof_redis, PROOF_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1")
    return e


def proof(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "consumer.proof", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def proof_json(env: dict[str, str], *args: str) -> tuple[int, dict]:
    res = proof(env, "--json", *args)
    assert res.stdout.strip(), res.stderr
    report = json.loads(res.stdout)
    Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER).validate(report)
    return res.returncode, report


def verdict(res: subprocess.CompletedProcess[str]) -> str:
    lines = [x for x in res.stdout.splitlines() if x.startswith("VERDICT:")]
    assert len(lines) == 1, res.stdout + res.stderr
    return lines[0]


def add_intents(r: redis.Redis, n: int, stream: str = INTENTS) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"payload": json.dumps({"intent_id": f"intent-{i:08d}"})})
    pipe.execute()


def create_group(r: redis.Redis, stream: str = INTENTS, group: str = GROUP) -> None:
    r.xgroup_create(stream, group, id="0", mkstream=True)


class Drainer(threading.Thread):
    """A stand-in consumer: XREADGROUP a batch, write a result per entry, XACK, count — at a bounded pace."""

    def __init__(self, url: str, count: int = 50, pause: float = 0.02, fail_every: int = 0, deadline: float = 60):
        super().__init__(daemon=True)
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.count, self.pause, self.fail_every = count, pause, fail_every
        self.stop_at = time.monotonic() + deadline
        self.stopped = threading.Event()
        self.done = 0

    def run(self) -> None:
        while not self.stopped.is_set() and time.monotonic() < self.stop_at:
            rows = self.r.xreadgroup(GROUP, "drainer-1", {INTENTS: ">"}, count=self.count, block=50)
            entries = rows[0][1] if rows else []
            if entries:
                pipe = self.r.pipeline(transaction=True)
                failed = 0
                for entry_id, _ in entries:
                    self.done += 1
                    is_failed = bool(self.fail_every) and self.done % self.fail_every == 0
                    failed += is_failed
                    pipe.xadd(RESULTS, {"payload": json.dumps({"source": entry_id, "failed": is_failed})})
                pipe.xack(INTENTS, GROUP, *[e for e, _ in entries])
                pipe.hincrby(STATS, "consumed", len(entries))
                pipe.hincrby(STATS, "executed", len(entries))
                if failed:
                    pipe.hincrby(STATS, "failed", failed)
                pipe.execute()
            time.sleep(self.pause)

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


def drain_all(r: redis.Redis) -> int:
    """Read and ack everything, counting it as consumed and executed (a service that finished its work)."""
    total = 0
    while True:
        rows = r.xreadgroup(GROUP, "worker-a", {INTENTS: ">"}, count=500)
        entries = rows[0][1] if rows else []
        if not entries:
            return total
        r.xack(INTENTS, GROUP, *[e for e, _ in entries])
        for e, _ in entries:
            r.xadd(RESULTS, {"payload": json.dumps({"source": e})})
        r.hincrby(STATS, "consumed", len(entries))
        r.hincrby(STATS, "executed", len(entries))
        total += len(entries)


# --- verdicts and exit codes ------------------------------------------------------------------------------------


def test_the_error_rate_tallies_are_closed_shapes() -> None:
    """Like every section, the tallies reject keys the schema does not name (a change of shape is deliberate)."""
    section = Draft202012Validator({"$defs": SCHEMA["$defs"], **SCHEMA["properties"]["error_rate"]})
    good = {"definition": "d", "max": 0.05, "min_sample": 20, "total": {"rate": 0.1, "errors": 1, "consumed": 10},
            "window": {"rate": 0.5, "errors": 1, "consumed": 2, "sec": 4.0, "source": "sample"},
            "value": 0.1, "basis": "total"}
    assert section.is_valid(good)
    assert section.is_valid({**good, "window": None})
    assert not section.is_valid({**good, "total": {**good["total"], "sec": 4.0}})
    assert not section.is_valid({**good, "window": {**good["window"], "window_sec": 4.0}})
    assert not section.is_valid({**good, "window": {k: v for k, v in good["window"].items() if k != "source"}})


def test_unreachable_redis_is_exit_2_with_one_line_and_no_traceback(env: dict[str, str]) -> None:
    env = dict(env, REDIS_URL=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    for args in (["--once"], ["--json"], ["--watch", "--iterations", "1"], ["backlog"], ["rate", "--json"]):
        res = proof(env, *args)
        assert res.returncode == 2, (args, res)
        assert res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "Redis unreachable at redis://:***@127.0.0.1:" in lines[0], res.stderr
        assert "s3cret" not in res.stderr and "Traceback" not in res.stderr


def test_healthy_when_everything_is_done(r: redis.Redis, env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 40)
    assert drain_all(r) == 40
    res = proof(env, "--once", "--sample-sec", "0.3")
    assert res.returncode == 0, res.stdout + res.stderr
    assert verdict(res) == "VERDICT: HEALTHY"
    out = res.stdout
    assert "lag 0  pending 0" in out and "consumer worker-a  pending 0" in out
    assert "entries-added 40" in out and "consumed 40" in out and "systemd: not present" in out
    assert "0.00% by total" in out  # 40 consumed, no errors; window empty -> cumulative


def test_healthy_while_a_backlog_drains(proof_redis: str, r: redis.Redis, env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 3000)
    drainer = Drainer(proof_redis, count=20, pause=0.05)
    drainer.start()
    try:
        wait_until(lambda: drainer.done > 0, 10, what="the drainer to start")
        code, rep = proof_json(env, "--sample-sec", "0.5")
    finally:
        drainer.stop()
    assert code == 0, rep["health"]
    assert rep["result_stream"]["advancing"] is True and rep["movement"]["results_added"] > 0
    assert rep["movement"]["read_per_sec"] > 0 and rep["drain"]["eta_sec"] > 0 and rep["drain"]["net_per_sec"] > 0
    assert rep["group"]["lag"] > 0
    assert {c["name"]: c["ok"] for c in rep["health"]["checks"]}["progress"] is True


def test_unhealthy_when_work_waits_and_nothing_moves(r: redis.Redis, env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 30)
    r.xreadgroup(GROUP, "crashed-consumer", {INTENTS: ">"}, count=5)  # 5 pending that nobody acks
    res = proof(env, "--once", "--sample-sec", "0.5")
    assert res.returncode == 1
    assert verdict(res).startswith("VERDICT: UNHEALTHY: stalled: lag 25, pending 5")
    assert "consumer crashed-consumer  pending 5" in res.stdout


def test_unhealthy_when_the_group_or_stream_is_missing(r: redis.Redis, env: dict[str, str]) -> None:
    res = proof(env, "--sample-sec", "0")
    assert res.returncode == 1 and "intent stream quantum:stream:trade.intent does not exist" in verdict(res)
    add_intents(r, 3)
    res = proof(env, "--sample-sec", "0.2")
    assert res.returncode == 1 and "group quantum-execution missing on quantum:stream:trade.intent" in verdict(res)


def test_error_rate_threshold_uses_the_window_then_the_total(r: redis.Redis, env: dict[str, str]) -> None:
    """Cumulative 10 % fails; then a previous-run window with 20 % fails; then a clean window passes again."""
    create_group(r)
    r.hset(STATS, mapping={"consumed": 100, "executed": 95, "failed": 6, "dead_lettered": 4, "invalid": 4})
    res = proof(env, "--sample-sec", "0.2")
    assert res.returncode == 1
    assert "error rate 10.00% (total) vs max 5.00% [(failed + dead_lettered) / consumed]" in verdict(res)

    r.hincrby(STATS, "consumed", 100)
    r.hincrby(STATS, "failed", 20)
    code, rep = proof_json(env, "--sample-sec", "0.2")
    er, w = rep["error_rate"], rep["error_rate"]["window"]
    assert code == 1 and er["basis"] == "window" and w["source"] == "previous_run"
    assert (w["rate"], w["errors"], w["consumed"]) == (0.2, 20, 100) and w["sec"] > 0

    r.hincrby(STATS, "consumed", 300)  # a clean window: 0 / 300, though the total is 30 / 500 = 6 %
    code, rep = proof_json(env, "--sample-sec", "0.2")
    er = rep["error_rate"]
    assert er["total"] == {"rate": 0.06, "errors": 30, "consumed": 500} and er["value"] == 0.0
    assert code == 0 and rep["health"]["verdict"] == "HEALTHY"

    res = proof(env, "--sample-sec", "0.2", "--no-state", "--error-rate-max", "0.07")
    assert res.returncode == 0, res.stdout  # the threshold is a flag (and PROOF_ERROR_RATE_MAX)


def test_json_matches_the_schema_in_every_situation(proof_redis: str, r: redis.Redis, env: dict[str, str]) -> None:
    code, rep = proof_json(env, "--sample-sec", "0")  # nothing exists at all
    assert code == 1 and rep["movement"] is None and rep["movement_basis"] == "none"
    create_group(r)
    add_intents(r, 500)
    r.xadd(DLQ, {"payload": b"\xff\xfe not json", "reason": "payload is not valid JSON", "source_id": "1-0"})
    r.set("quantum:rate:orders:99", 3, ex=10)
    code, rep = proof_json(env, "--sample-sec", "0.2")
    assert code == 1 and rep["health"]["reasons"][0].startswith("stalled")
    drainer = Drainer(proof_redis, count=10, pause=0.02, fail_every=3)
    drainer.start()
    try:
        wait_until(lambda: drainer.done > 30, 10, what="the drainer to consume")
        code, rep = proof_json(env, "--sample-sec", "0.3", "--cpu-pid", str(os.getpid()))
    finally:
        drainer.stop()
    assert code == 1 and "error rate" in rep["health"]["reasons"][0]
    assert rep["cpu"][f"pid:{os.getpid()}"]["source"] == "proc"
    assert rep["previous_run"] is not None and rep["previous_run"]["age_sec"] > 0


def test_dead_letters_limiters_and_consumers_are_shown(r: redis.Redis, env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 10)
    r.xreadgroup(GROUP, "host-a-1", {INTENTS: ">"}, count=3)
    for i in range(7):
        r.xadd(DLQ, {"payload": "{}", "reason": f"qty: must be > 0 (case {i})", "source_id": f"{i}-0"})
    window = int(time.time()) // 30  # RATE_LIMIT_WINDOW_SEC=30 in env below: the current window's index
    r.set(f"quantum:rate:orders:{window}", 17, ex=60)
    r.set("quantum:rate:orders:1001", 2)  # no TTL: a limiter window that never resets
    env = {**env, "RATE_LIMIT_WINDOW_SEC": "30"}
    res = proof(env, "--once", "--sample-sec", "0.2")
    out = res.stdout
    assert "length 7" in out and "qty: must be > 0 (case 6)" in out and "(case 1)" not in out  # newest 5 only
    assert re.search(rf"quantum:rate:orders:{window}  count 17  ttl (5[6-9]|60)s  resets \d\d:\d\d:\d\d", out), out
    assert "quantum:rate:orders:1001  count 2  NO TTL" in out
    assert "note: rate limiter quantum:rate:orders:1001 has no TTL" in out
    assert "consumer host-a-1  pending 3  idle" in out

    res = proof(env, "rate", "--json")
    rl = json.loads(res.stdout)["rate_limiters"]
    assert res.returncode == 0 and rl["total"] == 2
    k = next(x for x in rl["keys"] if x["key"].endswith(f":{window}"))
    assert k["count"] == 17 and 55 < k["ttl_sec"] <= 60
    assert k["resets_at"] == (window + 1) * 30, "the window resets when it ends, not when its key expires"


def test_every_consumer_is_listed_with_its_host_and_liveness(proof_redis: str, r: redis.Redis,
                                                              env: dict[str, str]) -> None:
    """Two real services (default names `<hostname>-<pid>`) fed a trickle are live on this host; a consumer that read
    and went quiet turns NOT LIVE once idle past PROOF_CONSUMER_LIVE_MS; a name of another shape has no host.

    Redis 7.0 touches a consumer only when a read returns entries (a read blocked on an empty stream leaves its idle
    time growing), so the live services are fed one entry every 50 ms, as a site under traffic feeds them."""
    create_group(r)
    add_intents(r, 5)
    r.xreadgroup(GROUP, "qfx9-4242", {INTENTS: ">"}, count=2)  # a consumer on another host that went quiet
    r.xreadgroup(GROUP, "custom_name", {INTENTS: ">"}, count=1)
    env = {**env, "PROOF_CONSUMER_LIVE_MS": "1500"}
    services = [ServiceProcess(proof_redis, XREADGROUP_BLOCK_MS="200").start() for _ in range(2)]
    pids = [svc.pid for svc in services]
    stop = threading.Event()

    def trickle() -> None:
        feeder = redis.Redis.from_url(proof_redis)
        while not stop.wait(0.05):
            feeder.xadd(INTENTS, {"payload": "{}"})  # invalid: dead-lettered, never executed

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        def report() -> dict:
            return proof_json(env, "--sample-sec", "0")[1]

        wait_until(lambda: not next(c for c in report()["consumers"] if c["name"] == "qfx9-4242")["live"], 20,
                   what="the quiet consumer to turn not live")
        rep = report()
        res = proof(env, "backlog", "--sample-sec", "0")
    finally:
        stop.set()
        feeder.join()
        for svc in services:
            svc.stop()
    by_name = {c["name"]: c for c in rep["consumers"]}
    host = socket.gethostname()
    for pid in pids:
        c = by_name[f"{host}-{pid}"]
        assert c["host"] == host and c["live"] and c["idle_ms"] < 1500, c
    assert by_name["qfx9-4242"]["host"] == "qfx9" and by_name["qfx9-4242"]["pending"] == 2
    assert by_name["custom_name"]["host"] is None
    assert rep["settings"]["consumer_live_ms"] == 1500
    assert f"consumers 4 (2 live on {host})" in res.stdout, res.stdout
    assert f"consumer {host}-{pids[0]}  pending 0  idle" in res.stdout
    assert re.search(r"consumer qfx9-4242  pending 2  idle \S+  host qfx9  NOT LIVE", res.stdout), res.stdout


def test_stream_names_come_from_the_environment(r: redis.Redis, env: dict[str, str]) -> None:
    env = dict(env, INTENT_STREAM="t:in", RESULT_STREAM="t:out", DLQ_STREAM="t:dlq", CONSUMER_GROUP="g2")
    create_group(r, "t:in", "g2")
    r.xadd("t:in", {"payload": "{}"})
    r.xadd("t:dlq", {"payload": "{}", "reason": "custom dlq", "source_id": "1-0"})
    code, rep = proof_json(env, "--sample-sec", "0.2")
    assert rep["group"]["name"] == "g2" and rep["group"]["lag"] == 1 and rep["dlq"]["newest"][0]["reason"] == "custom dlq"
    assert rep["result_stream"]["key"] == "t:out" and code == 1  # one intent waiting, nobody reading


def test_section_commands_print_their_block_and_exit_by_its_checks(r: redis.Redis, env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 5)
    r.hset(STATS, mapping={"consumed": 10, "failed": 10})  # errors do not concern `backlog` / `stream`
    for cmd in ("stream", "backlog"):
        res = proof(env, cmd, "--sample-sec", "0.2")
        assert res.returncode == 1 and "stalled: lag 5" in verdict(res), res.stdout
    drain_all(r)
    res = proof(env, "backlog", "--sample-sec", "0.2")
    assert res.returncode == 0 and "lag 0  pending 0" in res.stdout and "counters" not in res.stdout
    res = proof(env, "stream", "--sample-sec", "0.2", "--json")
    data = json.loads(res.stdout)
    assert res.returncode == 0 and data["healthy"] is True and data["result_stream"]["entries_added"] == 5
    res = proof(env, "units")
    assert res.returncode == 0 and "systemd: not present" in res.stdout
    assert proof(env, "--once").returncode == 1  # the full verdict does include the 100 % error rate


def test_stale_drop_count_from_a_log(tmp_path: Path, env: dict[str, str]) -> None:
    log = tmp_path / "execution.log"
    log.write_text(
        "P0.D.5 Config: INTENT_MAX_AGE_SEC=600, XREADGROUP_COUNT=10, EXEC_CONCURRENCY=1\n"
        "STALE_INTENT_DROP intent_id=a1 age_sec=700 (exceeds 600s TTL)\n"
        "STALE_INTENT_DROP intent_id=a2 age_sec=800 (exceeds 600s TTL) suppressed_since_last=41\n"
        "intent_dead_lettered entry_id=1-0 reason='x'\n"
    )
    res = proof(env, "stale-drops", "--log-file", str(log))
    assert res.returncode == 0
    assert "2 STALE_INTENT_DROP line(s)" in res.stdout and "41 more drop(s)" in res.stdout
    data = json.loads(proof(env, "stale-drops", "--log-file", str(log), "--json").stdout)
    assert data == {"present": True, "source": str(log), "lines": 2, "suppressed": 41, "drops_logged": 43}
    res = proof(env, "stale-drops")  # this machine has no systemd as PID 1
    assert res.returncode == 0 and "journal not present" in res.stdout


def test_usage_errors_are_exit_64_never_2(env: dict[str, str]) -> None:
    assert proof(env, "--bogus").returncode == 64
    assert proof(env, "--sample-sec", "-1").returncode == 64
    res = proof(dict(env, PROOF_ERROR_RATE_MAX="lots"), "--once")
    assert res.returncode == 64 and "PROOF_ERROR_RATE_MAX" in res.stderr


def test_cpu_of_a_busy_process_is_measured_from_proc(r: redis.Redis, env: dict[str, str]) -> None:
    burner = subprocess.Popen([sys.executable, "-c", "import time\nend=time.time()+30\nwhile time.time()<end: pass"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        create_group(r)
        code, rep = proof_json(env, "--sample-sec", "1", "--cpu-pid", str(burner.pid), "--cpu-pid", str(idle.pid))
    finally:
        burner.kill(), idle.kill(), burner.wait(), idle.wait()
    assert rep["cpu"][f"pid:{burner.pid}"]["percent"] > 40
    assert rep["cpu"][f"pid:{idle.pid}"]["percent"] < 10


# --- --watch ----------------------------------------------------------------------------------------------------


def read_pty(fd: int, sink: list[bytes], stop: threading.Event) -> None:
    while not stop.is_set():
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                return
            if not data:
                return
            sink.append(data)


def frames_of(raw: bytes) -> list[str]:
    """Split the terminal output into frames at the cursor-home sequence and strip the ANSI codes."""
    return [ANSI.sub("", f) for f in raw.decode(errors="replace").split("\x1b[H") if "backlog" in f]


def test_watch_shows_a_real_backlog_draining_in_a_terminal(proof_redis: str, r: redis.Redis,
                                                           env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 4000)
    master, slave = pty.openpty()
    os.set_blocking(master, True)
    # Started with SIGINT ignored, as a shell without job control starts a background job (and as this test runs
    # under `pytest ... &`): Ctrl-C must end the watch whatever disposition it inherited.
    proc = subprocess.Popen([sys.executable, "-m", "consumer.proof", "--watch", "--interval", "0.2",
                             "--rate-window", "2"], cwd=ROOT, env=dict(env, COLUMNS="110", LINES="30"),
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    os.close(slave)
    chunks: list[bytes] = []
    stop = threading.Event()
    reader = threading.Thread(target=read_pty, args=(master, chunks, stop), daemon=True)
    reader.start()
    drainer = Drainer(proof_redis, count=25, pause=0.02)
    try:
        wait_until(lambda: len(frames_of(b"".join(chunks))) >= 2, 15, what="the first frames (full backlog)")
        drainer.start()
        wait_until(lambda: any("100.0%" in f and "drained" in f for f in frames_of(b"".join(chunks))), 60,
                   what="a frame showing the backlog drained")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(10) == 0
    finally:
        drainer.stop()
        if proc.poll() is None:
            proc.kill()
        stop.set()
        reader.join(5)
        os.close(master)
    raw = b"".join(chunks)
    frames = frames_of(raw)
    pcts = [float(m.group(1)) for f in frames if (m := re.search(r"\]\s+([\d.]+)%", f))]
    assert pcts[0] == 0.0 and pcts[-1] == 100.0
    assert any(0 < p < 100 for p in pcts), pcts  # it was seen mid-drain, not only before and after
    assert pcts == sorted(pcts), pcts  # no new intents arrive: progress never goes back
    mid = next(f for f in frames if re.search(r"\]\s+([1-9]\d?\.\d)%", f))
    assert re.search(r"read [\d,.]+/s", mid) and re.search(r"ETA \d", mid) and "of 4,000" in mid
    assert "█" in mid and "░" in mid
    assert raw.rstrip().endswith(b"\x1b[?25h")  # the cursor is given back after Ctrl-C
    assert b"Traceback" not in raw


def test_watch_on_a_pipe_logs_one_line_per_tick_until_drained(proof_redis: str, r: redis.Redis,
                                                              env: dict[str, str]) -> None:
    create_group(r)
    add_intents(r, 600)
    drainer = Drainer(proof_redis, count=10, pause=0.05)
    drainer.start()
    try:
        res = proof(env, "--watch", "--interval", "0.2", "--until-drained", timeout=60)
    finally:
        drainer.stop()
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0 and "\x1b[" not in res.stdout
    assert len(lines) >= 3 and all(" backlog " in x for x in lines)
    assert lines[-1].split(" backlog ")[1].startswith("0 (100.0% drained")


# --- against the real service -------------------------------------------------------------------------------------


def bridge(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "-m", "consumer.bridge", *args], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)


def test_verdicts_follow_the_real_service(proof_redis: str, r: redis.Redis, env: dict[str, str]) -> None:
    """Backlog drained by `python -m consumer` → HEALTHY; executor failing → UNHEALTHY; service killed → stalled."""
    bridge(env, "--bulk", "20000", "--age-sec", "3600", "--prefix", "old")
    bridge(env, "--bulk", "400", "--age-sec", "0", "--prefix", "new")
    svc = ServiceProcess(proof_redis, XREADGROUP_COUNT="50").start()
    try:
        res = proof(env, "--watch", "--interval", "0.2", "--until-drained", timeout=90)
        assert res.returncode == 0 and "(100.0% drained" in res.stdout.splitlines()[-1]
        code, rep = proof_json(env, "--sample-sec", "0.5")
        assert code == 0, rep["health"]
        assert rep["counters"]["values"]["stale"] == 20000 and rep["result_stream"]["entries_added"] == 400
    finally:
        svc.stop()

    bridge(env, "--bulk", "400", "--age-sec", "0", "--prefix", "bad")
    svc = ServiceProcess(proof_redis, PAPER_FAIL_RATE="0.5").start()
    try:
        wait_until(lambda: r.xinfo_groups(INTENTS)[0]["lag"] == 0 and r.xpending(INTENTS, GROUP)["pending"] == 0,
                   60, what="the failing batch to drain")
        res = proof(env, "--once", "--sample-sec", "0.3")
    finally:
        svc.stop()
    assert res.returncode == 1 and "error rate" in verdict(res) and "(window)" in verdict(res), res.stdout

    bridge(env, "--bulk", "3000", "--age-sec", "0", "--prefix", "slow")
    svc = ServiceProcess(proof_redis, PAPER_LATENCY_MS="20").start()
    wait_until(lambda: int(r.hget(STATS, "executed") or 0) >= 820, 60, what="some slow intents executed")
    svc.kill9()
    res = proof(env, "backlog", "--sample-sec", "0.5")
    assert res.returncode == 1 and "stalled" in verdict(res), res.stdout


def test_units_rule_where_systemd_is_present() -> None:
    """The rule itself (this machine has no systemd as PID 1): inactive fails, a unit installed elsewhere is a note."""
    from consumer.proof.health import check_units
    from consumer.proof.sections import Check

    def report(**units: dict) -> dict:
        return {"present": True, "units": {k.replace("_", "-"): v for k, v in units.items()}}

    up = {"load_state": "loaded", "active_state": "active", "sub_state": "running"}
    down = {"load_state": "loaded", "active_state": "failed", "sub_state": "failed"}
    missing = {"load_state": "not-found", "active_state": "inactive", "sub_state": "dead"}
    assert check_units(report(quantum_ai_engine=up, quantum_execution=up)).ok is True
    res = check_units(report(quantum_ai_engine=up, quantum_execution=down))
    assert res.ok is False and res.detail == "unit not active: quantum-execution failed/failed"
    assert check_units(report(quantum_ai_engine=missing, quantum_execution=up)).ok is True
    assert check_units(report(quantum_ai_engine=missing, quantum_execution=missing)).ok is False
    assert check_units({"present": False, "units": {}}) == Check("units", None, "systemd: not present")
