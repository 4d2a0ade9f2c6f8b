"""Turning stream bytes into a trusted intent, or into a readable reason why not.

Two validators read the same schema file: a compiled one (jsonschema-rs, about 1 µs per intent) gives the verdict on
the hot path, and the reference implementation (jsonschema) explains a rejection in words that name the field. The
tests prove both give the same verdicts on the whole corpus. The reference's ``pattern`` is made ECMA-262 conformant
(``$`` does not match before a trailing newline), as JSON Schema specifies and the compiled validator does.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import jsonschema
from jsonschema import Draft202012Validator

try:  # the compiled validator is an optimisation, never a different contract
    import jsonschema_rs
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    jsonschema_rs = None


class InvalidIntent(ValueError):
    """The entry can never be executed; ``reason`` goes to the dead-letter stream."""

    @property
    def reason(self) -> str:
        return str(self.args[0])


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Iterator[jsonschema.ValidationError]:
    if validator.is_type(instance, "string") and not re.search(_ecma(pattern), instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_ECMA_CACHE: dict[str, str] = {}


def _ecma(pattern: str) -> str:
    """Python's ``$`` also matches before a final newline; ECMA-262's does not."""
    out = _ECMA_CACHE.get(pattern)
    if out is None:
        out = pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith(r"\$") else pattern
        _ECMA_CACHE[pattern] = out
    return out


ReferenceValidator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def load_schema(path: Path) -> dict:
    with open(path, "rb") as fh:
        return json.load(fh)


class SchemaValidator:
    """Verdict from the compiled validator, reasons from the reference one."""

    def __init__(self, schema: dict, *, compiled: bool = True) -> None:
        ReferenceValidator.check_schema(schema)
        self.schema = schema
        self._reference = ReferenceValidator(schema)
        self._fast = None
        if compiled and jsonschema_rs is not None:
            self._fast = jsonschema_rs.validator_for(schema, validate_formats=False)

    @property
    def engine(self) -> str:
        return "jsonschema-rs" if self._fast is not None else "jsonschema"

    def is_valid(self, doc: Any) -> bool:
        if self._fast is not None:
            try:
                return self._fast.is_valid(doc)
            except (ValueError, OverflowError, TypeError):
                pass  # e.g. an integer beyond 64 bits: let the reference decide
        return self._reference.is_valid(doc)

    def reason(self, doc: Any) -> str:
        """One line naming the failing field, for the dead-letter stream and the bridge's refusal."""
        error = jsonschema.exceptions.best_match(self._reference.iter_errors(doc))
        if error is None:
            return "rejected by the compiled validator only"  # never seen; kept readable if it happens
        path = [str(p) for p in error.absolute_path]
        message = error.message
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = next((p for p in error.validator_value if p not in error.instance), None)
            if missing is not None:
                path, message = path + [missing], "is required" + (
                    " for a LIMIT order" if missing == "price" else "")
        elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
            known = set(error.schema.get("properties", {}))
            extra = sorted(k for k in error.instance if k not in known)
            if extra:
                path, message = path + [extra[0]], "is not a known field (unknown fields are rejected)"
        where = "/".join(path) or "(document)"
        if len(message) > 300:
            message = message[:297] + "..."
        return f"{where}: {message}"

    def check(self, doc: Any) -> None:
        if not self.is_valid(doc):
            raise InvalidIntent(self.reason(doc))


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidIntent(f"payload has a number out of range: {text[:40]}")
    return value


def _reject_constant(name: str) -> Any:
    raise InvalidIntent(f"payload has {name}, which is not JSON")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise InvalidIntent(f"payload repeats the key {dup!r}")
    return doc


_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_reject_constant,
                            object_pairs_hook=_no_duplicate_keys)


def parse_payload(raw: bytes | None, max_bytes: int) -> dict:
    """Bytes of the ``payload`` field to a JSON object; InvalidIntent says what is wrong with them."""
    if raw is None:
        raise InvalidIntent("entry has no 'payload' field")
    if len(raw) > max_bytes:
        raise InvalidIntent(f"payload is {len(raw)} bytes (MAX_PAYLOAD_BYTES={max_bytes})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidIntent(f"payload is not UTF-8: byte {exc.start} cannot be decoded") from None
    try:
        doc = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidIntent(f"payload is not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InvalidIntent("payload nests too deeply") from None
    if not isinstance(doc, dict):
        raise InvalidIntent(f"payload is a JSON {type(doc).__name__.replace('dict', 'object')}, not an object")
    return doc


def parse_timestamp(value: Any) -> float | None:
    """RFC 3339 with offset to epoch seconds; None when it is not one (the schema then names the problem)."""
    if not isinstance(value, str) or len(value) < 20 or value[10:11] != "T":
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


class IntentValidator:
    """The whole admission check of one intent: bytes, JSON, schema, a real date."""

    def __init__(self, schema_dir: Path, max_payload_bytes: int, *, compiled: bool = True) -> None:
        self.schema = SchemaValidator(load_schema(schema_dir / "trade_intent.schema.json"), compiled=compiled)
        self.max_payload_bytes = max_payload_bytes

    def validate(self, doc: dict, created: float | None = None) -> float:
        """Raise InvalidIntent, or return the intent's creation time in epoch seconds.

        ``created``: ``parse_timestamp(doc["timestamp"])`` when the caller has it already (the service does).
        """
        self.schema.check(doc)
        if created is None:
            created = parse_timestamp(doc["timestamp"])
        if created is None:
            raise InvalidIntent(f"timestamp: {doc['timestamp']!r} is not a valid RFC 3339 date-time")
        return created

    def validate_bytes(self, raw: bytes | None) -> tuple[dict, float]:
        doc = parse_payload(raw, self.max_payload_bytes)
        return doc, self.validate(doc)
