"""Redis Sentinel: configuration, and failover under live traffic against real processes (master, replica, three
sentinels, the service, a publisher), with no acknowledged intent lost and no order sent twice."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
import redis
from jsonschema import Draft202012Validator

from consumer import connection
from consumer.bridge import Publisher, synthetic_intent
from consumer.config import Config, ConfigError
from consumer.executors.paper import DUPLICATES_KEY, KEY_PREFIX
from consumer.proof import collect
from consumer.proof.config import ProofSettings
from consumer.service import Service
from consumer.streams import _COMMIT
from sentinel_support import MASTER_NAME, SentinelCluster
from support import (DLQ, GROUP, INTENTS, RESULTS, ROOT, RedisServer, ServiceProcess, intent, results, stats,
                     wait_until, xadd)


PROOF_SCHEMA = json.loads((ROOT / "schemas" / "proof_report.schema.json").read_text())


# -- configuration -------------------------------------------------------------------------------------------------

def test_sentinel_settings_are_read_with_their_own_credentials():
    cfg = Config.from_env({"REDIS_SENTINELS": "10.0.0.1:26379, [fd00::2]:26380", "REDIS_SENTINEL_MASTER": "quantum",
                           "REDIS_USERNAME": "exec", "REDIS_PASSWORD": "p1", "REDIS_SENTINEL_USERNAME": "sentinel",
                           "REDIS_SENTINEL_PASSWORD": "p2"})
    s = cfg.sentinel
    assert s.addresses == (("10.0.0.1", 26379), ("fd00::2", 26380)) and s.master == "quantum"
    assert (s.username, s.password, s.sentinel_username, s.sentinel_password) == ("exec", "p1", "sentinel", "p2")
    assert cfg.wait_replicas == 1, "with Sentinel, claims and commits wait for one replica by default"
    assert "p1" not in repr(cfg) and "p2" not in repr(cfg), "passwords stay out of reprs and logs"
    assert s.describe() == "sentinel://10.0.0.1:26379,[fd00::2]:26380/quantum"
    assert Config.from_env({}).sentinel is None and Config.from_env({}).wait_replicas == 0


@pytest.mark.parametrize("env, named", [
    ({"REDIS_URL": "redis://127.0.0.1:6379/0", "REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_SENTINEL_MASTER": "m"},
     "REDIS_URL and REDIS_SENTINELS"),
    ({"REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINEL_MASTER"),
    ({"REDIS_SENTINELS": "127.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
    ({"REDIS_SENTINELS": "127.0.0.1", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "h:1,h:1", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "h:70000", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
    ({"REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": "m", "REDIS_WAIT_REPLICAS": "-1"}, "REDIS_WAIT_REPLICAS"),
])
def test_a_bad_or_clashing_setting_stops_the_service_with_exit_2_naming_it(env, named):
    with pytest.raises(ConfigError, match=named):
        Config.from_env(env)
    base = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")}
    proc = subprocess.run([sys.executable, "-m", "consumer"], cwd=ROOT, env={**base, **env}, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and named in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_failover_replies_are_transient_and_others_are_not():
    assert connection.is_failover_reply(redis.ResponseError("UNBLOCKED force unblock from blocking operation"))
    assert connection.is_failover_reply(redis.ResponseError("NOREPLICAS Not enough good replicas to write."))
    assert not connection.is_failover_reply(redis.ResponseError("NOGROUP No such key"))
    assert connection.is_failover_reply(redis.ResponseError(
        "Command # 1 (XADD s * payload x) of pipeline caused error: NOREPLICAS Not enough good replicas to write."))
    assert not connection.is_failover_reply(redis.ResponseError("NOPERM this user has no permissions"))


# -- the lost group --------------------------------------------------------------------------------------------------

def test_a_lost_group_is_recreated_at_the_last_acked_position_not_at_zero(caplog):
    caplog.set_level("INFO", logger="quantum.execution")
    server = RedisServer().start()
    svc = None
    try:
        r = server.client()
        cfg = Config.from_env({"REDIS_URL": server.url, "CLAIM_IDLE_MS": "1000", "RATE_LIMIT_MAX": "100000"})
        svc = Service(cfg)
        thread = threading.Thread(target=svc.run, daemon=True)
        thread.start()
        for i in range(60):
            xadd(r, intent(i))
        wait_until(lambda: len(results(r)) == 60, 30, what="the first 60 intents")
        wait_until(lambda: svc._safe_position is not None, 10, what="a safe position to be known")
        known = svc._safe_position
        r.xgroup_destroy(INTENTS, GROUP)  # what a failover to a replica that never had the group looks like
        for i in range(60, 90):
            xadd(r, intent(i))
        wait_until(lambda: len(results(r)) == 90, 30, what="the intents added after the group was lost")
        ids = Counter(x["intent_id"] for x in results(r))
        assert set(ids.values()) == {1} and len(ids) == 90
        group = next(g for g in r.xinfo_groups(INTENTS) if g["name"] == GROUP.encode())
        assert group["pending"] == 0
        assert stats(r).get("duplicate", 0) < 60, "the group restarted near its last position, not at 0"
        first_id = r.xrange(INTENTS, count=1)[0][0]
        assert known > first_id, "the known position is past the first entries, which are all acked"
        lines = [m.getMessage() for m in caplog.records if "consumer_group_missing" in m.getMessage()]
        assert lines and f"position={known.decode()}" in lines[0] and "basis=last_acked_position" in lines[0], lines
    finally:
        if svc is not None:
            svc.stop()
            thread.join(30)
        server.cleanup()


# -- failover under traffic --------------------------------------------------------------------------------------

@pytest.fixture
def cluster():
    c = SentinelCluster().start()
    yield c
    c.cleanup()


@pytest.fixture
def venue():
    server = RedisServer().start()
    yield server
    server.cleanup()


def sentinel_service(cluster: SentinelCluster, venue: RedisServer, **env: Any) -> ServiceProcess:
    env = {"CLAIM_IDLE_MS": 3000, "REDIS_WAIT_TIMEOUT_MS": 500, **cluster.sentinel_env, **env}
    svc = ServiceProcess("unused", PAPER_VENUE_URL=venue.url, **env)
    del svc.env["REDIS_URL"]
    return svc


def master_client(cluster: SentinelCluster) -> redis.Redis:
    return connection.connect("", Config.from_env(cluster.sentinel_env).sentinel, socket_timeout=5,
                              socket_connect_timeout=1)


class Engine(threading.Thread):
    """The AI engine's side: publishes intents with WAIT, remembers each one whose XADD was acknowledged."""

    def __init__(self, cluster: SentinelCluster, rate: float) -> None:
        super().__init__(daemon=True)
        self.pub = Publisher.from_config(Config.from_env({**cluster.sentinel_env, "REDIS_WAIT_TIMEOUT_MS": "500"}))
        self.rate = rate
        self.stop = threading.Event()
        self.acked: list[str] = []
        self.retries = 0

    def run(self) -> None:
        rng = random.Random(7)
        doc = None
        while not self.stop.is_set():
            doc = doc or synthetic_intent(rng, prefix="fo")
            try:
                self.pub.publish(doc)
            except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError) as exc:
                if isinstance(exc, redis.ResponseError):
                    assert connection.is_failover_reply(exc), exc
                    connection.reset(self.pub.r)
                self.retries += 1
                self.stop.wait(0.05)
                continue
            self.acked.append(doc["intent_id"])
            doc = None
            self.stop.wait(1 / self.rate)


def answered(call: Any) -> Any:
    """``call()``'s value, or None while the sentinels have no master to name (redis-py's MasterNotFoundError)."""
    try:
        return call()
    except redis.ConnectionError:
        return None


def outcomes(r: redis.Redis) -> Counter:
    """intent_id -> results + dead letters on the current master."""
    got: Counter = Counter()
    for _, f in r.xrange(RESULTS):
        got[json.loads(f[b"payload"])["intent_id"]] += 1
    for _, f in r.xrange(DLQ):
        try:
            got[json.loads(f[b"payload"])["intent_id"]] += 1
        except (ValueError, KeyError):
            pass
    return got


@pytest.mark.slow
def test_kill_9_of_the_master_under_traffic_loses_and_doubles_nothing(cluster, venue):
    svc = sentinel_service(cluster, venue, XREADGROUP_COUNT=10, EXEC_CONCURRENCY=2, PAPER_LATENCY_MS=2).start()
    engine = Engine(cluster, rate=150)
    engine.start()
    r = master_client(cluster)
    try:
        wait_until(lambda: len(engine.acked) >= 300 and len(outcomes(r)) >= 200, 60, what="traffic under way")
        killed_at = time.monotonic()
        old, failover_sec = cluster.kill_master()
        published_at_kill = len(engine.acked)
        restarted = time.monotonic()
        cluster.restart_as_before(old)
        cluster.wait_replicated()  # usually the old master as a replica; under load a second failover may swap them
        rejoin_sec = time.monotonic() - restarted
        r = master_client(cluster)
        done_at_rejoin = len(results(r))
        wait_until(lambda: len(results(r)) > done_at_rejoin, 60, what="results on the new master")
        paused_sec = time.monotonic() - killed_at
        wait_until(lambda: len(engine.acked) >= published_at_kill + 300, 90, what="publishing to resume")
        engine.stop.set()
        engine.join(30)
        acked = set(engine.acked)
        wait_until(lambda: acked <= set(outcomes(r)), 120, what="every acknowledged intent to have an outcome")
        wait_until(lambda: int(r.xpending(INTENTS, GROUP)["pending"]) == 0, 60, what="nothing pending")
        got = outcomes(r)
        doubled = [k for k, v in got.items() if v > 1]
        assert not doubled, f"intents with two outcomes: {doubled[:5]}"
        v = venue.client()
        assert v.hlen(DUPLICATES_KEY) == 0, f"orders the venue saw twice: {v.hgetall(DUPLICATES_KEY)}"
        orders = sum(1 for _ in v.scan_iter(KEY_PREFIX + "*", count=1000))
        assert orders == len(results(r)), "every result comes from exactly one order at the venue"
        lost = acked - set(got)
        assert not lost, f"{len(lost)} acknowledged intents lost"
        assert svc.proc.poll() is None, "the service rides out the failover"
        log = svc.log()
        print(f"failover_sec={failover_sec:.2f} rejoin_sec={rejoin_sec:.2f} trading_paused_sec={paused_sec:.2f} "
              f"acked={len(acked)} "
              f"publisher_retries={engine.retries} results={len(results(r))} orders={orders}")
        assert svc.stop() == 0
    finally:
        engine.stop.set()
        if svc.proc is not None:
            svc.stop()


@pytest.mark.slow
def test_a_demoted_master_unblocks_the_read_and_the_new_master_gets_the_scripts(cluster, venue):
    svc = sentinel_service(cluster, venue, XREADGROUP_BLOCK_MS=5000).start()
    r = master_client(cluster)
    try:
        xadd(r, intent(1))
        wait_until(lambda: len(results(r)) == 1, 20, what="the first intent")
        old = cluster.master_port()
        new_node = cluster.replica()
        sha = r.script_load(_COMMIT)
        cluster.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        wait_until(lambda: cluster.master_port() != old, 30, what="the switch-over")
        wait_until(lambda: "UNBLOCKED" in svc.log() or "READONLY" in svc.log() or "NOREPLICAS" in svc.log()
                   or "previous master" in svc.log(), 30, what="the service to see the demotion")
        assert new_node.client().script_exists(sha) == [False], "scripts do not follow a failover: NOSCRIPT"
        wait_until(lambda: cluster._link_up(cluster.node(old)), 60, what="the old master to follow the new one")
        cluster.write_when_accepted(r, "the new master to accept writes", lambda: xadd(r, intent(2)))
        wait_until(lambda: len(results(r)) == 2, 30, what="an intent on the new master")
        assert svc.proc.poll() is None
        assert new_node.client().script_exists(sha) == [True], "the service loaded its commit script again"
    finally:
        svc.stop()


@pytest.mark.slow
def test_the_proof_counts_lag_a_freshly_promoted_master_does_not_know(cluster):
    r = master_client(cluster)
    r.xgroup_create(INTENTS, GROUP, id="0", mkstream=True)
    for i in range(50):
        xadd(r, intent(i))
    r.xreadgroup(GROUP, "c1", {INTENTS: ">"}, count=20)
    r.wait(1, 2000)
    cluster.kill_master()
    r = master_client(cluster)
    groups = wait_until(lambda: answered(lambda: r.xinfo_groups(INTENTS)), 30,
                        what="every sentinel to name the promoted master")  # MasterNotFoundError until they agree
    raw = next(g for g in groups if g["name"] == GROUP.encode())
    assert raw["lag"] is None, "Redis 7.0 does not carry the group's entries-read to a replica"
    settings = ProofSettings(redis_url="unused")
    proof = connection.connect("", Config.from_env(cluster.sentinel_env).sentinel, decode_responses=True)
    sample = collect.take_sample(proof, settings)
    assert sample.group.lag == 30 and sample.group.lag_estimated
    assert sample.backlog == 50


@pytest.mark.slow
def test_the_topology_names_master_replica_lag_and_agreeing_sentinels(cluster, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    for k, v in cluster.sentinel_env.items():
        monkeypatch.setenv(k, v)
    r = collect.connect(ProofSettings(redis_url=""))
    r.set("quantum:t", "1")
    r.wait(1, 2000)
    topo = collect.topology(r)
    master, replica = cluster.master_port(), cluster.replica().port
    assert topo.role == "master" and topo.master == f"127.0.0.1:{master}"
    assert [x.address for x in topo.replicas] == [f"127.0.0.1:{replica}"]
    assert topo.replicas[0].lag_bytes < 4096 and topo.replicas[0].state == "online"  # sentinel hellos move it
    assert len(topo.sentinels) == 3 and {s.master for s in topo.sentinels} == {f"127.0.0.1:{master}"}
    # The proof's own report: the sentinels as its address, the topology in --json (valid) and in the layout.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDIS_")} | cluster.sentinel_env
    res = subprocess.run([sys.executable, "-m", "consumer.proof", "--json", "--no-state", "--sample-sec", "0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    report = json.loads(res.stdout)
    Draft202012Validator(PROOF_SCHEMA).validate(report)
    assert report["redis"]["url"].startswith("sentinel://127.0.0.1:") and report["redis"]["url"].endswith(f"/{MASTER_NAME}")
    assert report["redis"]["topology"]["master"] == f"127.0.0.1:{master}"
    assert [s["reachable"] for s in report["redis"]["topology"]["sentinels"]] == [True] * 3
    once = subprocess.run([sys.executable, "-m", "consumer.proof", "--once", "--no-state", "--sample-sec", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60).stdout
    assert f"master 127.0.0.1:{master}  role master" in once, once
    assert f"replica 127.0.0.1:{replica}  online" in once
    assert f"sentinels 3 of 3 answering, 3 name 127.0.0.1:{master}" in once
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    with pytest.raises(ValueError, match="REDIS_URL and REDIS_SENTINELS"):
        collect.connect(ProofSettings(redis_url="redis://127.0.0.1:1/0"))


@pytest.mark.slow
def test_a_read_blocked_when_its_master_turns_replica_is_answered_unblocked_and_ridden_out():
    a, b = RedisServer().start(), RedisServer().start()
    svc = ServiceProcess(a.url, XREADGROUP_BLOCK_MS=10000)
    try:
        svc.start()
        ra = a.client()
        wait_until(lambda: ra.exists(INTENTS), 10, what="the group")
        wait_until(lambda: any(c.get("flags") and "b" in c["flags"] for c in ra.client_list()), 10,
                   what="the service to block in XREADGROUP")
        ra.replicaof("127.0.0.1", b.port)  # what Sentinel does to a demoted master
        wait_until(lambda: "UNBLOCKED" in svc.log(), 20, what="the blocked read to be answered UNBLOCKED")
        assert svc.proc.poll() is None, "UNBLOCKED is a failover, not a crash"
        ra.replicaof("no", "one")
        xadd(ra, intent(1))
        wait_until(lambda: len(results(ra)) == 1, 30, what="the intent after the master came back")
        assert svc.stop() == 0
    finally:
        svc.stop()
        a.cleanup()
        b.cleanup()


@pytest.mark.slow
def test_the_roles_files_run_a_failover_with_every_user_held_to_its_rules(tmp_path, venue):
    """users.acl (with the replication and sentinel users), the replication settings and sentinel.conf exactly as the
    roles write them: the replica syncs as its own user, the sentinels watch and fail over as theirs, the service and
    the publisher find the master through the sentinels' client user and WAIT as their own users."""
    from sentinel_support import RoleFiles

    files = RoleFiles(tmp_path)
    cluster = SentinelCluster(roles=files).start()
    try:
        master = cluster.master()
        assert master.client().info("replication")["connected_slaves"] == 1, "the replica logged in as its user"
        anon = redis.Redis(port=cluster.sentinels[0].port, socket_timeout=2)
        with pytest.raises(redis.AuthenticationError):
            anon.ping()  # the sentinels' default user is off
        client = cluster.sentinels[0].client()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)  # the client user only looks
        env = {**cluster.sentinel_env, "REDIS_USERNAME": files.exec_user[0], "REDIS_PASSWORD": files.exec_user[1]}
        svc = ServiceProcess("unused", PAPER_VENUE_URL=venue.url, CLAIM_IDLE_MS=3000, **env)
        del svc.env["REDIS_URL"]
        svc.start()
        pub = Publisher.from_config(Config.from_env({**cluster.sentinel_env, "REDIS_USERNAME": files.engine_user[0],
                                                     "REDIS_PASSWORD": files.engine_user[1]}))
        for i in range(20):
            pub.publish(intent(i))
        admin = master.client()
        wait_until(lambda: admin.xlen(RESULTS) == 20, 30, what="20 results before the failover")
        old, failover_sec = cluster.kill_master()
        cluster.restart_as_before(old)
        cluster.wait_rejoined(old)
        sent = 20
        while sent < 40:
            try:
                pub.publish(intent(sent))
                sent += 1
            except (redis.ConnectionError, redis.ResponseError) as exc:
                assert not isinstance(exc, redis.ResponseError) or connection.is_failover_reply(exc), exc
                time.sleep(0.1)
        new_admin = cluster.master().client()
        wait_until(lambda: new_admin.xlen(RESULTS) >= 40 and int(new_admin.xpending(INTENTS, GROUP)["pending"]) == 0,
                   60, what="40 results after the failover")
        got = Counter(json.loads(f[b"payload"])["intent_id"] for _, f in new_admin.xrange(RESULTS))
        assert len(got) == 40 and set(got.values()) == {1}
        assert "NOPERM" not in svc.log(), svc.log()
        assert svc.stop() == 0
        print(f"failover_sec={failover_sec:.2f} with the roles' ACL users")
    finally:
        cluster.cleanup()


@pytest.mark.slow
def test_an_unconfirmed_claim_is_never_sent_and_is_executed_once_after_reclaim(venue):
    """The replica stops acknowledging (SIGSTOP): WAIT after the claim times out, so the orders are held back, not
    sent; once the replica answers again the entries are reclaimed and each executes exactly once."""
    import signal as sig

    cluster = SentinelCluster(down_after_ms=60000, min_replicas=0).start()  # no failover, writes still accepted
    svc = sentinel_service(cluster, venue, REDIS_WAIT_TIMEOUT_MS=200, CLAIM_IDLE_MS=2000)
    try:
        svc.start()
        r = master_client(cluster)
        replica = cluster.replica()
        replica.proc.send_signal(sig.SIGSTOP)
        for i in range(5):
            xadd(r, intent(i))
        wait_until(lambda: "claim_not_replicated" in svc.log(), 20, what="the claim to go unconfirmed")
        v = venue.client()
        assert sum(1 for _ in v.scan_iter(KEY_PREFIX + "*")) == 0, "no order left before a replica had its claim"
        assert len(results(r)) == 0
        replica.proc.send_signal(sig.SIGCONT)
        wait_until(lambda: len(results(r)) == 5 and int(r.xpending(INTENTS, GROUP)["pending"]) == 0, 30,
                   what="the held entries to be reclaimed and executed")
        assert sum(1 for _ in v.scan_iter(KEY_PREFIX + "*")) == 5 and v.hlen(DUPLICATES_KEY) == 0
        assert Counter(x["intent_id"] for x in results(r)) == Counter(f"test-{i:08d}" for i in range(5))
        assert svc.stop() == 0
    finally:
        if cluster.replica().proc and cluster.replica().proc.poll() is None:
            cluster.replica().proc.send_signal(sig.SIGCONT)
        svc.stop()
        cluster.cleanup()
