"""Admission: turns entries read from the intent stream into claimed Work and the outcomes that need no venue.

Each entry meets its fate here, in order: deleted or delivered too often (dead letter), stale by its entry id, stale
by the intent's timestamp, invalid (dead letter with the reason), a duplicate of an intent already claimed (acked), or
claimed for execution. Every outcome except "claimed" goes into the loop's Batch and is acked in its next commit; the
claimed Work goes to the venue pool. Nothing here talks to a venue, and the only Redis calls are one idempotency
claim per batch and, for redelivered entries, one read of their delivery counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .config import Config
from .idempotency import Claim, IdempotencyStore
from .stale import StalePolicy, ThrottledLog, entry_ms
from .streams import Batch, Entry, StreamIO
from .validation import IntentValidator, InvalidIntent, parse_payload, parse_timestamp
from .work import Work

log = logging.getLogger("quantum.execution")


class Admission:
    """Sorts a read batch; holds the stale and dead-letter log throttles so a drained backlog logs sparingly."""

    def __init__(self, cfg: Config, io: StreamIO, idem: IdempotencyStore) -> None:
        self.cfg = cfg
        self.io = io
        self.idem = idem
        self.validator = IntentValidator(cfg.schema_dir, cfg.max_payload_bytes)
        self.stale = StalePolicy(cfg.intent_max_age_sec)
        self._stale_log = ThrottledLog(log, cfg.stale_log_interval_sec)
        self._dead_log = ThrottledLog(log, cfg.stale_log_interval_sec)

    def admit(self, entries: list[Entry], batch: Batch, *, redelivered: bool = False, held: int = 0) -> list[Work]:
        """Decide each entry's fate: stale, dead letter, duplicate (all into ``batch``), or claimed (returned).

        ``redelivered`` entries (reclaimed, or this consumer's own from an earlier life) are checked entry by entry
        and against their delivery counts; ``held`` is only reported in the PIPELINE_DIAG line.
        """
        now = time.time()
        now_ms = int(now * 1000)
        deliveries: dict[bytes, int] = {}
        if redelivered:
            deliveries = self.io.delivery_counts([e for e, _ in entries])
        elif entries and self._all_stale(entries, batch, now_ms, held):
            return []
        candidates: list[Work] = []
        stale = invalid = 0
        # New entries come in id order: when the oldest is not stale by its id, none is, and the per-entry id
        # check is skipped (the intent's own timestamp is still checked below).
        check_ids = redelivered or (bool(entries) and
                                    self.stale.entry_age_if_stale(entries[0][0], now_ms) is not None)
        for entry_id, fields in entries:
            if fields is None:
                self._dead(batch, entry_id, b"", "entry was deleted from the stream before it was processed")
                continue
            n = deliveries.get(entry_id, 1)
            if n > self.cfg.max_deliveries:
                self._dead(batch, entry_id, fields.get(b"payload", b""),
                           f"delivered {n} times (MAX_DELIVERIES={self.cfg.max_deliveries})")
                continue
            age = self.stale.entry_age_if_stale(entry_id, now_ms) if check_ids else None
            if age is not None:
                self._drop_stale(batch, entry_id, fields, age)
                stale += 1
                continue
            raw = fields.get(b"payload")
            try:
                doc = parse_payload(raw, self.cfg.max_payload_bytes)
                created = parse_timestamp(doc.get("timestamp"))
                if created is not None and self.stale.is_stale(created, now):
                    self._drop_stale(batch, entry_id, fields, now - created, doc)
                    stale += 1
                    continue
                created = self.validator.validate(doc, created)
                if created - now > self.cfg.clock_skew_sec:
                    raise InvalidIntent(f"timestamp: {created - now:.0f}s in the future "
                                        f"(INTENT_CLOCK_SKEW_SEC={self.cfg.clock_skew_sec})")
            except InvalidIntent as exc:
                self._dead(batch, entry_id, raw if raw is not None else b"", exc.reason, invalid=True)
                invalid += 1
                continue
            candidates.append(Work(entry_id, doc, now, created))
        claimed = self._claim(candidates, batch)
        if self.cfg.pipeline_diag:
            log.info("pipeline_batch read=%d stale=%d invalid=%d duplicate=%d claimed=%d redelivered=%s held=%d",
                     len(entries), stale, invalid, len(candidates) - len(claimed), len(claimed), redelivered,
                     held + len(claimed))
        return claimed

    def _claim(self, candidates: list[Work], batch: Batch) -> list[Work]:
        """One idempotency round trip for the batch: duplicates are acked, a redelivered claim is reconciled."""
        verdicts = self.idem.claim([w.claim_request() for w in candidates])
        claimed: list[Work] = []
        for work, verdict in zip(candidates, verdicts):
            if verdict is Claim.DUPLICATE:
                batch.acks.append(work.entry_id)
                batch.counters["duplicate"] += 1
                continue
            work.reconcile = verdict is Claim.REDELIVERED
            claimed.append(work)
        return claimed

    def _all_stale(self, entries: list[Entry], batch: Batch, now_ms: int, held: int) -> bool:
        """The backlog fast path: a batch whose newest entry id is past the TTL is stale as a whole.

        Entry ids only grow within a stream and an intent is never younger than its entry, so one id decides for the
        batch: acked in the next commit and counted, without a look at any payload or a per-entry step.
        """
        age = self.stale.entry_age_if_stale(entries[-1][0], now_ms)
        if age is None or any(fields is None for _, fields in entries):
            return False
        batch.acks.extend([entry_id for entry_id, _ in entries])
        batch.counters["stale"] += len(entries)
        first_id, first_fields = entries[0]
        self._drop_stale_log(first_fields, (now_ms - entry_ms(first_id)) / 1000.0)
        self._stale_log.suppress(len(entries) - 1)
        if self.cfg.pipeline_diag:
            log.info("pipeline_batch read=%d stale=%d invalid=0 duplicate=0 claimed=0 redelivered=False held=%d",
                     len(entries), len(entries), held)
        return True

    def _drop_stale(self, batch: Batch, entry_id: bytes, fields: dict[bytes, bytes], age: float,
                    doc: dict[str, Any] | None = None) -> None:
        batch.acks.append(entry_id)
        batch.counters["stale"] += 1
        self._drop_stale_log(fields, age, doc)

    def _drop_stale_log(self, fields: dict[bytes, bytes], age: float, doc: dict[str, Any] | None = None) -> None:
        if not self._stale_log.ready():
            return
        if doc is None:  # only the line that is printed pays for reading the payload
            try:
                doc = parse_payload(fields.get(b"payload"), self.cfg.max_payload_bytes)
            except InvalidIntent:
                doc = {}
        intent_id = doc.get("intent_id", "?") if isinstance(doc.get("intent_id"), str) else "?"
        self._stale_log.log("STALE_INTENT_DROP intent_id=%s age_sec=%d (exceeds %ds TTL)", intent_id[:64], age,
                            self.cfg.intent_max_age_sec)

    def _dead(self, batch: Batch, entry_id: bytes, payload: bytes, reason: str, *, invalid: bool = False) -> None:
        batch.dead.append((payload, reason, entry_id))
        batch.acks.append(entry_id)
        batch.counters["dead_lettered"] += 1
        if invalid:
            batch.counters["invalid"] += 1
        if self._dead_log.ready():  # the dead-letter stream keeps every reason; the log only points at it
            self._dead_log.log("intent_dead_lettered entry_id=%s stream=%s reason=%r", entry_id.decode(),
                               self.cfg.dlq_stream, reason[:200])
