"""The Redis ACL users of the deploy, against a real redis-server loaded with the users.acl the role templates.

The ACL file is rendered from the role's own template and defaults (ansible/roles/quantum_redis), so a rule changed
there is tested here. Each user does its real job with the real programs (the execution service, the publisher
bridge, the proof CLI) without a single ACL denial, and is refused what lies outside its rules.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest
import redis
import yaml

from harness import end_process
from support import (DLQ, GROUP, INTENTS, RESULTS, ROOT, RedisServer, ServiceProcess, intent, stats, wait_until,
                     xadd)

ROLE = ROOT / "ansible" / "roles" / "quantum_redis"
USERS = ("admin", "exec", "engine", "proof")


def render_acl(passwords: dict[str, str]) -> str:
    """users.acl exactly as the role writes it: its template, its defaults, these passwords."""
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values = {k: v for k, v in defaults.items() if k.startswith(("quantum_redis_user_", "quantum_redis_acl_"))}
    values.update({f"quantum_redis_password_{u}": p for u, p in passwords.items()})
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["hash"] = lambda value, algo: hashlib.new(algo, value.encode()).hexdigest()
    return env.from_string((ROLE / "templates" / "users.acl.j2").read_text()).render(**values)


def acl_server(directory: Path, persistent: bool = False) -> dict:
    """A redis-server loaded with the role's users.acl and fresh passwords; each user's URL, name and password."""
    passwords = {u: os.urandom(12).hex() for u in USERS}
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    names = {u: defaults[f"quantum_redis_user_{u}"] for u in USERS}
    path = directory / "users.acl"
    text = render_acl(passwords)
    path.write_text(text)
    server = RedisServer(persistent=persistent, aclfile=path, admin=(names["admin"], passwords["admin"])).start()
    urls = {u: f"redis://{names[u]}:{passwords[u]}@127.0.0.1:{server.port}/0" for u in USERS}
    return {"server": server, "urls": urls, "names": names, "passwords": passwords, "text": text}


@pytest.fixture(scope="module")
def acl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    made = acl_server(tmp_path_factory.mktemp("acl"))
    yield made
    made["server"].cleanup()


@pytest.fixture
def admin(acl: dict) -> Iterator[redis.Redis]:
    client = acl["server"].client()
    client.flushall()
    client.script_flush()
    client.acl_log_reset()
    yield client
    client.close()


def client_of(acl: dict, user: str) -> redis.Redis:
    return redis.Redis.from_url(acl["urls"][user])


def denials(admin: redis.Redis) -> list[dict]:
    """ACL LOG entries: every command or key a user was refused since the log was reset."""
    return [{k: (v.decode() if isinstance(v, bytes) else v) for k, v in e.items()} for e in admin.acl_log(count=100)]


def env_for(acl: dict, user: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": acl["urls"][user], "PYTHONUNBUFFERED": "1", **extra}


def test_no_plaintext_password_and_the_default_user_is_off(acl: dict) -> None:
    text = acl["text"]
    for user, pw in acl["passwords"].items():
        assert pw not in text
        assert "#" + hashlib.sha256(pw.encode()).hexdigest() in text
    lines = text.splitlines()
    assert lines[0].startswith("user default off resetpass ")
    assert all(line.startswith("user ") for line in lines)  # Redis refuses anything else in an ACL file


def test_default_user_is_refused_entirely(acl: dict, admin: redis.Redis) -> None:
    anon = redis.Redis(port=acl["server"].port)
    with pytest.raises(redis.AuthenticationError):
        anon.ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl["server"].port, password="anything").ping()  # AUTH <pw> logs in as default: off
    assert admin.acl_getuser("default")["enabled"] is False


def test_wrong_password_is_an_authentication_error(acl: dict) -> None:
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair"):
        redis.Redis(port=acl["server"].port, username=acl["names"]["exec"], password="wrong").ping()


def test_engine_publishes_with_the_real_bridge_and_nothing_else(acl: dict, admin: redis.Redis) -> None:
    docs = [json.dumps(intent(f"engine-{i:04d}")) for i in range(3)]
    res = subprocess.run([sys.executable, "-m", "consumer.bridge", *docs], cwd=ROOT, env=env_for(acl, "engine"),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert admin.xlen(INTENTS) == 3
    # The lab's stale probe: a bulk of old intents (the bridge cannot read the stream, so ids are not backdated).
    res = subprocess.run([sys.executable, "-m", "consumer.bridge", "--bulk", "20", "--age-sec", "1200",
                          "--prefix", "stale-probe"], cwd=ROOT, env=env_for(acl, "engine"), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert admin.xlen(INTENTS) == 23
    assert denials(admin) == [] or all(d["object"] == "xinfo|stream" for d in denials(admin))

    eng = client_of(acl, "engine")
    admin.xgroup_create(INTENTS, GROUP, id="0")
    admin.set("quantum:idem:engine-0000", "done|x")
    refused = [
        lambda: eng.xreadgroup(GROUP, "c1", {INTENTS: ">"}, count=1),
        lambda: eng.xadd(RESULTS, {"payload": "{}"}),
        lambda: eng.get("quantum:idem:engine-0000"),
        lambda: eng.xrange(INTENTS),
        lambda: eng.xadd(DLQ, {"payload": "x"}),
        lambda: eng.delete(INTENTS),
        lambda: eng.flushall(),
    ]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert admin.xlen(RESULTS) == 0 and admin.xlen(INTENTS) == 23


def test_exec_runs_the_real_service_without_a_denial(acl: dict, admin: redis.Redis) -> None:
    eng = client_of(acl, "engine")
    for i in range(40):
        xadd(eng, intent(i))
    xadd(eng, intent("too-old", age_sec=3600))
    xadd(eng, {"intent_id": "bad"})
    svc = ServiceProcess(acl["urls"]["exec"], PAPER_LATENCY_MS=1, EXEC_CONCURRENCY=2).start()
    try:
        wait_until(lambda: admin.xlen(RESULTS) == 40 and admin.xlen(DLQ) == 1, 30, what="40 results, 1 dead letter")
        # Redis restarted / script cache flushed: redis-py answers NOSCRIPT with SCRIPT LOAD, which must be allowed.
        admin.script_flush()
        for i in range(40, 60):
            xadd(eng, intent(i))
        wait_until(lambda: admin.xlen(RESULTS) == 60, 30, what="60 results after SCRIPT FLUSH")
        wait_until(lambda: int(admin.xpending(INTENTS, GROUP)["pending"]) == 0, 10, what="nothing pending")
    finally:
        rc = svc.stop()
    assert rc == 0, svc.log()
    assert "NOPERM" not in svc.log()
    assert denials(admin) == [], denials(admin)
    counters = stats(admin)
    assert counters["executed"] == 60 and counters["stale"] == 1 and counters["invalid"] == 1
    assert admin.hlen("quantum:paper:duplicate_orders") == 0

    ex = client_of(acl, "exec")
    admin.set("other:key", "1")
    refused = [
        lambda: ex.flushall(),
        lambda: ex.config_get("maxmemory"),
        lambda: ex.keys("*"),
        lambda: ex.get("other:key"),
        lambda: ex.set("other:key", "2"),
        lambda: ex.acl_list(),
        lambda: ex.execute_command("SCRIPT", "FLUSH"),
        lambda: ex.eval("return redis.call('GET', KEYS[1])", 1, "other:key"),
        lambda: ex.execute_command("CLIENT", "KILL", "TYPE", "normal"),
    ]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert admin.get("other:key") == b"1"


def test_proof_reads_with_the_read_only_user_and_never_writes(acl: dict, admin: redis.Redis) -> None:
    eng = client_of(acl, "engine")
    for i in range(10):
        xadd(eng, intent(i))
    svc = ServiceProcess(acl["urls"]["exec"]).start()
    try:
        wait_until(lambda: admin.xlen(RESULTS) == 10, 30, what="10 results")
        admin.acl_log_reset()
        env = env_for(acl, "proof", PROOF_STATE_DIR=str(acl["server"].dir / "proof-state"))
        for args in (["--once", "--sample-sec", "0.3"], ["--json", "--sample-sec", "0"], ["rate"], ["backlog"],
                     ["stream"]):
            res = subprocess.run([sys.executable, "-m", "consumer.proof", *args], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=60)
            assert res.returncode in (0, 1), (args, res.stdout[-1500:], res.stderr[-1500:])
            assert "NOPERM" not in res.stdout + res.stderr
            assert acl["passwords"]["proof"] not in res.stdout + res.stderr
        assert denials(admin) == [], denials(admin)
    finally:
        svc.stop()

    pr = client_of(acl, "proof")
    entry = admin.xrange(INTENTS, count=1)[0][0]
    refused = [
        lambda: pr.xadd(INTENTS, {"payload": "{}"}),
        lambda: pr.xack(INTENTS, GROUP, entry),
        lambda: pr.delete(RESULTS),
        lambda: pr.flushall(),
        lambda: pr.set("quantum:x", "1"),
        lambda: pr.hincrby("quantum:stats:execution", "executed", 1),
        lambda: pr.xreadgroup(GROUP, "proof", {INTENTS: ">"}),  # a read that moves the group: a write
        lambda: pr.get("other:key"),
        lambda: pr.config_set("appendonly", "no"),
    ]
    for call in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert admin.xlen(RESULTS) == 10


def test_a_restarted_redis_keeps_the_users(acl: dict, admin: redis.Redis) -> None:
    """The ACL file is what Redis reads at start: after a restart the same passwords work and default stays off."""
    server: RedisServer = acl["server"]
    server.restart()
    started = time.monotonic()
    assert client_of(acl, "proof").ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port).ping()
    assert time.monotonic() - started < 10


def test_a_kill_9_of_redis_keeps_every_write_of_the_services_scripts(tmp_path: Path) -> None:
    """Redis replays its AOF as the default user: with the role's ACL file every transaction must come back.

    Each script's writes are logged as MULTI/EXEC; Redis 7.0 re-checks ACLs at EXEC while loading, so a default user
    with no rights silently dropped every commit, claim and ack at restart (redis/redis#14541).
    """
    made = acl_server(tmp_path, persistent=True)
    server: RedisServer = made["server"]
    try:
        url = made["urls"]["exec"]
        admin = server.client()
        for i in range(30):
            xadd(admin, intent(i))
        svc = ServiceProcess(url, PAPER_LATENCY_MS=0, EXEC_CONCURRENCY=2).start()
        try:
            wait_until(lambda: admin.xlen(RESULTS) == 30 and int(admin.xpending(INTENTS, GROUP)["pending"]) == 0,
                       30, what="30 results, nothing pending")
        finally:
            assert svc.stop() == 0, svc.log()

        def state() -> dict:
            return {"results": admin.xlen(RESULTS), "pending": int(admin.xpending(INTENTS, GROUP)["pending"]),
                    "done": sum(1 for _ in admin.scan_iter("quantum:idem:*", count=1000)),
                    "orders": sum(1 for _ in admin.scan_iter("quantum:paper:order:*", count=1000)),
                    "executed": stats(admin)["executed"]}

        before = state()
        assert before == {"results": 30, "pending": 0, "done": 30, "orders": 30, "executed": 30}
        admin.close()
        end_process(server.proc, signal.SIGKILL)
        server.start()
        admin = server.client()
        assert state() == before
        assert "NOPERM" not in server.log(), server.log()[-2000:]
    finally:
        server.cleanup()
