"""The compiled validator must give the reference's verdict on every document we can think of."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from consumer.validation import IntentValidator, InvalidIntent, SchemaValidator, load_schema, parse_payload

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = load_schema(ROOT / "schemas" / "trade_intent.schema.json")

BASE = {"intent_id": "corpus-000001", "symbol": "ETHUSDT", "side": "SELL", "order_type": "LIMIT", "qty": 1.5,
        "price": 3100.25, "timestamp": "2026-01-21T00:05:23.120Z"}

ODD_VALUES = [None, True, False, 0, -1, 1, 1.5, -0.0, 10**12, 10**12 + 1, 10**30, 2**64, -(2**70), "", " ", "x",
              "BTCUSDT", "btc", "BUY", "SELL", "MARKET", "LIMIT", "GTC", "abcdefgh", "abcdefgh\n", "\nabcdefgh",
              "a" * 64, "a" * 65, "ééééééééé", "2026-01-21T00:05:23Z", "2026-01-21T00:05:23.1234567Z",
              "2026-01-21T00:05:23+05:30", "2026-01-21T00:05:23", "2026-01-21T00:05:23Z\n", [], [1], {}, {"a": 1},
              {"a": {"b": 1}}, 0.5, 1e-9, 1e12]
FIELDS = list(BASE) + ["source", "confidence", "time_in_force", "reduce_only", "strategy_id", "meta", "extra"]


def corpus() -> list:
    docs: list = [BASE, {}, [], "x", 1, None]
    for field, value in itertools.product(FIELDS, ODD_VALUES):
        doc = dict(BASE)
        if value is None:
            doc.pop(field, None)
        else:
            doc[field] = value
        docs.append(doc)
    rng = random.Random(7)
    for _ in range(3000):  # random combinations of two or three odd fields
        doc = dict(BASE)
        for field in rng.sample(FIELDS, rng.randint(2, 3)):
            value = rng.choice(ODD_VALUES)
            if value is None:
                doc.pop(field, None)
            else:
                doc[field] = value
        docs.append(doc)
    docs.append({**BASE, "order_type": "MARKET", "price": None})
    docs.append({**BASE, "meta": {f"k{i}": i for i in range(17)}})
    docs.append({**BASE, "meta": {"bad key": 1}})
    docs.append({**BASE, "meta": {"k": "v" * 257}})
    return docs


def test_compiled_and_reference_agree_on_the_whole_corpus():
    fast = SchemaValidator(SCHEMA, compiled=True)
    reference = SchemaValidator(SCHEMA, compiled=False)
    assert fast.engine == "jsonschema-rs", "the compiled validator is part of the pinned requirements"
    docs = corpus()
    disagreements = [d for d in docs if fast.is_valid(d) != reference.is_valid(d)]
    assert not disagreements, f"{len(disagreements)} verdicts differ, first: {json.dumps(disagreements[0])[:300]}"
    verdicts = {fast.is_valid(d) for d in docs}
    assert verdicts == {True, False}, "the corpus must contain both valid and invalid documents"


def test_every_rejection_has_a_reason_naming_a_field():
    v = SchemaValidator(SCHEMA)
    for doc in corpus():
        if isinstance(doc, dict) and not v.is_valid(doc):
            reason = v.reason(doc)
            assert reason and len(reason) < 400
            assert ":" in reason


@pytest.mark.parametrize("raw, words", [
    (None, "no 'payload' field"),
    (b"not json", "not JSON"),
    (b"[1, 2]", "not an object"),
    (b'"text"', "not an object"),
    (b'{"qty": NaN}', "NaN"),
    (b'{"qty": Infinity}', "Infinity"),
    (b'{"qty": 1e999}', "out of range"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[" * 20000 + b"]" * 20000, "bytes"),
    (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
    (b'{"a": 1, "a": 2}', "repeats the key"),
])
def test_bad_bytes_are_named(raw, words):
    with pytest.raises(InvalidIntent) as err:
        parse_payload(raw, 16_384)
    assert words in err.value.reason


def test_unreal_dates_are_rejected_after_the_schema():
    v = IntentValidator(ROOT / "schemas", 16_384)
    with pytest.raises(InvalidIntent, match="timestamp"):
        v.validate({**BASE, "timestamp": "2026-02-30T00:00:00Z"})
