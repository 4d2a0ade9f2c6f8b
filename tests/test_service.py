"""The execution service against a real redis-server: every rule of the P0.D.5 release."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import datetime

import redis

from consumer.proof.collect import rate_limiters
from consumer.validation import SchemaValidator, load_schema
from support import (GROUP, IDEM_PREFIX, INTENTS, RATE_PREFIX, ROOT, dead_letters, drained, intent, pending, results,
                     stats, wait_until, xadd)

RESULT_SCHEMA = SchemaValidator(load_schema(ROOT / "schemas" / "execution_result.schema.json"))


def paper_orders(r) -> int:
    return sum(1 for _ in r.scan_iter("quantum:paper:order:*", count=1000))


def test_fresh_intents_are_executed_once_with_valid_results(r, service_factory):
    ids = [xadd(r, intent(i)) for i in range(25)]
    service_factory(XREADGROUP_COUNT=10, EXEC_CONCURRENCY=2)
    wait_until(lambda: drained(r, 25), what="25 intents to be executed")
    got = results(r)
    assert sorted(x["intent_id"] for x in got) == [f"test-{i:08d}" for i in range(25)]
    for res in got:
        assert RESULT_SCHEMA.is_valid(res), RESULT_SCHEMA.reason(res)
        assert res["status"] == "FILLED" and res["client_order_id"] == res["intent_id"]
    assert {x["source_entry_id"] for x in got} == {i.decode() for i in ids}
    s = stats(r)
    assert (s["consumed"], s["executed"], s.get("stale", 0), s.get("invalid", 0)) == (25, 25, 0, 0)
    assert paper_orders(r) == 25


def test_stale_intents_are_acked_not_executed_and_logged_sparingly(r, service_factory):
    old_ms = int((time.time() - 3600) * 1000)
    for i in range(500):  # old entry ids: stale without reading the payload
        r.xadd(INTENTS, {"payload": json.dumps(intent(i, age_sec=3600))}, id=f"{old_ms}-{i + 1}")
    for i in range(500, 520):  # new entries whose intents are old: stale by timestamp
        xadd(r, intent(i, age_sec=700))
    xadd(r, intent(999))
    svc = service_factory(STALE_LOG_INTERVAL_SEC=3600)
    wait_until(lambda: drained(r, 521), what="the backlog to drain")
    s = stats(r)
    assert s["stale"] == 520 and s["executed"] == 1
    assert [x["intent_id"] for x in results(r)] == ["test-00000999"]
    assert svc.stop() == 0
    drops = [line for line in svc.log().splitlines() if "STALE_INTENT_DROP" in line]
    assert len(drops) == 1, drops
    assert "age_sec=" in drops[0] and "(exceeds 600s TTL)" in drops[0] and "intent_id=test-" in drops[0]


def test_stale_log_line_reports_how_many_were_suppressed(r, service_factory):
    old_ms = int((time.time() - 3600) * 1000)
    for i in range(50):
        r.xadd(INTENTS, {"payload": json.dumps(intent(i, age_sec=3600))}, id=f"{old_ms}-{i + 1}")
    svc = service_factory(STALE_LOG_INTERVAL_SEC=1)
    wait_until(lambda: drained(r, 50))
    started = time.monotonic()
    xadd(r, intent(77, age_sec=900))
    wait_until(lambda: drained(r, 51))
    wait_until(lambda: time.monotonic() - started > 1.1 or None, what="the log interval")
    xadd(r, intent(78, age_sec=900))
    wait_until(lambda: drained(r, 52))
    svc.stop()
    drops = [line for line in svc.log().splitlines() if "STALE_INTENT_DROP" in line]
    assert len(drops) >= 2 and "suppressed_since_last=" in drops[-1], drops


def test_invalid_input_goes_to_the_dead_letter_stream_with_a_reason(r, service_factory):
    bad = {
        "not json": b"{oops",
        "not an object": b"[1,2,3]",
        "schema": json.dumps(intent(1, side="HOLD")).encode(),
        "missing field": json.dumps(intent(2, qty=None)).encode(),
        "oversized": json.dumps(intent(3, source="x" * 40)).encode() + b" " * 20_000,
        "undecodable": b"\xff\xfe\x00garbage",
        "nan": json.dumps(intent(4)).replace('"qty": 0.5', '"qty": NaN').encode(),
        "nesting": b"[" * 3000 + b"]" * 3000,
        "future": json.dumps(intent(5, age_sec=-3600)).encode(),
        "bad date": json.dumps(intent(6, timestamp="2026-02-30T10:00:00Z")).encode(),
    }
    ids = {name: xadd(r, raw) for name, raw in bad.items()}
    ids["no payload field"] = r.xadd(INTENTS, {"data": "x"})
    xadd(r, intent(100))
    svc = service_factory()
    wait_until(lambda: drained(r, len(ids) + 1), what="every entry to get an outcome")
    letters = {f[b"source_id"]: f for f in dead_letters(r)}
    assert len(letters) == len(ids)
    expect = {"not json": "not JSON", "not an object": "not an object", "schema": "side", "missing field": "qty",
              "oversized": "MAX_PAYLOAD_BYTES", "undecodable": "UTF-8", "nan": "NaN", "nesting": "nests too deeply",
              "future": "in the future", "bad date": "timestamp", "no payload field": "payload"}
    for name, entry_id in ids.items():
        letter = letters[entry_id]
        assert expect[name] in letter[b"reason"].decode(), (name, letter[b"reason"])
        if name in bad:
            assert letter[b"payload"] == bad[name], f"{name}: the original bytes must be kept"
    assert [x["intent_id"] for x in results(r)] == ["test-00000100"]
    s = stats(r)
    assert s["invalid"] == len(ids) and s["dead_lettered"] == len(ids) and s["executed"] == 1
    assert svc.proc.poll() is None, "the service must survive bad input"


def test_duplicate_intent_ids_are_executed_once(r, service_factory):
    for copy in range(3):
        for i in range(10):
            xadd(r, intent(i))
    service_factory(XREADGROUP_COUNT=7, EXEC_CONCURRENCY=4)
    wait_until(lambda: drained(r, 30))
    got = Counter(x["intent_id"] for x in results(r))
    assert len(got) == 10 and set(got.values()) == {1}
    s = stats(r)
    assert s["duplicate"] == 20 and s["executed"] == 10
    assert paper_orders(r) == 10
    xadd(r, intent(3))  # published again later: still a duplicate
    wait_until(lambda: drained(r, 31))
    assert stats(r)["duplicate"] == 21 and len(results(r)) == 10


def test_backpressure_bounds_unacked_intents(r, service_factory):
    for i in range(60):
        xadd(r, intent(i))
    service_factory(XREADGROUP_COUNT=5, EXEC_CONCURRENCY=3, PAPER_LATENCY_MS=40)
    peak = 0
    while not drained(r, 60):
        peak = max(peak, pending(r))
        assert peak <= 8, f"{peak} unacknowledged intents in flight, bound is 3 + 5"
        time.sleep(0.005)
    assert peak >= 3, "the test must actually observe work in flight"
    assert len(results(r)) == 60


def test_rate_limit_delays_but_never_drops(r, redis_url, service_factory):
    """The limiter grants at most 4 per 1-second window, and no order goes out before the window that granted it.

    Finish times are not bucketed by calendar second: a grant at x.99 s may reach a worker thread in the next second,
    so a second can hold up to 4 late sends of one window and 4 of the next. What the limiter promises is read from
    its own ledger (one Redis counter per window, polled while the backlog drains, through the reader `proof rate`
    uses) and from the sends' order.
    """
    for i in range(12):
        xadd(r, intent(i))
    service_factory(RATE_LIMIT_MAX=4, RATE_LIMIT_WINDOW_SEC=1, EXEC_CONCURRENCY=4, XREADGROUP_COUNT=20)
    ledger = redis.Redis.from_url(redis_url, decode_responses=True)
    granted: dict[float, int] = {}  # the epoch second a window opened -> the most its counter showed

    def ledger_read() -> bool:
        for key in rate_limiters(ledger, RATE_PREFIX + "*", time.time(), keep=1000, window_sec=1).keys:
            opened = key.resets_at - 1
            granted[opened] = max(granted.get(opened, 0), key.count or 0)
        return drained(r, 12)

    wait_until(ledger_read, timeout=30, interval=0.005, what="12 rate-limited intents to be executed")
    ledger_read()
    got = results(r)
    assert len(got) == 12 and all(x["status"] == "FILLED" for x in got)
    assert sum(granted.values()) == 12 and max(granted.values()) <= 4, granted
    assert len(granted) >= 3, granted
    first = min(granted)
    sent = sorted(datetime.fromisoformat(x["executed_at"]).timestamp() for x in got)
    for k in range(3):  # the (4k+1)-th order finished no earlier than window first+k opened
        assert sent[4 * k] >= first + k, (k, sent, granted)


def test_executor_rejections_are_results_and_counted(r, service_factory):
    for i in range(200):
        xadd(r, intent(i))
    service_factory(PAPER_FAIL_RATE=0.25, EXEC_CONCURRENCY=2)
    wait_until(lambda: drained(r, 200))
    got = results(r)
    rejected = [x for x in got if x["status"] == "REJECTED"]
    assert len(got) == 200 and 20 < len(rejected) < 80
    assert all(x["error"] and x["filled_qty"] == 0 for x in rejected)
    assert stats(r)["failed"] == len(rejected)


def test_pipeline_diag_adds_per_batch_lines_and_is_quiet_when_off(r, service_factory):
    for i in range(20):
        xadd(r, intent(i))
    quiet = service_factory()
    wait_until(lambda: drained(r, 20))
    quiet.stop()
    assert "pipeline_" not in quiet.log() and len(quiet.log().splitlines()) == 2
    for i in range(20, 40):
        xadd(r, intent(i))
    loud = service_factory(PIPELINE_DIAG="true")
    wait_until(lambda: drained(r, 40))
    loud.stop()
    assert "pipeline_batch read=" in loud.log() and "pipeline_commit acked=" in loud.log()


def test_sigterm_finishes_in_flight_work_and_exits_0(r, service_factory):
    for i in range(40):
        xadd(r, intent(i))
    svc = service_factory(EXEC_CONCURRENCY=4, XREADGROUP_COUNT=10, PAPER_LATENCY_MS=300)
    wait_until(lambda: paper_orders(r) >= 1, what="executions to start")
    started = time.monotonic()
    assert svc.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    executed = paper_orders(r)
    got = results(r)
    assert len(got) == executed, "every order the venue saw has its result"
    assert pending(r) == 0 or stats(r).get("consumed", 0) + pending(r) <= 40
    assert "service_stopped clean=True" in svc.log()
    service_factory(EXEC_CONCURRENCY=4, XREADGROUP_COUNT=10, PAPER_LATENCY_MS=0, CLAIM_IDLE_MS=1000)
    wait_until(lambda: len(results(r)) == 40 and pending(r) == 0, timeout=30, what="a new process to finish the rest")
    assert len({x["intent_id"] for x in results(r)}) == 40 and paper_orders(r) == 40


def test_max_deliveries_sends_a_poison_entry_to_the_dead_letter_stream(r, service_factory):
    r.xgroup_create(INTENTS, GROUP, id="0", mkstream=True)
    entry = xadd(r, intent(1))
    r.xreadgroup(GROUP, "ghost-1", {INTENTS: ">"}, count=1)
    for n in range(4):  # four more deliveries to consumers that died with it
        r.xclaim(INTENTS, GROUP, f"ghost-{n + 2}", 0, [entry])
    service_factory(CLAIM_IDLE_MS=1000, MAX_DELIVERIES=3)
    wait_until(lambda: len(dead_letters(r)) == 1 and pending(r) == 0, timeout=15)
    letter = dead_letters(r)[0]
    assert letter[b"source_id"] == entry and b"MAX_DELIVERIES=3" in letter[b"reason"]
    assert results(r) == [] and paper_orders(r) == 0


def test_crash_after_execution_is_reconciled_not_executed_again(r, service_factory):
    """A consumer claimed and executed an intent, then died before its commit."""
    r.xgroup_create(INTENTS, GROUP, id="0", mkstream=True)
    done_entry = xadd(r, intent(1))
    lost_entry = xadd(r, intent(2))
    r.xreadgroup(GROUP, "dead-consumer", {INTENTS: ">"}, count=2)
    for n, entry in ((1, done_entry), (2, lost_entry)):
        r.set(f"{IDEM_PREFIX}test-{n:08d}", f"claimed|{entry.decode()}|dead-consumer")
    venue = {"status": "FILLED", "filled_qty": 0.5, "avg_price": 64000.5, "venue_order_id": "paper-test-00000001",
             "error": None}
    r.set("quantum:paper:order:test-00000001", json.dumps(venue))  # the venue filled #1; #2 never reached it
    service_factory(CLAIM_IDLE_MS=1000)
    wait_until(lambda: drained(r, 2), timeout=15)
    got = {x["intent_id"]: x for x in results(r)}
    assert got["test-00000001"]["reconciled"] is True and got["test-00000001"]["venue_order_id"] == "paper-test-00000001"
    assert got["test-00000002"]["reconciled"] is False
    assert paper_orders(r) == 2 and stats(r)["reconciled"] == 1 and stats(r)["reclaimed"] == 2


def test_consumer_name_reuse_replays_its_own_pending_entries(r, service_factory):
    r.xgroup_create(INTENTS, GROUP, id="0", mkstream=True)
    for i in range(5):
        xadd(r, intent(i))
    r.xreadgroup(GROUP, "exec-fixed", {INTENTS: ">"}, count=5)  # an earlier life of this name took them
    service_factory(CONSUMER_NAME="exec-fixed")  # long CLAIM_IDLE_MS: only the replay can finish them
    wait_until(lambda: drained(r, 5), timeout=10)
    assert len(results(r)) == 5



def test_prometheus_metrics_count_outcomes(r, service_factory):
    import urllib.request

    from support import free_port

    for i in range(30):
        xadd(r, intent(i))
    xadd(r, b"{broken")
    port = free_port()
    service_factory(METRICS_PORT=port, PAPER_LATENCY_MS=1)
    wait_until(lambda: drained(r, 31))

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    from prometheus_client.parser import text_string_to_metric_families

    def samples() -> dict:
        found = {}
        for family in text_string_to_metric_families(scrape()):
            for sample in family.samples:
                assert sample.labels.get("stream", INTENTS) == INTENTS and sample.labels.get("group", GROUP) == GROUP
                found[(sample.name, sample.labels.get("outcome"))] = sample.value
        return found

    got = wait_until(lambda: (m := samples()).get(("quantum_execution_intents_total", "executed")) == 30 and m,
                     timeout=5, what="metrics to show 30 executed")
    assert got[("quantum_execution_intents_total", "invalid")] == 1
    assert got[("quantum_execution_latency_seconds_count", None)] == 30
    assert ("quantum_execution_in_flight", None) in got


def test_idle_consumers_holding_nothing_are_removed_and_the_others_kept(r):
    from consumer.config import Config
    from consumer.streams import StreamIO

    cfg = Config.from_env({"CONSUMER_NAME": "me"})
    io = StreamIO(r, cfg)
    io.ensure_group()
    xadd(r, intent(1))
    r.xreadgroup(GROUP, "holds-one", {INTENTS: ">"}, count=1)
    r.xgroup_createconsumer(INTENTS, GROUP, "long-gone")
    r.xgroup_createconsumer(INTENTS, GROUP, "me")
    wait_until(lambda: all(c["idle"] > 20 for c in r.xinfo_consumers(INTENTS, GROUP)), what="consumers to idle")
    assert io.delete_idle_consumers(idle_ms=10) == ["long-gone"]
    assert {c["name"] for c in r.xinfo_consumers(INTENTS, GROUP)} == {b"holds-one", b"me"}
