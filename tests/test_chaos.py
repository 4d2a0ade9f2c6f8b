"""Crashes and outages: every intent ends with exactly one outcome and no order reaches the venue twice."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from consumer.executors.paper import DUPLICATES_KEY
from support import INTENTS, RedisServer, ServiceProcess, drained, intent, pending, results, stats, wait_until, xadd

pytestmark = pytest.mark.slow


def load(r, n: int, dup_every: int = 10) -> int:
    pipe = r.pipeline(transaction=False)
    total = 0
    for i in range(n):
        pipe.xadd(INTENTS, {"payload": json.dumps(intent(i))})
        total += 1
        if i % dup_every == 0:  # the AI engine publishing the same intent twice
            pipe.xadd(INTENTS, {"payload": json.dumps(intent(i))})
            total += 1
    pipe.execute()
    return total


def assert_exactly_once(r, unique: int, total: int) -> None:
    got = Counter(x["intent_id"] for x in results(r))
    assert len(got) == unique, f"{unique - len(got)} intents have no result"
    assert set(got.values()) == {1}, f"results written twice: {[k for k, v in got.items() if v > 1][:5]}"
    assert r.hlen(DUPLICATES_KEY) == 0, f"orders sent twice: {r.hgetall(DUPLICATES_KEY)}"
    assert sum(1 for _ in r.scan_iter("quantum:paper:order:*", count=1000)) == unique
    assert pending(r) == 0
    s = stats(r)
    assert s["executed"] == unique
    assert s["executed"] + s.get("duplicate", 0) == total, s


def test_kill_9_mid_backlog_repeatedly(r, redis_url):
    unique = 2000
    total = load(r, unique)
    env = dict(XREADGROUP_COUNT=20, EXEC_CONCURRENCY=4, PAPER_LATENCY_MS=3, CLAIM_IDLE_MS=1000)
    seen = 0
    for _ in range(4):
        svc = ServiceProcess(redis_url, **env).start()
        target = seen + 150
        wait_until(lambda: len(results(r)) >= target, timeout=30, what="progress before the kill")
        svc.kill9()
        seen = len(results(r))
        assert pending(r) > 0 or seen < unique, "a kill mid-backlog should leave work pending"
    final = ServiceProcess(redis_url, **env).start()
    wait_until(lambda: drained(r, total) and len(results(r)) == unique, timeout=120, what="the backlog to drain")
    assert final.stop() == 0
    assert_exactly_once(r, unique, total)
    assert stats(r).get("reclaimed", 0) > 0, "entries of killed consumers must be reclaimed"


def test_redis_restart_mid_drain():
    server = RedisServer(persistent=True).start()
    try:
        r = server.client()
        unique = 3000
        total = load(r, unique, dup_every=20)
        svc = ServiceProcess(server.url, XREADGROUP_COUNT=20, EXEC_CONCURRENCY=2, PAPER_LATENCY_MS=1,
                             CLAIM_IDLE_MS=1000).start()
        wait_until(lambda: len(results(r)) >= 500, timeout=30, what="the drain to be under way")
        server.restart()
        r = server.client()
        wait_until(lambda: drained(r, total) and len(results(r)) == unique, timeout=120,
                   what="the drain to resume after the restart")
        assert svc.proc.poll() is None, "the service must ride out the outage"
        assert svc.stop() == 0
        assert_exactly_once(r, unique, total)
        assert "redis_unavailable" in svc.log()
    finally:
        server.cleanup()


def test_redis_down_at_start_is_waited_for():
    server = RedisServer(persistent=False)
    svc = ServiceProcess(server.url, XREADGROUP_COUNT=10).start(ready=False)
    try:
        time.sleep(0.3)  # deliberately let it find no server (this is the condition under test, not a sync)
        assert svc.proc.poll() is None, "no crash loop while Redis is away"
        server.start()
        r = server.client()
        wait_until(lambda: r.exists(INTENTS), timeout=20, what="the group to be created once Redis is up")
        xadd(r, intent(1))
        wait_until(lambda: len(results(r)) == 1, timeout=20)
        assert svc.stop() == 0
    finally:
        server.cleanup()


def test_a_dead_consumers_whole_backlog_is_reclaimed_promptly(r, service_factory):
    from support import GROUP

    r.xgroup_create(INTENTS, GROUP, id="0", mkstream=True)
    for i in range(300):
        xadd(r, intent(i))
    r.xreadgroup(GROUP, "died-holding-300", {INTENTS: ">"}, count=300)
    # a reclaim interval of 5 s: a trickle of COUNT entries per interval would need minutes
    service_factory(CLAIM_IDLE_MS=10000, XREADGROUP_COUNT=10, EXEC_CONCURRENCY=2)
    wait_until(lambda: drained(r, 300), timeout=30, what="all 300 reclaimed entries to be executed")
    assert stats(r)["reclaimed"] == 300 and len(results(r)) == 300
