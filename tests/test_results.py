"""The result document is a pure function of a Work and its Outcome: checked against the contract, no Redis."""

from __future__ import annotations

import json
from datetime import datetime

from consumer.executors import Report
from consumer.results import encode, iso, result_document
from consumer.validation import SchemaValidator, load_schema
from consumer.work import Outcome, Work
from support import ROOT, intent

RESULT_SCHEMA = SchemaValidator(load_schema(ROOT / "schemas" / "execution_result.schema.json"))
RECEIVED = 1_796_000_000.25  # 2026-11-30T...: a fixed clock, so every field is known in advance


def work(n: int = 1, **overrides) -> Work:
    return Work(b"1796000000000-7", intent(n, **overrides), RECEIVED, RECEIVED - 0.0405)


def test_a_fill_becomes_a_valid_document_with_every_field_derived():
    report = Report(status="FILLED", filled_qty=0.5, avg_price=64000.5, venue_order_id="v-1")
    doc = result_document(work(), Outcome(report, RECEIVED + 0.001, RECEIVED + 0.0032345, False), "paper", "qx-1")
    assert RESULT_SCHEMA.is_valid(doc), RESULT_SCHEMA.reason(doc)
    assert doc == {
        "intent_id": "test-00000001", "status": "FILLED", "symbol": "BTCUSDT", "side": "BUY", "qty": 0.5,
        "filled_qty": 0.5, "avg_price": 64000.5, "executor": "paper", "client_order_id": "test-00000001",
        "venue_order_id": "v-1", "source_entry_id": "1796000000000-7", "consumer": "qx-1",
        "received_at": iso(RECEIVED), "executed_at": iso(RECEIVED + 0.0032345), "latency_ms": 2.234,
        "intent_age_ms": 40.5, "reconciled": False, "error": None,
    }


def test_timestamps_are_rfc3339_utc_with_milliseconds():
    text = iso(RECEIVED)
    assert text.endswith(".250Z") and len(text) == len("2026-11-30T00:00:00.250Z")
    assert datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() == RECEIVED
    assert iso(RECEIVED + 0.0009) == text, "sub-millisecond parts are cut, not rounded up"


def test_a_failed_reconciled_outcome_keeps_its_error_and_flag():
    report = Report(status="FAILED", error="ConnectionError: venue down")
    doc = result_document(work(2, side="SELL"), Outcome(report, RECEIVED, RECEIVED, True), "exchange-x", "qx-2")
    assert RESULT_SCHEMA.is_valid(doc), RESULT_SCHEMA.reason(doc)
    assert (doc["status"], doc["side"], doc["filled_qty"], doc["avg_price"]) == ("FAILED", "SELL", 0.0, None)
    assert (doc["error"], doc["reconciled"], doc["latency_ms"]) == ("ConnectionError: venue down", True, 0.0)


def test_encoding_is_compact_json_and_the_function_is_pure():
    outcome = Outcome(Report(status="FILLED", filled_qty=0.5), RECEIVED, RECEIVED + 0.01, False)
    first = encode(result_document(work(), outcome, "paper", "qx-1"))
    again = encode(result_document(work(), outcome, "paper", "qx-1"))
    assert first == again
    assert b" " not in first and json.loads(first)["latency_ms"] == 10.0
