"""Redis as the deploy manages it, on a lab host (qred1, 10.213.63.0/30), in the order an operator meets it:

a Redis without ACL and with data -> the first managed deploy takes it over (AOF switched on at runtime first, data
kept, ACL users live, services on their own users) -> configuration and file modes on the host, no plaintext password
-> each user limited -> the proof with the read-only user -> kill -9 of redis-server in the middle of a drain: every
acknowledged intent ends exactly once -> a redeploy restarts nothing -> a changed ACL rule is loaded without a
restart -> a wrong admin password and a missing password stop the deploy in pre-flight, host untouched.

The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from consumer.bridge import bulk_payloads
from consumer.config import Config
from quantum_labkit import REDIS_CREDENTIALS, SECRETS, LabHost, fresh, recap, timed, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1800)]
NAME, IP, GATEWAY = "qred1", "10.213.63.2", "10.213.63.1"
PREMANAGED = 50  # intents in the stream before the first managed deploy
STATE: dict = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    yield from fresh(lambda: LabHost(tmp_path_factory.mktemp("redis"), NAME, IP, GATEWAY))


def deploy(lab: LabHost, *args: str, probes: bool = False) -> subprocess.CompletedProcess[str]:
    """deploy.yml; the proof's stale and backlog probes only where asked (test_lab_deploy covers them), as they
    make up most of a deploy that changes nothing."""
    # The backlog probe wants to see a lag right after loading: 2000 intents drain in 40 s at the lab's 50/s limit,
    # so a proof that starts slowly on a loaded machine still sees them (300 may be gone before it reads).
    extra = {"quantum_proof_backlog_probe_count": 2000} if probes else \
        {"quantum_proof_stale_probe": False, "quantum_proof_backlog_probe": False}
    return timed(lab, "deploy.yml", "-e", json.dumps(extra), *args)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-6000:] + res.stderr[-3000:]
    return re.sub(r"\s+", " ", res.stdout)


def redis_pid(lab: LabHost) -> str:
    return lab.out("systemctl show -p MainPID --value redis-server")


def config(lab: LabHost, name: str) -> str:
    return lab.redis(f"CONFIG GET {name}", user="admin").splitlines()[-1]


def untouched(lab: LabHost) -> dict[str, str]:
    return {**lab.fingerprint(), "redis": redis_pid(lab),
            "redis_files": lab.out("sha256sum /etc/redis/redis.conf /etc/redis/quantum.conf /etc/redis/users.acl"),
            "credentials": lab.out("sha256sum /etc/quantum/redis-*.env")}


def resp(*args: str | bytes) -> bytes:
    """One command in the Redis protocol, for redis-cli --pipe (payloads need no shell quoting)."""
    parts = [a if isinstance(a, bytes) else a.encode() for a in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def test_first_deploy_takes_over_a_redis_without_acl_and_keeps_its_data(lab: LabHost) -> None:
    assert lab.redis("CONFIG GET appendonly", user=None).splitlines() == ["appendonly", "no"]
    # Valid intents an hour old: the service will drop them as stale, which is not an error (invalid ones would be
    # dead letters, and 50 of them against a short run would put the proof's error rate over its threshold).
    stream = Config.from_env({}).intent_stream
    batch = b"".join(resp("XADD", stream, "*", "payload", p)
                     for p in bulk_payloads(PREMANAGED, age_sec=3600, seed=1, prefix="premanaged"))
    batch += resp("SET", "quantum:premanaged:marker", "kept")
    piped = lab.sh("redis-cli --pipe", check=False, stdin=batch)
    assert piped.returncode == 0 and b"errors: 0, replies: 51" in piped.stdout, piped.stdout + piped.stderr
    assert lab.redis("DBSIZE", user=None) == "2"
    res = deploy(lab, probes=True)
    out = ok(res)
    assert "append-only file written at runtime; the restart will load it (no data lost)" in out
    assert "no ACL yet (this deploy takes it over, data kept)" in out
    # Everything that was there before is still there, read through the ACL users.
    assert lab.redis("GET quantum:premanaged:marker") == "kept"
    first = lab.redis("XRANGE quantum:stream:trade.intent - + COUNT 1").splitlines()
    assert '"intent_id":"premanaged-' in first[-1], first  # bulk_payloads writes compact JSON
    assert int(lab.redis("XLEN quantum:stream:trade.intent")) >= PREMANAGED
    # The services run with their own users: the deploy's proof passed; both units active.
    assert lab.out("systemctl is-active quantum-ai-engine quantum-execution redis-server").split() == ["active"] * 3


def test_redis_runs_durable_non_evicting_protected_and_on_loopback_only(lab: LabHost) -> None:
    assert config(lab, "appendonly") == "yes"
    assert config(lab, "appendfsync") == "always"
    assert config(lab, "maxmemory-policy") == "noeviction"
    assert int(config(lab, "maxmemory")) > 0
    assert config(lab, "protected-mode") == "yes"
    assert config(lab, "bind") == "127.0.0.1 -::1"  # one host: nobody else needs Redis
    assert config(lab, "aclfile") == "/etc/redis/users.acl"
    assert lab.out("tail -n 1 /etc/redis/redis.conf") == "include /etc/redis/quantum.conf"
    assert lab.out("grep -c '^include /etc/redis/quantum.conf' /etc/redis/redis.conf") == "1"
    info = lab.redis("INFO persistence", user="admin")
    assert "aof_enabled:1" in info and "aof_last_write_status:ok" in info


def test_files_are_0640_and_no_password_is_in_plaintext_outside_the_credential_files(lab: LabHost) -> None:
    assert lab.out("stat -c '%U:%G %a' /etc/redis/users.acl /etc/redis/quantum.conf").splitlines() == \
        ["root:redis 640"] * 2
    creds = sorted(REDIS_CREDENTIALS.values())
    assert lab.out("stat -c '%n %U:%G %a' " + " ".join(creds)).splitlines() == \
        [f"{c} root:quantum 640" for c in creds]
    assert lab.out("stat -c '%U:%G %a' /etc/quantum/ai-engine.env") == "root:quantum 640"
    for user, holder in (("admin", None), ("exec", REDIS_CREDENTIALS["exec"]),
                         ("engine", REDIS_CREDENTIALS["engine"]), ("proof", REDIS_CREDENTIALS["proof"])):
        secret = (SECRETS / f"redis-{user}").read_text().strip()
        found = lab.sh("grep -rlF -f /dev/stdin /etc/quantum /etc/redis /etc/systemd/system /opt/quantum/ops || true",
                       stdin=secret + "\n").stdout.split()
        assert found == ([holder] if holder else []), (user, found)
    assert lab.out("grep -c '^REDIS_URL' /etc/quantum/ai-engine.env || true") == "0"


def test_default_user_is_refused_and_each_user_is_held_to_its_rules(lab: LabHost) -> None:
    assert "NOAUTH" in lab.redis_cli("PING", user=None, check=False).stdout
    refused = [
        ("proof", "XADD quantum:stream:trade.intent '*' payload x"),
        ("proof", "DEL quantum:stream:execution.result"),
        ("proof", "FLUSHALL"),
        ("engine", "XLEN quantum:stream:execution.result"),
        ("engine", "XREADGROUP GROUP quantum-execution spy COUNT 1 STREAMS quantum:stream:trade.intent '>'"),
        ("engine", "XADD quantum:stream:execution.result '*' payload x"),
        ("exec", "FLUSHALL"),
        ("exec", "CONFIG GET maxmemory"),
        ("exec", "KEYS '*'"),
    ]
    for user, cmd in refused:
        res = lab.redis_cli(cmd, user=user, check=False)
        assert "NOPERM" in res.stdout + res.stderr, (user, cmd, res.stdout, res.stderr)
    assert lab.redis("PING", user="engine") == "PONG"
    assert lab.redis("XPENDING quantum:stream:trade.intent quantum-execution", user="exec").splitlines()[0].isdigit()


def test_the_proof_works_with_the_read_only_user(lab: LabHost) -> None:
    assert "redis://quantum-proof:" in lab.out(f"cat {REDIS_CREDENTIALS['proof']}")
    lab.redis("ACL LOG RESET", user="admin")
    res = lab.sh("/opt/quantum/ops/proof_pipeline.sh --once", check=False, timeout=90)
    assert res.returncode == 0 and "VERDICT: HEALTHY" in res.stdout, res.stdout[-2000:] + res.stderr
    log = lab.redis("ACL LOG 100", user="admin")
    assert "quantum-proof" not in log, log[-2000:]  # not one command or key refused to the proof


FACTS = r"""
import json, os, sys, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
prefix = sys.argv[1]
results, dead = {}, {}
for _, f in r.xrange("quantum:stream:execution.result"):
    i = json.loads(f["payload"]).get("intent_id", "")
    if i.startswith(prefix):
        results[i] = results.get(i, 0) + 1
for _, f in r.xrange("quantum:stream:trade.intent.dlq"):
    if prefix in f.get("payload", ""):
        i = json.loads(f["payload"]).get("intent_id", "")
        dead[i] = dead.get(i, 0) + 1
g = next((g for g in r.xinfo_groups("quantum:stream:trade.intent") if g["name"] == "quantum-execution"), {})
dups = [k for k in r.hgetall("quantum:paper:duplicate_orders") if k.startswith(prefix)]
print(json.dumps({"results": results, "dead": dead, "lag": g.get("lag"), "pending": g.get("pending"),
                  "duplicates": len(dups), "duplicate_ids": dups[:5]}))
"""


def facts(lab: LabHost, prefix: str) -> dict:
    out = lab.sh(f"cd /opt/quantum/current && set -a && . {REDIS_CREDENTIALS['proof']} && set +a && "
                 f"venv/bin/python - {prefix} <<'EOF'\n{FACTS}\nEOF", timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_kill_9_of_redis_mid_drain_loses_no_acknowledged_intent_and_executes_none_twice(lab: LabHost) -> None:
    n = 3000
    prefix = f"kill9-{int(time.time())}"
    load = lab.sh("cd /opt/quantum/current && set -a && . /etc/quantum/ai-engine.env && "
                  f". {REDIS_CREDENTIALS['engine']} && set +a && "
                  f"venv/bin/python -m consumer.bridge --bulk {n} --prefix {prefix}", timeout=120)
    assert f"loaded {n} intents" in load.stdout  # every XADD acknowledged
    # The rate limit (50/s in the lab) makes the drain last about a minute: kill Redis once it is well under way.
    wait_until(lambda: sum(facts(lab, prefix)["results"].values()) >= 200, 60, interval=1, what="the drain to start")
    pid = redis_pid(lab)
    restarts = lab.out("systemctl show -p NRestarts --value redis-server")
    lab.out(f"kill -9 {pid}")
    wait_until(lambda: redis_pid(lab) not in ("0", pid) and lab.redis_cli("PING", check=False).stdout.strip() == "PONG",
               60, interval=0.5, what="systemd to restart redis-server")
    assert int(lab.out("systemctl show -p NRestarts --value redis-server")) == int(restarts) + 1

    def done() -> dict | None:
        f = facts(lab, prefix)
        return f if f["lag"] == 0 and f["pending"] == 0 and len(f["results"]) + len(f["dead"]) >= n else None

    final = wait_until(done, 300, interval=2, what=f"all {n} intents to be done after the kill")
    outcomes = {i: final["results"].get(i, 0) + final["dead"].get(i, 0) for i in set(final["results"]) | set(final["dead"])}
    assert len(outcomes) == n, f"{n - len(outcomes)} acknowledged intents have no outcome"
    assert set(outcomes.values()) == {1}, {i: c for i, c in outcomes.items() if c != 1}
    journal = lab.sh("journalctl --no-pager -o short-precise -u quantum-execution -u redis-server --since '-10min' "
                     "| grep -Ei 'error|unavailable|reconcil|reclaim|started|stopped|exit|redis' | tail -n 60",
                     check=False).stdout
    if final["duplicates"]:
        print(f"venue duplicates {final['duplicate_ids']}; journal since the kill:\n{journal}")
    assert final["duplicates"] == 0
    assert lab.out("systemctl is-active quantum-execution quantum-ai-engine").split() == ["active", "active"]
    res = lab.sh("/opt/quantum/ops/proof_pipeline.sh --once", check=False, timeout=90)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    print(f"kill -9 mid-drain: {len(final['results'])} results, {len(final['dead'])} dead letters, 0 duplicates")


def test_a_redeploy_with_nothing_changed_restarts_nothing(lab: LabHost) -> None:
    before = untouched(lab)
    res = deploy(lab, "--skip-tags", "molecule-idempotence-notest")
    ok(res)
    assert "RUNNING HANDLER [quantum_redis" not in res.stdout
    assert untouched(lab) == before
    print("recap", recap(res.stdout, NAME))


def test_a_changed_acl_rule_is_loaded_without_a_restart(lab: LabHost) -> None:
    assert "NOPERM" in lab.redis_cli("DBSIZE", user="proof", check=False).stdout
    pid = redis_pid(lab)
    defaults = yaml.safe_load((Path(__file__).resolve().parents[2] / "ansible/roles/quantum_redis/defaults/main.yml")
                              .read_text())
    rule = defaults["quantum_redis_acl_proof"] + " +dbsize"  # the role's rule for the proof, plus DBSIZE
    res = deploy(lab, "--skip-tags", "molecule-idempotence-notest", "-e", json.dumps({"quantum_redis_acl_proof": rule}))
    out = ok(res)
    assert "RUNNING HANDLER [quantum_redis : Load the Redis ACL file]" in out
    assert "RUNNING HANDLER [quantum_redis : Restart Redis]" not in out
    assert redis_pid(lab) == pid
    assert lab.redis("DBSIZE", user="proof").isdigit()


def test_a_wrong_admin_password_stops_the_deploy_in_preflight_and_touches_nothing(lab: LabHost) -> None:
    before = untouched(lab)
    res = deploy(lab, "-e", json.dumps({"quantum_redis_password_admin": "not-the-admin-password"}))
    assert res.returncode != 0
    out = re.sub(r"\s+", " ", res.stdout)
    assert (f"Redis on {NAME} refused AUTH for quantum-admin (WRONGPASS): the vault password "
            "quantum_redis_password_admin does not match") in out, out[-3000:]
    assert "not-the-admin-password" not in res.stdout + res.stderr
    assert "PLAY [Redis]" not in res.stdout
    assert untouched(lab) == before


def test_a_missing_password_stops_the_deploy_naming_it(lab: LabHost) -> None:
    variable = "quantum_redis_password_engine"
    before = untouched(lab)
    res = deploy(lab, "-e", json.dumps({variable: ""}))
    assert res.returncode != 0
    out = re.sub(r"\s+", " ", res.stdout)
    assert f"{variable} is missing, empty" in out, out[-3000:]
    assert "Nothing was deployed" in out
    assert untouched(lab) == before
