"""The venue pool against a real redis-server and the real paper venue, without the service process.

The limiter and the paper venue's order book live in Redis; failures are real ones too: a venue that cannot be
reached (the outcome is unknown) and a venue whose order book answers with an error (the order was not sent).
"""

from __future__ import annotations

import logging
import time

import pytest
import redis

from consumer.executors import PaperExecutor
from consumer.executors.paper import KEY_PREFIX
from consumer.ratelimit import FixedWindowLimiter
from consumer.venue import FAST_VENUE_SEC, VenuePool
from consumer.work import Outcome, Work
from support import RATE_PREFIX, free_port, intent, wait_until


def works(n: int, first: int = 0) -> list[Work]:
    now = time.time()
    return [Work(f"{int(now * 1000)}-{i}".encode(), intent(first + i), now, now) for i in range(n)]


def make_pool(r, concurrency: int = 2, latency_ms: int = 0, limit: int = 1000,
              venue: redis.Redis | None = None) -> VenuePool:
    executor = PaperExecutor(venue or r, latency_ms)
    return VenuePool(executor, FixedWindowLimiter(r, RATE_PREFIX, limit, 1), concurrency, 3600)


@pytest.fixture
def pools():
    made: list[VenuePool] = []
    yield made
    for pool in made:
        pool.close(wait_for_workers=True)


def drain(pool: VenuePool, timeout: float = 20) -> list[tuple[Work, Outcome]]:
    """Dispatch and collect until the pool holds nothing; everything it gave back."""
    done: list[tuple[Work, Outcome]] = []

    def empty() -> bool:
        pool.dispatch()
        done.extend(pool.collect(timeout=0.05))
        return pool.held == 0

    wait_until(empty, timeout=timeout, interval=0, what="the pool to finish")
    return done


def most_at_once(outcomes: list[Outcome]) -> int:
    """The largest number of venue calls whose [started, finished] spans overlap."""
    edges = sorted([(o.started, 1) for o in outcomes] + [(o.finished, -1) for o in outcomes], key=lambda e: e[0:2])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_a_slow_venue_gets_one_task_per_intent_and_at_most_concurrency_at_once(r, pools):
    pool = make_pool(r, concurrency=2, latency_ms=60)
    pools.append(pool)
    pool.add(works(6))
    pool.dispatch()
    assert len(pool.futures) == 6 and pool.held == 6 and not pool.ready
    done = drain(pool)
    assert sorted(w.intent_id for w, _ in done) == [f"test-{i:08d}" for i in range(6)]
    assert all(o.report.status == "FILLED" and not o.reconciled for _, o in done)
    assert most_at_once([o for _, o in done]) == 2, "EXEC_CONCURRENCY=2: two orders at the venue, never three"


def test_a_venue_measured_fast_gets_everything_granted_as_one_chunk(r, pools):
    pool = make_pool(r, concurrency=4)
    pools.append(pool)
    pool.add(works(10))
    pool.dispatch()
    assert len(pool.futures) == 10, "until measured, the venue is assumed slow: one task per intent"
    assert len(drain(pool)) == 10
    assert pool.venue_sec < 1.0, "each finished call moves the estimate toward what the venue took"
    pool.venue_sec = FAST_VENUE_SEC / 2  # what the paper venue measures on an idle machine (a shared one varies)
    pool.add(works(10, first=10))
    pool.dispatch()
    assert [len(chunk) for chunk in pool.futures.values()] == [10]
    done = drain(pool)
    assert [w.intent_id for w, _ in done] == [f"test-{i:08d}" for i in range(10, 20)]
    assert all(o.report.status == "FILLED" for _, o in done)
    assert sum(1 for _ in r.scan_iter(f"{KEY_PREFIX}*")) == 20, "every order reached the venue once"


def test_the_rate_limit_holds_back_what_it_does_not_grant(r, pools):
    pool = make_pool(r, concurrency=4, limit=3)
    pools.append(pool)
    pool.add(works(5))
    before = time.time()
    pool.dispatch()
    assert pool.running == 3 and len(pool.ready) == 2 and pool.held == 5
    assert before < pool.rate_wait_until <= before + 1 and pool.rate_wait_until == int(pool.rate_wait_until)
    assert pool.rate_wait() <= 0.2, "the loop waits in short steps, so a stop is never delayed by a window"
    assert len(drain(pool, timeout=10)) == 5, "held back, never dropped"


def test_an_executor_error_becomes_a_failed_report(r, pools):
    pool = make_pool(r)
    pools.append(pool)
    [work] = works(1)
    r.rpush(KEY_PREFIX + work.intent_id, "not an order")  # the venue's book answers WRONGTYPE for this order
    pool.add([work])
    [(got, outcome)] = drain(pool)
    assert got is work and outcome.report.status == "FAILED" and not outcome.reconciled
    assert outcome.report.error.startswith("ResponseError: WRONGTYPE"), outcome.report.error


def test_an_unknown_outcome_is_logged_and_not_given_back(r, pools, caplog):
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    pool = make_pool(r, venue=unreachable)
    pools.append(pool)
    pool.add(works(2))
    with caplog.at_level(logging.ERROR, logger="quantum.execution"):
        assert drain(pool) == []
    lines = [rec.getMessage() for rec in caplog.records if "execution_outcome_unknown" in rec.getMessage()]
    assert len(lines) == 2 and all("action=reconcile_later" in line for line in lines), lines
    assert pool.held == 0, "the loop no longer holds it: the entry stays pending in the stream until redelivered"


def test_at_shutdown_the_intents_never_sent_are_handed_back(r, pools):
    pool = make_pool(r, concurrency=1, latency_ms=200, limit=3)
    pools.append(pool)
    pool.add(works(5))
    pool.dispatch()
    wait_until(lambda: any(f.running() for f in pool.futures), what="the first order to be at the venue")
    unsent = pool.take_unsent()
    assert len(unsent) == 4, "two over the rate limit and two queued behind the one at the venue"
    assert pool.held == 1 and len(pool.futures) == 1
    assert len(drain(pool)) == 1
