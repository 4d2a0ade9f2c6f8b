"""The execution result document (schemas/execution_result.schema.json), built by pure functions.

Kept apart from the loop so the contract's one writer can be read and tested without Redis or a venue: the same Work
and Outcome always give the same document.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

from .work import Outcome, Work

FAILED_STATUSES = frozenset({"REJECTED", "FAILED"})

_ISO_CACHE: dict[int, str] = {}  # millisecond -> text: a batch's results share their few distinct timestamps
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=) builds a new encoder per call


def _made_once(reference: json.JSONEncoder) -> Callable[[Any], str]:
    """``reference.encode`` without the C encoder it builds on every call (a third of the cost of a result): the same
    C encoder, built once. Its circular-reference check is off: a result document is a flat dict built just before.
    Where the C encoder is missing or would write other text than the reference, the reference itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    strings = json.encoder.encode_basestring_ascii if reference.ensure_ascii else json.encoder.encode_basestring
    try:
        once = make(None, reference.default, strings, None, reference.key_separator,  # type: ignore[misc]
                    reference.item_separator, reference.sort_keys, reference.skipkeys, reference.allow_nan)
    except TypeError:  # None, or another signature
        return reference.encode

    def encode(document: Any) -> str:
        return "".join(once(document, 0))

    sample = {"id": "a\u00e9\n\"b", "qty": 0.1, "n": 10 ** 20, "none": None, "yes": True, "list": [1.5e-07, "x"]}
    return encode if encode(sample) == reference.encode(sample) else reference.encode


_encode = _made_once(_JSON)


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
    return _encode(document).encode()
