"""Schema gate: the contract every intent must meet before anything is deployed.

Runs under pytest, and alone as ``python tests/test_trade_intent_schema.py`` (the deploy's pre-flight), which prints
``✅ All schema validation tests PASSED - safe to deploy`` and exits 0, or lists the failures and exits 1.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":  # run alone (the deploy's pre-flight): pytest.ini's path is not there, so name the root
    sys.path.insert(0, str(ROOT))

import jsonschema  # noqa: E402

from consumer.validation import IntentValidator, InvalidIntent, SchemaValidator, load_schema  # noqa: E402
from support import changed  # noqa: E402

SCHEMA_DIR = ROOT / "schemas"
VALIDATOR = IntentValidator(SCHEMA_DIR, 16_384)

VALID = {
    "intent_id": "ai-20260121-000001", "symbol": "BTCUSDT", "side": "BUY", "order_type": "LIMIT", "qty": 0.25,
    "price": 64000.5, "timestamp": "2026-01-21T00:05:23.120Z", "source": "ai-engine", "confidence": 0.82,
}


def with_(**changes):
    return changed(VALID, **changes)


def rejected(doc, field: str) -> None:
    try:
        VALIDATOR.validate(doc)
    except InvalidIntent as exc:
        assert field in exc.reason, f"reason {exc.reason!r} does not name {field!r}"
        return
    raise AssertionError(f"accepted an invalid intent: {doc}")


def test_schemas_are_valid_draft_2020_12():
    for name in ("trade_intent.schema.json", "execution_result.schema.json"):
        schema = load_schema(SCHEMA_DIR / name)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_valid_intents_pass():
    VALIDATOR.validate(VALID)
    VALIDATOR.validate(with_(order_type="MARKET", price=None))
    VALIDATOR.validate(with_(timestamp="2026-01-21T00:05:23+05:30", meta={"model": "v7", "score": 1.5}))


def test_required_fields():
    for field in ("intent_id", "symbol", "side", "order_type", "qty", "timestamp"):
        rejected(with_(**{field: None}), field)
    rejected(with_(price=None), "price")  # a LIMIT order needs its price


def test_validation_rules():
    rejected(with_(intent_id="short"), "intent_id")
    rejected(with_(intent_id="x" * 65), "intent_id")
    rejected(with_(intent_id="has space 123"), "intent_id")
    rejected(with_(intent_id="abcdefgh\n"), "intent_id")
    rejected(with_(symbol="btcusdt"), "symbol")
    rejected(with_(side="HOLD"), "side")
    rejected(with_(order_type="STOP"), "order_type")
    rejected(with_(qty=0), "qty")
    rejected(with_(qty=-1), "qty")
    rejected(with_(price=0), "price")
    rejected(with_(confidence=1.5), "confidence")
    rejected(with_(timestamp="2026-01-21 00:05:23"), "timestamp")
    rejected(with_(timestamp="2026-01-21T00:05:23"), "timestamp")  # no offset
    rejected(with_(timestamp="2026-13-21T00:05:23Z"), "timestamp")  # matches the pattern, not a real date
    rejected(with_(unexpected="x"), "unexpected")
    rejected(with_(meta={"nested": {"a": 1}}), "meta")


def test_type_safety():
    rejected(with_(qty="0.25"), "qty")
    rejected(with_(qty=True), "qty")
    rejected(with_(price=[1]), "price")
    rejected(with_(intent_id=12345678), "intent_id")
    rejected(with_(symbol=123), "symbol")
    rejected(with_(reduce_only="yes"), "reduce_only")


def test_result_schema_accepts_a_result():
    schema = SchemaValidator(load_schema(SCHEMA_DIR / "execution_result.schema.json"))
    result = {"intent_id": VALID["intent_id"], "status": "FILLED", "symbol": "BTCUSDT", "side": "BUY", "qty": 0.25,
              "filled_qty": 0.25, "avg_price": 64000.5, "executor": "paper", "client_order_id": VALID["intent_id"],
              "venue_order_id": "paper-1", "source_entry_id": "1700000000000-0", "consumer": "h-1",
              "received_at": "2026-01-21T00:05:23.200Z", "executed_at": "2026-01-21T00:05:23.210Z",
              "latency_ms": 10.0, "intent_age_ms": 80.0, "reconciled": False, "error": None}
    assert schema.is_valid(result)
    assert not schema.is_valid({**result, "status": "MAYBE"})


def test_publish_consume_round_trip():
    """Through a real redis-server: the bridge refuses what the schema refuses and the bytes arrive unchanged."""
    from support import INTENTS, RedisServer

    from consumer.bridge import Publisher

    server = RedisServer().start()
    try:
        client = server.client()
        pub = Publisher(client, INTENTS, VALIDATOR.schema)
        entry_id = pub.publish(VALID)
        try:
            pub.publish(with_(side="HOLD"))
            raise AssertionError("the bridge published an invalid intent")
        except InvalidIntent as exc:
            assert "side" in exc.reason
        entries = client.xrange(INTENTS)
        assert len(entries) == 1 and entries[0][0].decode() == entry_id
        doc, _created = VALIDATOR.validate_bytes(entries[0][1][b"payload"])
        assert doc == VALID
    finally:
        server.cleanup()


def main() -> int:
    tests = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_") and callable(fn)]
    failures = []
    for name, fn in tests:
        try:
            fn()
            print(f"  ok    {name}")
        except Exception:  # noqa: BLE001 - a gate reports every failure, not the first
            failures.append(name)
            print(f"  FAIL  {name}\n{traceback.format_exc()}")
    if failures:
        print(f"❌ {len(failures)} of {len(tests)} schema validation tests FAILED - do not deploy: {', '.join(failures)}")
        return 1
    print("✅ All schema validation tests PASSED - safe to deploy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
