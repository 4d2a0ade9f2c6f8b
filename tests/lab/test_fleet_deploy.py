"""deploy.yml as a rolling update across a fleet of lab hosts, under live traffic, in the order an operator meets it.

One fleet for the module: qtr-r (Redis), qtr-a (AI engine, the bridge publishing at its demo rate), qtr-x1 and qtr-x2
(execution, one consumer group), on the bridge qtrbr0, 10.213.72.0/24; Redis on its own box
(quantum_preflight_exclusive_groups as for production) and CLAIM_IDLE_MS=5000 so that a stopped consumer's entries
are reclaimed within seconds.

bad topology and an execution host that cannot reach Redis (nothing changed anywhere) -> first deploy (every
consumer listed with its host) -> a rolling deploy of a changed release under traffic (0 lost, 0 twice, the group
never without a live consumer, canary first, one release id) -> ramp.yml to phase 2, one execution host at a time
under traffic -> a second batch that fails (rolled back, the roll
stops, the canary keeps the new release) -> an execution host unreachable in the roll (later batches untouched).
The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_labkit import ANSIBLE, Fleet, FleetHost, fresh, timed, wait_until
from support import intent

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(3600)]

SUBNET, BRIDGE = "10.213.72.0/24", "qtrbr0"
REDIS, ENGINE, X1, X2 = "qtr-r", "qtr-a", "qtr-x1", "qtr-x2"
REDIS_IP = "10.213.72.11"
INTENTS, RESULTS, DLQ = "quantum:stream:trade.intent", "quantum:stream:execution.result", "quantum:stream:trade.intent.dlq"
GROUP, DUPLICATES = "quantum-execution", "quantum:paper:duplicate_orders"
SECRETS = Path("/var/lib/quantum-lab/secrets")
EXCLUSIVE = [["quantum_redis", "quantum_execution"], ["quantum_redis", "quantum_ai_engine"]]
EXTRA = {"CLAIM_IDLE_MS": "5000"}
# The lab's stale and backlog probes publish intents of their own and need seconds per host; these tests account for
# every intent of their windows themselves, so the probes are left to the single-host tests. Host variables: the
# lab's group_vars/quantum (which switch them on) take precedence over group variables of the inventory file.
PROBES_OFF = {"quantum_proof_stale_probe": False, "quantum_proof_backlog_probe": False}
QUANTUM_VARS = {"quantum_preflight_exclusive_groups": EXCLUSIVE, "quantum_env_extra": EXTRA}
INTENT_MAX_AGE_SEC = 600
LIVE_MS = 3000  # a consumer that received entries this recently is serving
STATE: dict[str, Any] = {}  # release ids seen so far, shared by the ordered tests


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    yield from fresh(lambda: Fleet(tmp_path_factory.mktemp("fleet"), "qtr", SUBNET, BRIDGE, quantum_vars=QUANTUM_VARS,
                                   host_vars={n: dict(PROBES_OFF) for n in (REDIS, ENGINE, X1, X2)}))


def deploy(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    return timed(fleet, "deploy.yml", *args, timeout=2400)  # a serial roll of four hosts on a loaded 2-core box


def flat(text: str) -> str:
    """Play output with the callback's line folding undone."""
    return re.sub(r"\s+", " ", text)


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-3000:]
    return flat(res.stdout)


def admin() -> redis.Redis:
    """The admin ACL user from the control node (the lab's generated password, never printed)."""
    password = (SECRETS / "redis-admin").read_text().split()[0]
    return redis.Redis(host=REDIS_IP, port=6379, username="quantum-admin", password=password, decode_responses=True,
                       socket_timeout=10, socket_connect_timeout=5)


def fingerprints(fleet: Fleet) -> dict[str, dict[str, str]]:
    return {name: host.fingerprint() for name, host in fleet.hosts.items()}


def execution_ok(host: FleetHost) -> None:
    wait_until(lambda: host.sh("systemctl is-active quantum-execution", check=False).stdout.strip() == "active", 60,
               what=f"quantum-execution active on {host.name}")


def proof_report(host: FleetHost) -> dict[str, Any]:
    res = host.sh("/opt/quantum/ops/proof_pipeline.sh --json --no-state --sample-sec 1", check=False, timeout=90)
    assert res.stdout.strip(), res.stderr
    return json.loads(res.stdout)


def live_consumer_hosts(r: redis.Redis) -> set[str]:
    return {c["name"].rsplit("-", 1)[0] for c in r.xinfo_consumers(INTENTS, GROUP) if c["idle"] < LIVE_MS}


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def settled(r: redis.Redis, upto: str) -> bool:
    """Every entry up to `upto` delivered, nothing pending, no lag (Redis may report a nil lag: then by ids)."""
    g = next(x for x in r.xinfo_groups(INTENTS) if x["name"] == GROUP)
    delivered = id_tuple(g["last-delivered-id"]) >= id_tuple(upto)
    return delivered and g["pending"] == 0 and g["lag"] in (0, None)


class Traffic(threading.Thread):
    """Valid intents at a steady rate from the control node (besides the AI engine's demo), and a watch of the group.

    Redis 7.0 resets a consumer's idle time only when a read returns entries, so a steady flow is what lets idle time
    tell a serving consumer from a gone one even while the AI engine itself restarts.
    """

    def __init__(self, rate: float = 8.0, prefix: str = "roll"):
        super().__init__(daemon=True)
        self.r = admin()
        self.pause, self.prefix = 1 / rate, prefix
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int | None, list[str]]] = []
        self.errors: list[str] = []
        self.sent = 0

    def run(self) -> None:
        n = 0
        while not self.stop_event.wait(self.pause):
            try:
                self.r.xadd(INTENTS, {"payload": json.dumps(intent(f"{self.prefix}-{n:06d}"))})
                self.sent += 1
                n += 1
                rows = self.r.xinfo_consumers(INTENTS, GROUP)
                idle = min((c["idle"] for c in rows), default=None)
                self.samples.append((time.monotonic(), idle, sorted(c["name"] for c in rows if c["idle"] < LIVE_MS)))
            except redis.RedisError as exc:
                self.errors.append(repr(exc))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def stale_on_arrival(entry_id: str, payload: dict[str, Any]) -> bool:
    """An intent already older than INTENT_MAX_AGE_SEC when it was added: acked as stale, with no outcome record."""
    try:
        ts = datetime.fromisoformat(str(payload["timestamp"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return False
    return id_tuple(entry_id)[0] / 1000 - ts > INTENT_MAX_AGE_SEC


def outcomes_of(r: redis.Redis, first_id: str, last_id: str) -> dict[str, int]:
    """For every intent added after first_id up to last_id: how many results and dead letters it ended with.

    Intents stale on arrival (e.g. a stale probe's) are left out: the service drops them by design, without a record.
    """
    entries = r.xrange(INTENTS, f"({first_id}", last_id)
    by_result = Counter(json.loads(f["payload"]).get("intent_id") for _, f in r.xrange(RESULTS, f"({first_id}", "+"))
    by_dlq = Counter(f.get("source_id") for _, f in r.xrange(DLQ, f"({first_id}", "+"))
    out = {}
    for eid, fields in entries:
        try:
            doc = json.loads(fields["payload"])
            iid = doc.get("intent_id")
        except (ValueError, AttributeError):
            doc, iid = {}, None
        if isinstance(doc, dict) and stale_on_arrival(eid, doc):
            continue
        out[iid or eid] = by_result.get(iid, 0) + by_dlq.get(eid, 0)
    return out


def test_bad_topology_fails_before_any_host_is_changed(fleet: Fleet) -> None:
    before = fingerprints(fleet)
    counted = {n: h.logins() for n, h in fleet.hosts.items()}
    fleet.roles["quantum_execution"] = [REDIS, X1, X2]  # Redis would share its box with an execution service
    fleet.write_inventory()
    try:
        res = deploy(fleet)
    finally:
        fleet.roles["quantum_execution"] = [X1, X2]
        fleet.write_inventory()
    counted_after = {n: h.logins() for n, h in fleet.hosts.items()}
    out = flat(res.stdout)
    assert res.returncode != 0
    assert "TOPOLOGY REFUSED: host qtr-r is in both quantum_redis and quantum_execution" in out, res.stdout[-4000:]
    assert "Nothing was deployed" in out
    assert "PLAY [Redis]" not in res.stdout and "TASK [quantum_redis" not in res.stdout
    assert fingerprints(fleet) == before
    # The group check runs on the controller: no host saw a login from this run (only the counting commands').
    assert counted_after == {n: c + 1 for n, c in counted.items()}


def test_an_execution_host_that_cannot_reach_redis_fails_before_any_host_is_changed(fleet: Fleet) -> None:
    before = fingerprints(fleet)
    # The container has no CAP_NET_ADMIN: the route goes into its network namespace from the control node.
    route = ["ip", "netns", "exec", X2, "ip", "route"]
    subprocess.run([*route, "add", "blackhole", f"{REDIS_IP}/32"], check=True)
    try:
        res = deploy(fleet)
    finally:
        subprocess.run([*route, "del", "blackhole", f"{REDIS_IP}/32"], check=True)
    out = flat(res.stdout)
    assert res.returncode != 0
    assert f"TOPOLOGY REFUSED: {X2} cannot reach Redis at {REDIS_IP}:6379" in out, res.stdout[-4000:]
    assert re.search(r"cannot reach Redis at \S+ \((EINVAL|EHOSTUNREACH|ENETUNREACH|ETIMEDOUT)", out), out[-2000:]
    assert f"{X1} reaches {REDIS_IP}:6379" in out  # the other host passed the same check
    assert "PLAY [Redis]" not in res.stdout
    assert fingerprints(fleet) == before
    for host in fleet.hosts.values():
        assert host.sh("test -e /opt/quantum", check=False).returncode != 0, f"{host.name} was touched"


def test_first_deploy_lists_every_consumer_with_its_host(fleet: Fleet) -> None:
    out = ok(deploy(fleet))
    # Redis binds the lab address only in the Redis play: pre-flight saw "refused", which proves the route.
    assert "connection refused, so the route exists" in out
    STATE["r1"] = fleet[X1].current()
    assert {h.current() for h in (fleet[ENGINE], fleet[X1], fleet[X2])} == {STATE["r1"]}
    assert fleet[REDIS].sh("test -e /opt/quantum/current", check=False).returncode != 0, "no release on the Redis box"
    for host in (fleet[X1], fleet[X2]):
        execution_ok(host)
    r = admin()
    wait_until(lambda: live_consumer_hosts(r) >= {X1, X2}, 60, what="both execution hosts consuming")
    rep = proof_report(fleet[X1])
    assert rep["health"]["verdict"] == "HEALTHY", rep["health"]
    hosts = {c["host"] for c in rep["consumers"] if c["live"]}
    assert {X1, X2} <= hosts, rep["consumers"]
    for c in rep["consumers"]:
        assert c["name"].startswith(f"{c['host']}-"), c

    status = ok(fleet.playbook("status.yml"))
    assert status.count("VERDICT:") == 1, "the proof runs once for the whole group"
    assert f"proof on {X1}" in status
    assert re.search(rf"consumer {X2}-\d+ +pending \d+ +idle \S+ +host {X2} +live", status), status[-3000:]


def test_rolling_deploy_under_traffic_loses_nothing_and_doubles_nothing(fleet: Fleet) -> None:
    r = admin()
    assert r.hlen(DUPLICATES) == 0
    first_id = r.xinfo_stream(INTENTS)["last-generated-id"]
    fleet.change_code("second release, rolled under traffic")
    time.sleep(1)  # release ids have a one-second resolution
    traffic = Traffic()
    traffic.start()
    try:
        res = deploy(fleet)
    finally:
        traffic.stop()
    out = ok(res)
    last_id = r.xinfo_stream(INTENTS)["last-generated-id"]
    wait_until(lambda: settled(r, last_id), 90, what="lag and pending back to 0 after the roll")
    # Everything published in the window has been delivered and acked: count the outcomes.
    outcomes = outcomes_of(r, first_id, last_id)
    print(f"window: {len(outcomes)} intents ({traffic.sent} from the test), {len(traffic.samples)} group samples")
    assert len(outcomes) > 50, "the window saw too little traffic to prove anything"
    lost, twice = [k for k, v in outcomes.items() if v == 0], [k for k, v in outcomes.items() if v > 1]
    assert (lost, twice) == ([], []), f"{len(lost)} lost: {lost[:10]}; {len(twice)} with two outcomes: {twice[:10]}"
    assert r.hlen(DUPLICATES) == 0, f"orders sent to the venue twice: {r.hgetall(DUPLICATES)}"
    # The group always had a consumer that received entries within LIVE_MS.
    assert traffic.errors == [], traffic.errors[:3]
    assert len(traffic.samples) > 100
    worst = max(traffic.samples, key=lambda s: s[1] if s[1] is not None else 10**9)
    assert worst[1] is not None and worst[1] < LIVE_MS, f"the group was without a live consumer: {worst}"
    # One release id on every host; the AI engine first, then the canary, then the second batch.
    STATE["r2"] = fleet[X1].current()
    assert STATE["r2"] > STATE["r1"]
    assert {h.current() for h in (fleet[ENGINE], fleet[X1], fleet[X2])} == {STATE["r2"]}
    order = [out.index(s) for s in ("PLAY [Deploy the AI engine]", f"ROLLING {X1} (canary)", f"DEPLOYED on {X1}",
                                     f"ROLLING {X2} to release {STATE['r2']}", f"DEPLOYED on {X2}")]
    assert order == sorted(order), order
    assert f"Release id {STATE['r2']} for every host of this run" in out


def test_ramp_moves_every_execution_host_one_at_a_time_under_traffic(fleet: Fleet) -> None:
    """ramp.yml -e phase=2 on the fleet: qtr-x1 gated, applied and observed before qtr-x2 is touched; the gate and
    the observation read the group's lag and error rate from Redis (the whole group, whichever host asks); traffic
    keeps flowing with a live consumer throughout, nothing lost or doubled."""
    r = admin()
    first_id = r.xinfo_stream(INTENTS)["last-generated-id"]
    traffic = Traffic(prefix="ramp")
    traffic.start()
    try:
        res = fleet.playbook("ramp.yml", "-e", "phase=2", "-e", "quantum_ramp_gate_window_sec=8",
                             "-e", "quantum_ramp_observe_window_sec=10", "-e", "quantum_ramp_warmup_sec=2",
                             "-e", "quantum_ramp_interval_sec=2", timeout=1200)
    finally:
        traffic.stop()
    out = ok(res)
    done = [out.index(f"PHASE 2 APPLIED AND HEALTHY on {h}") for h in (X1, X2)]
    assert done[0] < out.index(f"[{X2}]") < done[1], "qtr-x2 was touched before qtr-x1's phase held"
    for h in (X1, X2):
        env = fleet[h].out("cat /etc/quantum/ai-engine.env")
        assert "XREADGROUP_COUNT=20" in env and "EXEC_CONCURRENCY=1" in env, (h, env)
        assert "XREADGROUP_COUNT=20" in fleet[h].config_line()
    last_id = r.xinfo_stream(INTENTS)["last-generated-id"]
    wait_until(lambda: settled(r, last_id), 90, what="lag and pending back to 0 after the ramp")
    outcomes = outcomes_of(r, first_id, last_id)
    lost, twice = [k for k, v in outcomes.items() if v == 0], [k for k, v in outcomes.items() if v > 1]
    assert (lost, twice) == ([], []), f"{len(lost)} lost, {len(twice)} twice"
    assert r.hlen(DUPLICATES) == 0
    worst = max(traffic.samples, key=lambda s: s[1] if s[1] is not None else 10**9)
    assert worst[1] is not None and worst[1] < LIVE_MS, f"the group was without a live consumer: {worst}"
    print(f"ramp to phase 2 on {X1} then {X2}: {len(outcomes)} intents in the window, worst consumer idle {worst[1]} ms")


def test_a_failing_second_batch_is_rolled_back_and_stops_the_roll(fleet: Fleet) -> None:
    fleet.host_vars[X2] = {**PROBES_OFF, "quantum_env_extra": {**EXTRA, "EXECUTOR": "no_such_module:Venue"}}
    fleet.write_inventory()
    fleet.change_code("third release, the second batch cannot start it")
    time.sleep(1)
    try:
        res = deploy(fleet)
    finally:
        fleet.host_vars[X2] = dict(PROBES_OFF)
        fleet.write_inventory()
    out = flat(res.stdout)
    assert res.returncode != 0
    assert f"DEPLOY FAILED AND WAS ROLLED BACK AUTOMATICALLY on {X2}" in out, res.stdout[-6000:]
    assert f"current -> releases/{STATE['r2']} (serving again)" in out
    assert "quantum-execution did not come up" in out
    r3 = fleet[X1].current()
    assert r3 > STATE["r2"], "the canary keeps the new release"
    assert fleet[X2].current() == STATE["r2"]
    assert r3 not in fleet[X2].releases(), "the failed release is removed from the host that failed"
    assert "EXECUTOR" not in fleet[X2].out("cat /etc/quantum/ai-engine.env")
    execution_ok(fleet[X2])
    r = admin()
    wait_until(lambda: live_consumer_hosts(r) >= {X1, X2}, 60, what="both execution hosts consuming again")
    STATE["r3"] = r3


def test_an_unreachable_execution_host_stops_the_roll_before_later_batches(fleet: Fleet) -> None:
    """qtr-x1 (the canary) is cut off once the roll starts: qtr-x2, in the next batch, is never touched."""
    fleet.change_code("fourth release, its canary is cut off")
    time.sleep(1)
    before_x2 = fleet[X2].fingerprint()
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    proc = subprocess.Popen(["ansible-playbook", "-i", str(fleet.inventory), "deploy.yml"], cwd=ANSIBLE, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    partitioned = False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not partitioned and line.startswith("PLAY [Roll the execution hosts]"):
                fleet.partition(X1)
                partitioned = True
        rc = proc.wait(timeout=2400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        if partitioned:
            fleet.heal(X1)
    out = flat("".join(lines))
    assert partitioned, out[-3000:]
    assert rc != 0
    assert f"fatal: [{X1}]: UNREACHABLE!" in "".join(lines), out[-4000:]
    # The canary is alone in its batch: once it is unreachable no host is left in the play and ansible-playbook ends
    # the run there; with other hosts in its batch, the check before the next batch prints "ROLL STOPPED before ...".
    # Either way the next batch never starts:
    assert f"ROLLING {X2}" not in out, out[-4000:]
    assert fleet[X2].fingerprint() == before_x2, "a host after the unreachable one was touched"
    assert fleet[X2].current() == STATE["r2"]
    # Healed, the next deploy finishes the roll: every host serves the same tree (the AI engine kept the release
    # the stopped run gave it, the others get this run's id for the same tree).
    ok(deploy(fleet))
    assert fleet[X2].current() > STATE["r3"]
    trees = {h.out("cat /opt/quantum/current/.checksum") for h in (fleet[ENGINE], fleet[X1], fleet[X2])}
    assert len(trees) == 1, trees
    for host in (fleet[X1], fleet[X2]):
        execution_ok(host)
    r = admin()
    wait_until(lambda: live_consumer_hosts(r) >= {X1, X2}, 60, what="both execution hosts consuming again")


def test_a_killed_execution_host_mid_drain_loses_nothing_and_doubles_nothing(fleet: Fleet) -> None:
    """SIGKILL of qtr-x2's service, then the whole host stopped, while both hosts drain fresh intents: what it held
    is reclaimed by qtr-x1 (CLAIM_IDLE_MS=5000); every intent ends with one outcome, no order reaches the venue twice.

    The backlog drains at the rate limiter's pace (RATE_LIMIT_MAX 50/s across the group), so the kill lands mid-drain.
    """
    r = admin()
    reclaimed_before = int(r.hget("quantum:stats:execution", "reclaimed") or 0)
    first_id = r.xinfo_stream(INTENTS)["last-generated-id"]
    pipe = r.pipeline(transaction=False)
    for i in range(1500):
        pipe.xadd(INTENTS, {"payload": json.dumps(intent(f"drain-{i:05d}"))})
    pipe.execute()
    last_id = r.xinfo_stream(INTENTS)["last-generated-id"]

    def x2_holds() -> bool:
        return any(c["name"].startswith(f"{X2}-") and c["pending"] > 0 for c in r.xinfo_consumers(INTENTS, GROUP))

    wait_until(x2_holds, 30, interval=0.1, what=f"{X2} holding entries mid-drain")
    held = sum(c["pending"] for c in r.xinfo_consumers(INTENTS, GROUP) if c["name"].startswith(f"{X2}-"))
    done = sum(1 for _, f in r.xrange(RESULTS, f"({first_id}", "+") if '"drain-' in f["payload"])
    fleet[X2].sh("systemctl kill -s KILL quantum-execution", check=False)
    fleet.kill_host(X2)
    print(f"{X2} killed holding {held} entries with {done} of 1500 drain intents executed")
    assert held > 0 and done < 1500, "the kill did not land mid-drain"
    wait_until(lambda: settled(r, last_id), 180, what="the backlog drained by the remaining host")
    outcomes = outcomes_of(r, first_id, last_id)
    drain = {k: v for k, v in outcomes.items() if k.startswith("drain-")}
    assert len(drain) == 1500
    assert [k for k, v in outcomes.items() if v == 0] == [], "intents lost"
    assert [k for k, v in outcomes.items() if v > 1] == [], "intents with two outcomes"
    assert r.hlen(DUPLICATES) == 0, f"orders sent to the venue twice: {r.hgetall(DUPLICATES)}"
    assert int(r.hget("quantum:stats:execution", "reclaimed") or 0) > reclaimed_before, "nothing was reclaimed"
    assert live_consumer_hosts(r) == {X1}
