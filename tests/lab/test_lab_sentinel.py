"""Redis Sentinel on lab hosts: the deploy builds a master, two replicas and three sentinels, and the master is lost
under live traffic, first its redis-server (SIGKILL, not restarted), then its whole host (a power cut).

One fleet for the module, on the bridge qtsbr0, 10.213.73.0/24: qts-r1, qts-r2, qts-r3 (Redis data nodes, each
with a sentinel), qts-x1 (the AI engine, publishing at its demo rate, and an execution service) and qts-x2 (an
execution service). Two replicas, because with min-replicas-to-write 1 a master keeps accepting writes after one
node is lost only if another replica is left (docs/redis.md, Sentinel). The paper venue keeps its order book in a
Redis on the control node (PAPER_VENUE_URL): a venue does not fail over with our Redis, and its duplicate counter is
what says whether an order went out twice.

Besides the AI engine, the control node publishes intents through the sentinels and counts one as acknowledged only
when its XADD returned and WAIT 1 confirmed a replica holds it (as the bridge does). After each failover, every
acknowledged intent has exactly one result, no intent has two, the venue saw no order twice, the proof on an
execution host names the new master and says HEALTHY, and the old master rejoins as a replica when it is back.
The tests run in file order and build on each other.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from harness import RedisServer
from quantum_labkit import Fleet, FleetHost, fresh, timed, wait_until
from support import intent

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(3600)]

SUBNET, BRIDGE, GATEWAY = "10.213.73.0/24", "qtsbr0", "10.213.73.1"
R1, R2, R3, X1, X2 = "qts-r1", "qts-r2", "qts-r3", "qts-x1", "qts-x2"
DATA = [R1, R2, R3]
ROLES = {"quantum_redis": DATA, "quantum_sentinel": DATA, "quantum_ai_engine": [X1], "quantum_execution": [X1, X2]}
MASTER_NAME = "quantum"
INTENTS, RESULTS, DLQ = "quantum:stream:trade.intent", "quantum:stream:execution.result", "quantum:stream:trade.intent.dlq"
GROUP, DUPLICATES = "quantum-execution", "quantum:paper:duplicate_orders"
SECRETS = Path("/var/lib/quantum-lab/secrets")
EXCLUSIVE = [["quantum_redis", "quantum_execution"], ["quantum_redis", "quantum_ai_engine"]]
PROBES_OFF = {"quantum_proof_stale_probe": False, "quantum_proof_backlog_probe": False}
# What an operator may expect, measured below: the sentinels promote a replica within FAILOVER_SEC of the loss
# (down-after-milliseconds 5000 plus the election), and the proof says HEALTHY on the new master within HEALTHY_SEC.
FAILOVER_SEC, HEALTHY_SEC = 30, 120
NO_RESTART = "/run/systemd/system/redis-server.service.d/zz-lab-no-restart.conf"
STATE: dict[str, Any] = {}
FIGURES: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def venue() -> Any:
    """The venue's Redis; it binds the bridge's address, which exists once the fleet is up (see the fleet fixture)."""
    server = RedisServer(bind=GATEWAY)
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, venue: RedisServer):
    quantum_vars = {"quantum_preflight_exclusive_groups": EXCLUSIVE,
                    "quantum_env_extra": {"CLAIM_IDLE_MS": "5000", "PAPER_VENUE_URL": venue.url}}
    for fl in fresh(lambda: Fleet(tmp_path_factory.mktemp("sentinel"), [R1, R2, R3, X1, X2], SUBNET, BRIDGE,
                                  roles=ROLES, quantum_vars=quantum_vars,
                                  host_vars={n: dict(PROBES_OFF) for n in (R1, R2, R3, X1, X2)})):
        venue.start()
        yield fl
    print("SENTINEL FIGURES", json.dumps(FIGURES))


def secret(name: str) -> str:
    return (SECRETS / name).read_text().split()[0]


def sentinels() -> Sentinel:
    """The three sentinels as the services use them (the client user), from the control node."""
    return Sentinel([(f"10.213.73.{11 + i}", 26379) for i in range(3)], socket_timeout=2,
                    sentinel_kwargs={"username": "quantum-sentinel-client", "password": secret("sentinel-client"),
                                     "socket_timeout": 2, "socket_connect_timeout": 2})


def master_address() -> str | None:
    try:
        host, port = sentinels().discover_master(MASTER_NAME)
        return f"{host}:{port}"
    except redis.RedisError:
        return None


def host_of(address: str) -> str:
    return DATA[int(address.split(":")[0].rsplit(".", 1)[1]) - 11]


def admin_master() -> redis.Redis:
    return sentinels().master_for(MASTER_NAME, username="quantum-admin", password=secret("redis-admin"),
                                  decode_responses=True, socket_timeout=5, socket_connect_timeout=2)


def admin_on(host: str) -> redis.Redis:
    ip = f"10.213.73.{11 + DATA.index(host)}"
    return redis.Redis(host=ip, username="quantum-admin", password=secret("redis-admin"), decode_responses=True,
                       socket_timeout=5, socket_connect_timeout=2)


def proof_report(host: FleetHost) -> dict[str, Any]:
    res = host.sh("/opt/quantum/ops/proof_pipeline.sh --json --no-state --sample-sec 1", check=False, timeout=90)
    assert res.stdout.strip(), res.stderr
    return json.loads(res.stdout)


class AckedTraffic(threading.Thread):
    """Intents through the sentinels at a steady rate; acknowledged = XADD returned and WAIT 1 saw a replica."""

    def __init__(self, prefix: str, rate: float = 10.0) -> None:
        super().__init__(daemon=True)
        self.prefix, self.pause = prefix, 1 / rate
        self.stop_event = threading.Event()
        self.acked: list[str] = []
        self.unconfirmed: list[str] = []
        self.last_acked_id = "0-0"

    def run(self) -> None:
        r, n = admin_master(), 0
        while not self.stop_event.wait(self.pause):
            iid = f"{self.prefix}-{n:06d}"
            n += 1
            try:
                eid = r.xadd(INTENTS, {"payload": json.dumps(intent(iid))})
                if r.wait(1, 1000) >= 1:
                    self.acked.append(iid)
                    self.last_acked_id = eid
                    continue
            except redis.RedisError:
                pass
            self.unconfirmed.append(iid)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


def settled(r: redis.Redis, upto: str) -> bool:
    g = next(x for x in r.xinfo_groups(INTENTS) if x["name"] == GROUP)
    return id_tuple(g["last-delivered-id"]) >= id_tuple(upto) and g["pending"] == 0


def dead_intent_id(fields: dict[str, str]) -> str | None:
    try:
        return json.loads(fields.get("payload", "")).get("intent_id")
    except (ValueError, AttributeError):
        return None


def longest_result_gap(r: redis.Redis, since_ms: int) -> float:
    """Seconds of the longest pause between consecutive results after ``since_ms`` (how long trading stopped)."""
    stamps = [id_tuple(eid)[0] for eid, _ in r.xrange(RESULTS, f"{since_ms}-0", "+")]
    return max((b - a for a, b in zip(stamps, stamps[1:])), default=0) / 1000


def lose_the_master_under_traffic(fleet: Fleet, venue: RedisServer, how: str, lose) -> dict[str, Any]:
    """Traffic on, ``lose(host)`` the current master, measure, traffic off, and account for every intent."""
    old = master_address()
    assert old, "no master named by the sentinels"
    old_host = host_of(old)
    before_ms = int(time.time() * 1000)
    traffic = AckedTraffic(f"sentinel-{how}")
    traffic.start()
    try:
        wait_until(lambda: len(traffic.acked) >= 30, 60, what="traffic acknowledged before the fault")
        started = time.monotonic()
        lose(old_host)
        new = wait_until(lambda: (m := master_address()) not in (None, old) and m, FAILOVER_SEC + 30,
                         what="the sentinels to promote a replica")
        failover = time.monotonic() - started

        def healthy_on_new_master() -> dict[str, Any] | None:
            rep = proof_report(fleet[X2])
            topo = rep["redis"].get("topology") or {}
            return rep if rep["health"]["verdict"] == "HEALTHY" and topo.get("master") == new else None

        rep = wait_until(healthy_on_new_master, HEALTHY_SEC + 60, interval=2, what="the proof HEALTHY on the new master")
        healthy = time.monotonic() - started
        acked_at_healthy = len(traffic.acked)
        wait_until(lambda: len(traffic.acked) >= acked_at_healthy + 30, 120, what="traffic acknowledged again")
    finally:
        traffic.stop()
    r = admin_master()
    wait_until(lambda: settled(r, traffic.last_acked_id), 180, interval=1, what="every intent delivered and acked")
    by_intent = Counter(json.loads(f["payload"]).get("intent_id") for _, f in r.xrange(RESULTS, f"{before_ms}-0", "+"))
    dead = Counter(dead_intent_id(f) for _, f in r.xrange(DLQ, f"{before_ms}-0", "+"))
    lost = [i for i in traffic.acked if by_intent.get(i, 0) + dead.get(i, 0) == 0]
    doubled = sorted(i for i in by_intent if by_intent[i] + dead.get(i, 0) > 1)
    venue_doubles = venue.client().hlen(DUPLICATES)
    figures = {"failover_sec": round(failover, 1), "healthy_sec": round(healthy, 1),
               "trading_paused_sec": longest_result_gap(r, before_ms), "acked": len(traffic.acked),
               "unconfirmed": len(traffic.unconfirmed), "lost": len(lost), "doubled": len(doubled),
               "venue_duplicates": venue_doubles, "results": sum(by_intent.values())}
    FIGURES[how] = figures
    print(f"SENTINEL {how}: {old} -> {new}: {figures}")
    assert lost == [], f"acknowledged intents without a result: {lost[:10]}"
    assert doubled == [], f"intents with two results: {doubled[:10]}"
    assert venue_doubles == 0, f"the venue saw {venue_doubles} orders twice"
    assert failover < FAILOVER_SEC and healthy < HEALTHY_SEC, figures
    assert len(rep["redis"]["topology"]["replicas"]) == 1, rep["redis"]["topology"]  # the one left
    return {"old": old, "old_host": old_host, "new": new}


def rejoined(old_host: str, new: str) -> bool:
    try:
        info = admin_on(old_host).info("replication")
    except redis.RedisError:
        return False
    return (info.get("role") == "slave" and f"{info.get('master_host')}:{info.get('master_port')}" == new
            and info.get("master_link_status") == "up")


def test_first_deploy_builds_a_master_two_replicas_and_three_sentinels(fleet: Fleet) -> None:
    res = timed(fleet, "deploy.yml", timeout=2400)
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-3000:]
    out = re.sub(r"\s+", " ", res.stdout)
    assert "PLAY [Sentinel]" in res.stdout
    assert f"{X1} reaches 10.213.73.11:26379" in out, "pre-flight checks the sentinels' port too"
    assert master_address() == "10.213.73.11:6379"
    for host in (R2, R3):
        assert rejoined(host, "10.213.73.11:6379"), f"{host} is not a replica in sync"
    creds = fleet[X2].out("cat /etc/quantum/redis-execution.env")
    assert "REDIS_SENTINELS='10.213.73.11:26379,10.213.73.12:26379,10.213.73.13:26379'" in creds
    assert "REDIS_SENTINEL_MASTER='quantum'" in creds and "REDIS_URL" not in creds
    assert "REDIS_USERNAME='quantum-exec'" in creds
    rep = wait_until(lambda: (r := proof_report(fleet[X2]))["health"]["verdict"] == "HEALTHY" and r, 120, interval=2,
                     what="the proof HEALTHY after the first deploy")
    topo = rep["redis"]["topology"]
    assert rep["redis"]["url"] == "sentinel://10.213.73.11:26379,10.213.73.12:26379,10.213.73.13:26379/quantum"
    assert topo["master"] == "10.213.73.11:6379" and len(topo["replicas"]) == 2
    assert [s["master"] for s in topo["sentinels"]] == ["10.213.73.11:6379"] * 3
    once = fleet[X2].sh("/opt/quantum/ops/proof_pipeline.sh --once --no-state --sample-sec 1", check=False).stdout
    assert "sentinels 3 of 3 answering, 3 name 10.213.73.11:6379" in once, once
    status = timed(fleet, "status.yml")
    assert status.returncode == 0 and "num-other-sentinels=2" in re.sub(r"\s+", " ", status.stdout), status.stdout[-3000:]


def test_sigkill_of_the_master_under_traffic_loses_and_doubles_nothing(fleet: Fleet, venue: RedisServer) -> None:
    def kill9(host: str) -> None:
        fleet[host].sh(f"mkdir -p {Path(NO_RESTART).parent} && printf '[Service]\\nRestart=no\\n' > {NO_RESTART}"
                       " && systemctl daemon-reload && systemctl kill -s SIGKILL --kill-whom=main redis-server")

    lost = lose_the_master_under_traffic(fleet, venue, "sigkill", kill9)
    # Back as it was: it starts as a master with its own data; the sentinels turn it into a replica of the new one.
    fleet[lost["old_host"]].sh(f"rm -f {NO_RESTART} && systemctl daemon-reload && systemctl reset-failed redis-server"
                               " && systemctl start redis-server")
    wait_until(lambda: rejoined(lost["old_host"], lost["new"]), 120, interval=1, what="the old master rejoining")
    STATE["after_sigkill"] = lost["new"]


def test_the_whole_master_host_stopped_under_traffic_loses_and_doubles_nothing(fleet: Fleet, venue: RedisServer) -> None:
    lost = lose_the_master_under_traffic(fleet, venue, "host_stopped", fleet.kill_host)
    fleet.boot_host(lost["old_host"])
    wait_until(lambda: rejoined(lost["old_host"], lost["new"]), 180, interval=1, what="the old master's host rejoining")
    STATE["after_host"] = lost["new"]


def test_a_redeploy_follows_the_promoted_master(fleet: Fleet) -> None:
    master = STATE.get("after_host") or master_address()
    res = timed(fleet, "deploy.yml", timeout=2400)
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-3000:]
    assert master_address() == master, "the deploy moved the master"
    for host in DATA:
        if f"10.213.73.{11 + DATA.index(host)}:6379" != master:
            assert rejoined(host, master), f"{host} does not follow {master}"
