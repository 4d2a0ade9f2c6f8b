"""The execution result document (schemas/execution_result.schema.json), built by pure functions.

Kept apart from the loop so the contract's one writer can be read and tested without Redis or a venue: the same Work
and Outcome always give the same document.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from .work import Outcome, Work

FAILED_STATUSES = frozenset({"REJECTED", "FAILED"})

_ISO_CACHE: dict[int, str] = {}  # millisecond -> text: a batch's results share their few distinct timestamps
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=) builds a new encoder per call


def iso(epoch: float) -> str:
    """RFC 3339 UTC text with milliseconds and a ``Z`` (``2026-11-29T10:00:00.123Z``)."""
    ms = int(epoch * 1000)
    text = _ISO_CACHE.get(ms)
    if text is None:
        if len(_ISO_CACHE) >= 256:
            _ISO_CACHE.clear()
        text = datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
        text = _ISO_CACHE[ms] = text.replace("+00:00", "Z")
    return text


def result_document(work: Work, outcome: Outcome, executor: str, consumer: str) -> dict[str, Any]:
    """The result of one executed intent, as published on the result stream."""
    report = outcome.report
    intent = work.intent
    return {
        "intent_id": work.intent_id,
        "status": report.status,
        "symbol": intent["symbol"],
        "side": intent["side"],
        "qty": intent["qty"],
        "filled_qty": report.filled_qty,
        "avg_price": report.avg_price,
        "executor": executor,
        "client_order_id": work.intent_id,
        "venue_order_id": report.venue_order_id,
        "source_entry_id": work.entry_id.decode(),
        "consumer": consumer,
        "received_at": iso(work.received_at),
        "executed_at": iso(outcome.finished),
        "latency_ms": round((outcome.finished - outcome.started) * 1000, 3),
        "intent_age_ms": round((work.received_at - work.created) * 1000, 1),
        "reconciled": outcome.reconciled,
        "error": report.error,
    }


def encode(document: dict[str, Any]) -> bytes:
    """Compact JSON bytes: the ``payload`` field of the result stream entry."""
    return _JSON.encode(document).encode()
