"""Admission against a real redis-server, without the service process: each entry's fate, and what the batch holds.

Entries are read through the service's own StreamIO, exactly as the loop reads them; outcomes land in a Batch that
is not committed, so every assertion is about the decision alone.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from consumer.admission import Admission
from consumer.config import Config
from consumer.idempotency import IdempotencyStore
from consumer.streams import Batch, StreamIO
from support import IDEM_PREFIX, INTENTS, intent, xadd


@pytest.fixture
def cfg(redis_url) -> Config:
    return Config.from_env({"REDIS_URL": redis_url, "CONSUMER_NAME": "adm-1", "MAX_DELIVERIES": "2",
                            "STALE_LOG_INTERVAL_SEC": "3600"})


@pytest.fixture
def io(r, cfg) -> StreamIO:
    stream_io = StreamIO(r, cfg)
    stream_io.ensure_group()
    return stream_io


@pytest.fixture
def admission(r, cfg, io) -> Admission:
    return Admission(cfg, io, IdempotencyStore(r, cfg.idem_prefix, cfg.idempotency_ttl_sec, cfg.consumer))


def old_entries(r, n: int, age_sec: int = 3600, first: int = 0) -> list[bytes]:
    old_ms = int((time.time() - age_sec) * 1000)
    return [r.xadd(INTENTS, {"payload": json.dumps(intent(first + i, age_sec=age_sec))}, id=f"{old_ms}-{i + 1}")
            for i in range(n)]


def test_a_batch_stale_by_its_newest_id_is_acked_whole_without_a_claim(r, io, admission, caplog):
    ids = old_entries(r, 30)
    batch = Batch()
    with caplog.at_level(logging.WARNING, logger="quantum.execution"):
        claimed = admission.admit(io.read(50, None), batch)
    assert claimed == []
    assert batch.acks == ids and batch.counters == {"stale": 30}
    assert batch.results == [] and batch.dead == []
    assert not r.keys(f"{IDEM_PREFIX}*"), "a stale intent is never claimed"
    drops = [rec.getMessage() for rec in caplog.records if "STALE_INTENT_DROP" in rec.getMessage()]
    assert len(drops) == 1 and "intent_id=test-00000000" in drops[0] and "(exceeds 600s TTL)" in drops[0]


def test_old_ids_before_a_fresh_one_are_stale_each_and_the_fresh_one_is_claimed(r, io, admission):
    stale_ids = old_entries(r, 3)
    fresh = xadd(r, intent(9))
    batch = Batch()
    claimed = admission.admit(io.read(50, None), batch)
    assert [w.entry_id for w in claimed] == [fresh] and claimed[0].intent_id == "test-00000009"
    assert batch.acks == stale_ids and batch.counters == {"stale": 3}
    assert r.get(f"{IDEM_PREFIX}test-00000009") == f"claimed|{fresh.decode()}|adm-1".encode()


def test_a_new_entry_with_an_old_timestamp_is_stale_by_the_timestamp(r, io, admission):
    entry = xadd(r, intent(1, age_sec=700))
    batch = Batch()
    assert admission.admit(io.read(10, None), batch) == []
    assert batch.acks == [entry] and batch.counters == {"stale": 1}


@pytest.mark.parametrize("doc, reason", [
    (intent(1, side="HOLD"), "side"),
    (intent(2, qty=None), "qty"),
    (intent(3, age_sec=-3600), "INTENT_CLOCK_SKEW_SEC=30"),
    ("{oops", "not JSON"),
])
def test_an_invalid_intent_becomes_a_dead_letter_with_its_reason(r, io, admission, doc, reason):
    entry = xadd(r, doc)
    raw = doc.encode() if isinstance(doc, str) else json.dumps(doc).encode()
    batch = Batch()
    assert admission.admit(io.read(10, None), batch) == []
    assert len(batch.dead) == 1
    payload, why, source = batch.dead[0]
    assert (payload, source) == (raw, entry) and reason in why, why
    assert batch.acks == [entry] and batch.counters == {"dead_lettered": 1, "invalid": 1}


def test_an_entry_delivered_too_often_is_dead_lettered_not_executed(r, cfg, io, admission):
    entry = xadd(r, intent(1))
    io.read(10, None)
    for _ in range(cfg.max_deliveries):  # read again from the pending list, as restarts of this consumer would
        history = io.read_history(b"0-0", 10)
    batch = Batch()
    assert admission.admit(history, batch, redelivered=True) == []
    assert batch.dead[0][2] == entry and "delivered 3 times (MAX_DELIVERIES=2)" in batch.dead[0][1]
    assert batch.counters == {"dead_lettered": 1}, "too many deliveries is not an invalid intent"


def test_a_second_entry_with_a_known_intent_id_is_a_duplicate(r, io, admission):
    first, second = xadd(r, intent(5)), xadd(r, intent(5))
    batch = Batch()
    claimed = admission.admit(io.read(10, None), batch)
    assert [w.entry_id for w in claimed] == [first] and not claimed[0].reconcile
    assert batch.acks == [second] and batch.counters == {"duplicate": 1}
    third = xadd(r, intent(5))  # published again in a later batch: still a duplicate
    assert admission.admit(io.read(10, None), batch) == [] and batch.acks == [second, third]


def test_an_entry_claimed_before_a_crash_is_claimed_again_for_reconciliation(r, io, admission):
    entry = xadd(r, intent(7))
    assert [w.entry_id for w in admission.admit(io.read(10, None), Batch())] == [entry]  # claimed, then a crash
    batch = Batch()
    claimed = admission.admit(io.read_history(b"0-0", 10), batch, redelivered=True)
    assert [w.entry_id for w in claimed] == [entry] and claimed[0].reconcile is True
    assert not batch, "nothing to commit: the venue is asked first"
