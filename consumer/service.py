"""The execution service's core loop: read, sort, claim, execute, commit.

One thread owns every stream operation and every decision; a ThreadPoolExecutor of EXEC_CONCURRENCY workers only
talks to the venue. The loop never holds more than EXEC_CONCURRENCY + XREADGROUP_COUNT unacknowledged intents, so
memory stays flat whatever the backlog, and an entry is acked only in the same atomic commit that records its outcome.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import redis

from . import sdnotify
from .config import Config
from .executors import Executor, Order, OutcomeUnknown, Report, load_executor
from .idempotency import Claim, ClaimRequest, IdempotencyStore
from .metrics import Metrics
from .ratelimit import FixedWindowLimiter
from .stale import StalePolicy, ThrottledLog, entry_ms
from .streams import Batch, Entry, StreamIO
from .validation import IntentValidator, InvalidIntent, parse_payload, parse_timestamp

log = logging.getLogger("quantum.execution")

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
              redis.exceptions.ReadOnlyError)
FAILED_STATUSES = frozenset({"REJECTED", "FAILED"})
FAST_VENUE_SEC = 0.0005  # venue time per order below which granted intents go to the pool as one chunk


@dataclass(slots=True)
class Work:
    """A valid, fresh, claimed intent on its way to the venue."""

    entry_id: bytes
    intent: dict[str, Any]
    received_at: float
    created: float
    reconcile: bool = False

    @property
    def intent_id(self) -> str:
        return self.intent["intent_id"]

    def claim_request(self) -> ClaimRequest:
        return ClaimRequest(self.intent_id, self.entry_id.decode())


@dataclass(slots=True)
class Outcome:
    report: Report
    started: float
    finished: float
    reconciled: bool


_ISO_CACHE: dict[int, str] = {}  # millisecond -> text: a batch's results share their few distinct timestamps
_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps(..., separators=) builds a new encoder per call


def _iso(epoch: float) -> str:
    ms = int(epoch * 1000)
    text = _ISO_CACHE.get(ms)
    if text is None:
        if len(_ISO_CACHE) >= 256:
            _ISO_CACHE.clear()
        text = datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="milliseconds")
        text = _ISO_CACHE[ms] = text.replace("+00:00", "Z")
    return text


class Service:
    """Consumes intents until ``stop()``; ``run()`` returns the process exit code."""

    def __init__(self, cfg: Config, client: redis.Redis | None = None, executor: Executor | None = None) -> None:
        self.cfg = cfg
        self.r = client or redis.Redis.from_url(cfg.redis_url, socket_timeout=cfg.block_ms / 1000 + 5,
                                                socket_connect_timeout=2, health_check_interval=30)
        self.io = StreamIO(self.r, cfg)
        self.validator = IntentValidator(cfg.schema_dir, cfg.max_payload_bytes)
        self.stale = StalePolicy(cfg.intent_max_age_sec)
        self.idem = IdempotencyStore(self.r, cfg.idem_prefix, cfg.idempotency_ttl_sec, cfg.consumer)
        self.limiter = FixedWindowLimiter(self.r, cfg.rate_prefix, cfg.rate_limit_max, cfg.rate_limit_window_sec)
        self.executor = executor or load_executor(cfg, self.r)
        self.pool = ThreadPoolExecutor(max_workers=cfg.exec_concurrency, thread_name_prefix="exec")
        self._stopping = threading.Event()
        self._ready: deque[Work] = deque()  # claimed, waiting for a rate-limit token
        self._futures: dict[Future, list[Work]] = {}  # at the venue, one pool task per chunk
        self._running = 0  # intents in those chunks
        self._venue_sec = 1.0  # venue time per order, smoothed; assumed slow until measured
        self._batch = Batch()  # outcomes not yet committed
        self._latencies: list[float] = []  # executor call durations of the batch, for the metrics
        self.metrics = Metrics(cfg.intent_stream, cfg.group, cfg.consumer)
        self._rate_wait_until = 0.0
        self._next_heartbeat = 0.0
        self._next_reclaim = 0.0
        self._next_gc = time.monotonic() + 600
        self._backoff = 0.0
        self._stale_log = ThrottledLog(log, cfg.stale_log_interval_sec)
        self._rate_log = ThrottledLog(log, cfg.stale_log_interval_sec)
        self._redis_log = ThrottledLog(log, 10.0)
        self._dead_log = ThrottledLog(log, cfg.stale_log_interval_sec)
        self._reclaim_log = ThrottledLog(log, 10.0)
        self._claim_cursor: bytes = b"0-0"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Signal handler: stop reading, finish what is in flight."""
        self._stopping.set()

    @property
    def held(self) -> int:
        return len(self._ready) + self._running

    def run(self) -> int:
        self._until_redis(self.io.ensure_group)
        if self._stopping.is_set():
            return 0
        sdnotify.notify("READY=1")
        self._replay_own_pending()
        while not self._stopping.is_set():
            self._guarded(self._tick)
        return self._shutdown()

    def _guarded(self, step) -> None:
        """Run one step; a Redis outage means back off and try again, never crash or drop work."""
        try:
            step()
            self._backoff = 0.0
        except REDIS_DOWN as exc:
            self._redis_down(exc)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("consumer_group_missing stream=%s group=%s action=recreate", self.cfg.intent_stream,
                        self.cfg.group)
            self._until_redis(self.io.ensure_group)

    def _redis_down(self, exc: Exception) -> None:
        self._backoff = min(5.0, max(0.1, self._backoff * 2))
        if self._redis_log.ready():
            self._redis_log.log("redis_unavailable error=%r retry_in_sec=%.1f held=%d uncommitted=%d",
                                str(exc)[:120], self._backoff, self.held, len(self._batch.acks))
        self._stopping.wait(self._backoff)

    def _until_redis(self, step) -> None:
        while not self._stopping.is_set():
            try:
                step()
                self._backoff = 0.0
                return
            except REDIS_DOWN as exc:
                self._redis_down(exc)

    def _shutdown(self) -> int:
        """Finish in-flight executions, commit them, give back claims never sent; bounded by SHUTDOWN_TIMEOUT_SEC."""
        sdnotify.notify("STOPPING=1")
        deadline = time.monotonic() + self.cfg.shutdown_timeout_sec
        unsent = list(self._ready)
        self._ready.clear()
        for fut, chunk in list(self._futures.items()):
            if fut.cancel():
                unsent.extend(chunk)
                del self._futures[fut]
                self._running -= len(chunk)
        while (self._futures or self._batch) and time.monotonic() < deadline:
            self._collect(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
            try:
                self._commit()
            except REDIS_DOWN as exc:
                self._redis_log.log("redis_unavailable_at_shutdown error=%r", str(exc)[:120])
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        try:
            released = self.idem.release([w.claim_request() for w in unsent])
        except REDIS_DOWN:
            released = 0  # the claims stay; redelivery reconciles them with the venue
        clean = not self._futures and not self._batch
        log.info("service_stopped clean=%s unsent_released=%d still_running=%d uncommitted=%d", clean, released,
                 self._running, len(self._batch.acks))
        self.pool.shutdown(wait=clean, cancel_futures=True)
        self.executor.close()
        return 0 if clean else 1

    # -- the loop ----------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.cfg.claim_idle_ms / 3000
        if now >= self._next_reclaim:
            more = self._reclaim()
            self._next_reclaim = now if more else now + max(1.0, self.cfg.claim_idle_ms / 2000)
        if now >= self._next_gc:
            self._gc_consumers()
            self._next_gc = now + 600
        self._dispatch()
        room = self.cfg.max_in_flight - self.held
        if room > 0 and (self.held == 0 or room >= max(1, self.cfg.xreadgroup_count // 2)):
            # The outcomes gathered so far are committed in the same round trip as this read (commit first).
            entries = self._commit_and_read(min(self.cfg.xreadgroup_count, room),
                                            None if self.held else self.cfg.block_ms)
            if entries:
                self._admit(entries)
                self._dispatch()
                self._collect(timeout=0)
                return
        self._commit()
        self._wait_for_progress()
        self._commit()

    def _wait_for_progress(self) -> None:
        if self._futures:
            self._collect(timeout=0.05)
        elif self._ready:
            self._stopping.wait(max(0.0, min(0.2, self._rate_wait_until - time.time())))

    def _replay_own_pending(self) -> None:
        """Entries this consumer name held in an earlier life (a fixed CONSUMER_NAME) are handled first."""
        after = b"0-0"
        while not self._stopping.is_set():
            entries: list[Entry] = []

            def read() -> None:
                nonlocal entries
                entries = self.io.read_history(after, self.cfg.xreadgroup_count)

            self._until_redis(read)
            if not entries:
                return
            after = entries[-1][0]
            self._admit(entries, redelivered=True)
            while self.held and not self._stopping.is_set():
                self._guarded(self._tick_no_read)

    def _tick_no_read(self) -> None:
        self._dispatch()
        self._wait_for_progress()
        self._commit()

    # -- sorting entries -------------------------------------------------------------------------------------

    def _admit(self, entries: list[Entry], *, redelivered: bool = False) -> None:
        """Decide each entry's fate: stale, dead letter, duplicate, or claimed for execution."""
        now = time.time()
        now_ms = int(now * 1000)
        deliveries: dict[bytes, int] = {}
        if redelivered:
            held = {w.entry_id for w in self._ready} | {w.entry_id for c in self._futures.values() for w in c}
            entries = [(e, f) for e, f in entries if e not in held]  # already ours and in flight
            deliveries = self.io.delivery_counts([e for e, _ in entries])
        batch = self._batch
        if not redelivered and entries and self._all_stale(entries, now_ms):
            return
        candidates: list[Work] = []
        stale = invalid = 0
        # New entries come in id order: when the oldest is not stale by its id, none is, and the per-entry id
        # check is skipped (the intent's own timestamp is still checked below).
        check_ids = redelivered or (bool(entries) and
                                    self.stale.entry_age_if_stale(entries[0][0], now_ms) is not None)
        for entry_id, fields in entries:
            if fields is None:
                self._dead(entry_id, b"", "entry was deleted from the stream before it was processed")
                continue
            n = deliveries.get(entry_id, 1)
            if n > self.cfg.max_deliveries:
                self._dead(entry_id, fields.get(b"payload", b""),
                           f"delivered {n} times (MAX_DELIVERIES={self.cfg.max_deliveries})")
                continue
            age = self.stale.entry_age_if_stale(entry_id, now_ms) if check_ids else None
            if age is not None:
                self._drop_stale(entry_id, fields, age)
                stale += 1
                continue
            raw = fields.get(b"payload")
            try:
                doc = parse_payload(raw, self.cfg.max_payload_bytes)
                created = parse_timestamp(doc.get("timestamp"))
                if created is not None and self.stale.is_stale(created, now):
                    self._drop_stale(entry_id, fields, now - created, doc)
                    stale += 1
                    continue
                created = self.validator.validate(doc, created)
                if created - now > self.cfg.clock_skew_sec:
                    raise InvalidIntent(f"timestamp: {created - now:.0f}s in the future "
                                        f"(INTENT_CLOCK_SKEW_SEC={self.cfg.clock_skew_sec})")
            except InvalidIntent as exc:
                self._dead(entry_id, raw if raw is not None else b"", exc.reason, invalid=True)
                invalid += 1
                continue
            candidates.append(Work(entry_id, doc, now, created))
        verdicts = self.idem.claim([w.claim_request() for w in candidates])
        duplicates = 0
        for work, verdict in zip(candidates, verdicts):
            if verdict is Claim.DUPLICATE:
                batch.acks.append(work.entry_id)
                batch.counters["duplicate"] += 1
                duplicates += 1
                continue
            work.reconcile = verdict is Claim.REDELIVERED
            self._ready.append(work)
        if self.cfg.pipeline_diag:
            log.info("pipeline_batch read=%d stale=%d invalid=%d duplicate=%d claimed=%d redelivered=%s held=%d",
                     len(entries), stale, invalid, duplicates, len(candidates) - duplicates, redelivered, self.held)

    def _all_stale(self, entries: list[Entry], now_ms: int) -> bool:
        """The backlog fast path: a batch whose newest entry id is past the TTL is stale as a whole.

        Entry ids only grow within a stream and an intent is never younger than its entry, so one id decides for the
        batch: acked in the next commit and counted, without a look at any payload or a per-entry step.
        """
        age = self.stale.entry_age_if_stale(entries[-1][0], now_ms)
        if age is None or any(fields is None for _, fields in entries):
            return False
        batch = self._batch
        batch.acks.extend([entry_id for entry_id, _ in entries])
        batch.counters["stale"] += len(entries)
        first_id, first_fields = entries[0]
        self._drop_stale_log(first_fields, (now_ms - entry_ms(first_id)) / 1000.0)
        self._stale_log.suppress(len(entries) - 1)
        if self.cfg.pipeline_diag:
            log.info("pipeline_batch read=%d stale=%d invalid=0 duplicate=0 claimed=0 redelivered=False held=%d",
                     len(entries), len(entries), self.held)
        return True

    def _drop_stale(self, entry_id: bytes, fields: dict[bytes, bytes], age: float, doc: dict | None = None) -> None:
        self._batch.acks.append(entry_id)
        self._batch.counters["stale"] += 1
        self._drop_stale_log(fields, age, doc)

    def _drop_stale_log(self, fields: dict[bytes, bytes], age: float, doc: dict | None = None) -> None:
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

    def _dead(self, entry_id: bytes, payload: bytes, reason: str, *, invalid: bool = False) -> None:
        self._batch.dead.append((payload, reason, entry_id))
        self._batch.acks.append(entry_id)
        self._batch.counters["dead_lettered"] += 1
        if invalid:
            self._batch.counters["invalid"] += 1
        if self._dead_log.ready():  # the dead-letter stream keeps every reason; the log only points at it
            self._dead_log.log("intent_dead_lettered entry_id=%s stream=%s reason=%r", entry_id.decode(),
                               self.cfg.dlq_stream, reason[:200])

    # -- execution -------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand claimed intents to the pool, as many as the rate limit grants now."""
        if not self._ready or time.time() < self._rate_wait_until:
            return
        granted, next_window = self.limiter.acquire(len(self._ready))
        # A venue that takes milliseconds per order gets one pool task per intent: the pool's queue feeds every
        # worker the moment it is free, so EXEC_CONCURRENCY orders are always at the venue. A venue that answers in
        # microseconds gains nothing from parallel workers (the GIL serialises the Python around each order) and
        # pays more for a hand-off than for a fill, so it gets everything granted as one chunk.
        size = 1 if self._venue_sec >= FAST_VENUE_SEC else granted
        while granted > 0:
            n = min(size, granted)
            chunk = [self._ready.popleft() for _ in range(n)]
            self._futures[self.pool.submit(self._execute_chunk, chunk)] = chunk
            self._running += n
            granted -= n
        if self._ready:
            self._rate_wait_until = next_window
            if self._rate_log.ready():
                self._rate_log.log("rate_limited waiting=%d limit=%d window_sec=%d resume_at=%s", len(self._ready),
                                   self.limiter.limit, self.limiter.window_sec, _iso(next_window))

    def _execute_chunk(self, chunk: list[Work]) -> list[Outcome | Exception]:
        """Runs on a worker thread: each intent's outcome, or the exception that leaves it pending (OutcomeUnknown).

        An executor with ``submit_many`` (the paper venue) gets the chunk's orders in one call; any other executor, a
        chunk of one, or an intent to reconcile goes order by order through ``_execute`` as before.
        """
        submit_many = getattr(self.executor, "submit_many", None)
        if submit_many is None or len(chunk) == 1 or any(w.reconcile for w in chunk):
            return [self._execute_or_exception(w) for w in chunk]
        started = time.time()
        try:
            reports = submit_many([Order.from_intent(w.intent) for w in chunk])
        except OutcomeUnknown as exc:
            return [exc] * len(chunk)
        except Exception as exc:  # noqa: BLE001 - any other failure means no order was sent
            failed = Report(status="FAILED", error=f"{type(exc).__name__}: {exc}"[:300])
            finished = time.time()
            return [Outcome(failed, started, finished, False) for _ in chunk]
        finished = time.time()
        return [Outcome(r, started, finished, False) for r in reports]

    def _execute_or_exception(self, work: Work) -> Outcome | Exception:
        try:
            return self._execute(work)
        except Exception as exc:  # noqa: BLE001 - OutcomeUnknown or a failing lookup: reported by _collect
            return exc

    def _execute(self, work: Work) -> Outcome:
        """Runs on a worker thread: the only place that talks to the venue."""
        started = time.time()
        if work.reconcile:
            known = self.executor.lookup(work.intent_id)
            if known is not None:
                return Outcome(known, started, time.time(), True)
        try:
            report = self.executor.submit(Order.from_intent(work.intent))
        except OutcomeUnknown:
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure means the order was not sent
            report = Report(status="FAILED", error=f"{type(exc).__name__}: {exc}"[:300])
        return Outcome(report, started, time.time(), False)

    def _collect(self, timeout: float) -> None:
        """Turn finished executions into results waiting for the next commit."""
        if not self._futures:
            return
        done, _ = wait(self._futures, timeout=timeout, return_when=FIRST_COMPLETED)
        for fut in done:
            chunk = self._futures.pop(fut)
            self._running -= len(chunk)
            try:
                outcomes = fut.result()
            except Exception as exc:  # noqa: BLE001 - never expected: _execute_chunk returns exceptions
                outcomes = [exc] * len(chunk)
            timed = [o for o in outcomes if isinstance(o, Outcome)]
            if timed:
                per_order = (max(o.finished for o in timed) - min(o.started for o in timed)) / len(timed)
                self._venue_sec += 0.2 * (per_order - self._venue_sec)
            for work, outcome in zip(chunk, outcomes):
                if isinstance(outcome, Exception):  # OutcomeUnknown or a failing lookup: leave it pending
                    log.error("execution_outcome_unknown intent_id=%s entry_id=%s error=%r action=reconcile_later",
                              work.intent_id, work.entry_id.decode(), str(outcome)[:200])
                    continue
                self._record(work, outcome)

    def _record(self, work: Work, outcome: Outcome) -> None:
        report = outcome.report
        intent = work.intent
        result = {
            "intent_id": work.intent_id,
            "status": report.status,
            "symbol": intent["symbol"],
            "side": intent["side"],
            "qty": intent["qty"],
            "filled_qty": report.filled_qty,
            "avg_price": report.avg_price,
            "executor": self.executor.name,
            "client_order_id": work.intent_id,
            "venue_order_id": report.venue_order_id,
            "source_entry_id": work.entry_id.decode(),
            "consumer": self.cfg.consumer,
            "received_at": _iso(work.received_at),
            "executed_at": _iso(outcome.finished),
            "latency_ms": round((outcome.finished - outcome.started) * 1000, 3),
            "intent_age_ms": round((work.received_at - work.created) * 1000, 1),
            "reconciled": outcome.reconciled,
            "error": report.error,
        }
        payload = _JSON.encode(result).encode()
        done = self.idem.done_value(result["source_entry_id"], report.status)
        batch = self._batch
        batch.results.append((self.idem.key(work.intent_id), payload, done))
        batch.acks.append(work.entry_id)
        batch.counters["executed"] += 1
        self._latencies.append(outcome.finished - outcome.started)
        if report.status in FAILED_STATUSES:
            batch.counters["failed"] += 1
        if outcome.reconciled:
            batch.counters["reconciled"] += 1

    def _commit(self) -> None:
        """Write all outcomes and acks of the batch in one atomic, retry-safe step."""
        batch = self._batch
        if not batch:
            return
        batch.counters["consumed"] = len(batch.acks)
        self.io.commit(batch)  # raises on a Redis outage; the same batch (same token) is retried next tick
        self._committed(batch)

    def _commit_and_read(self, count: int, block_ms: int | None) -> list[Entry]:
        """``_commit()`` and then a read, in one round trip; the batch is committed before anything is read."""
        batch = self._batch
        if not batch:
            return self.io.read(count, block_ms)
        batch.counters["consumed"] = len(batch.acks)
        entries = self.io.commit_and_read(batch, count, block_ms)  # raises like _commit; the batch is kept
        self._committed(batch)
        return entries

    def _committed(self, batch: Batch) -> None:
        if self.cfg.pipeline_diag:
            log.info("pipeline_commit acked=%d results=%d dead=%d held=%d", len(batch.acks), len(batch.results),
                     len(batch.dead), self.held)
        self.metrics.committed(batch.counters, self._latencies, self.held)
        self._batch = Batch()
        self._latencies = []

    # -- crash recovery --------------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        ids = [w.entry_id for w in self._ready] + [w.entry_id for c in self._futures.values() for w in c]
        if ids:
            self.io.heartbeat(ids)

    def _reclaim(self) -> bool:
        """Take over entries of consumers that died; True while there may be more to take.

        Reclaimed entries come before new ones (this runs before the read), and the scan goes on from its cursor on
        the next tick, so a dead consumer's thousand pending entries are not left to trickle in every interval.
        """
        room = self.cfg.max_in_flight - self.held
        if room <= 0:
            return True
        cursor, entries = self.io.autoclaim(room, self._claim_cursor)
        self._claim_cursor = cursor if cursor not in (b"0-0", "0-0") else b"0-0"
        if entries:
            if self._reclaim_log.ready():
                self._reclaim_log.log("pending_reclaimed count=%d idle_over_ms=%d", len(entries),
                                      self.cfg.claim_idle_ms)
            self._batch.counters["reclaimed"] += len(entries)
            self._admit(entries, redelivered=True)
        return bool(entries) or self._claim_cursor != b"0-0"

    def _gc_consumers(self) -> None:
        removed = self.io.delete_idle_consumers(max(3_600_000, self.cfg.claim_idle_ms * 10))
        if removed:
            log.info("consumers_removed count=%d names=%s", len(removed), ",".join(removed[:10]))
