"""The execution service's loop: read, admit, dispatch, collect, commit; reclaim, heartbeat, shut down.

One thread owns every stream operation and every decision; the pieces it drives each have one job: admission.py sorts
what is read (stale, dead letter, duplicate, claimed), venue.py holds claimed intents until the rate limit and a
worker let them go to the venue, results.py writes the result document. The loop never holds more than
EXEC_CONCURRENCY + XREADGROUP_COUNT unacknowledged intents, so memory stays flat whatever the backlog, and an entry is
acked only in the same atomic commit that records its outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import redis

from . import connection, sdnotify
from .admission import Admission
from .config import Config
from .executors import Executor, load_executor
from .idempotency import IdempotencyStore
from .metrics import Metrics
from .ratelimit import FixedWindowLimiter
from .results import FAILED_STATUSES, encode, result_document
from .stale import ThrottledLog
from .streams import Batch, Entry, StreamIO
from .venue import VenuePool
from .work import Outcome, Work

log = logging.getLogger("quantum.execution")

REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.BusyLoadingError,
              redis.exceptions.ReadOnlyError)


class Service:
    """Consumes intents until ``stop()``; ``run()`` returns the process exit code."""

    def __init__(self, cfg: Config, client: redis.Redis | None = None, executor: Executor | None = None) -> None:
        self.cfg = cfg
        pooled = client or connection.connect(cfg.redis_url, cfg.sentinel, socket_timeout=cfg.block_ms / 1000 + 5,
                                              socket_connect_timeout=2, health_check_interval=30)
        # With WAIT, the loop's own commands share one connection: WAIT covers the writes of its connection only, so
        # the claim it confirms must have gone over the same one. The executor's threads keep the pool.
        self.r = pooled.client() if cfg.wait_replicas else pooled
        self.io = StreamIO(self.r, cfg)
        self.idem = IdempotencyStore(self.r, cfg.idem_prefix, cfg.idempotency_ttl_sec, cfg.consumer)
        self.admission = Admission(cfg, self.io, self.idem)
        self.limiter = FixedWindowLimiter(self.r, cfg.rate_prefix, cfg.rate_limit_max, cfg.rate_limit_window_sec)
        self.executor = executor or load_executor(cfg, pooled)
        self.venue = VenuePool(self.executor, self.limiter, cfg.exec_concurrency, cfg.stale_log_interval_sec)
        self._stopping = threading.Event()
        self._batch = Batch()  # outcomes not yet committed
        self._latencies: list[float] = []  # executor call durations of the batch, for the metrics
        self.metrics = Metrics(cfg.intent_stream, cfg.group, cfg.consumer)
        self._next_heartbeat = 0.0
        self._next_reclaim = 0.0
        self._next_gc = time.monotonic() + 600
        self._backoff = 0.0
        self._redis_log = ThrottledLog(log, 10.0)
        self._reclaim_log = ThrottledLog(log, 10.0)
        self._claim_cursor: bytes = b"0-0"
        self._last_read: bytes | None = None  # newest entry id this process read with ">"
        self._safe_position: bytes | None = None  # every entry up to this id was acked when last looked at
        self._repl_log = ThrottledLog(log, 10.0)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Signal handler: stop reading, finish what is in flight."""
        self._stopping.set()

    @property
    def held(self) -> int:
        """Claimed intents waiting for a rate-limit token or at the venue: what the backpressure bound counts."""
        return self.venue.held

    def run(self) -> int:
        self._until_redis(self.io.ensure_group)
        if self._stopping.is_set():
            return 0
        sdnotify.notify("READY=1")
        self._replay_own_pending()
        while not self._stopping.is_set():
            self._guarded(self._tick)
        return self._shutdown()

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run one step; a Redis outage means back off and try again, never crash or drop work."""
        try:
            step()
            self._backoff = 0.0
        except REDIS_DOWN as exc:
            self._redis_down(exc)
        except redis.ResponseError as exc:
            if connection.is_failover_reply(exc):  # e.g. UNBLOCKED on a demoted master
                self._redis_down(exc)
                return
            if "NOGROUP" not in str(exc):
                raise
            self._recreate_group()

    def _recreate_group(self) -> None:
        """The group vanished (a failover to a replica that never had it, a Redis that lost its data): make it again.

        At the last position known to be safe, so nothing unacked is skipped and little is read twice: every entry up
        to it was acked when last looked at. Entries after it are delivered again; those already done meet their
        idempotency record and are acked as duplicates, those in flight are reconciled with the venue. Without a known
        position the group starts at the stream's beginning (0), the same rule at a larger cost.
        """
        at = self._safe_position or b"0"
        log.warning("consumer_group_missing stream=%s group=%s action=recreate position=%s basis=%s",
                    self.cfg.intent_stream, self.cfg.group, at.decode(),
                    "last_acked_position" if self._safe_position else "stream_start")
        self._until_redis(lambda: self.io.ensure_group(at))

    def _redis_down(self, exc: Exception) -> None:
        if self.cfg.sentinel is not None:
            connection.reset(self.r)  # the master may have moved: ask the sentinels before the next attempt
        self._backoff = min(5.0, max(0.1, self._backoff * 2))
        if self._redis_log.ready():
            self._redis_log.log("redis_unavailable error=%r retry_in_sec=%.1f held=%d uncommitted=%d",
                                str(exc)[:120], self._backoff, self.held, len(self._batch.acks))
        self._stopping.wait(self._backoff)

    def _until_redis(self, step: Callable[[], None]) -> None:
        while not self._stopping.is_set():
            try:
                step()
                self._backoff = 0.0
                return
            except REDIS_DOWN as exc:
                self._redis_down(exc)
            except redis.ResponseError as exc:
                if not connection.is_failover_reply(exc):
                    raise
                self._redis_down(exc)

    def _shutdown(self) -> int:
        """Finish in-flight executions, commit them, give back claims never sent; bounded by SHUTDOWN_TIMEOUT_SEC."""
        sdnotify.notify("STOPPING=1")
        deadline = time.monotonic() + self.cfg.shutdown_timeout_sec
        unsent = self.venue.take_unsent()
        while (self.venue.futures or self._batch) and time.monotonic() < deadline:
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
        clean = not self.venue.futures and not self._batch
        log.info("service_stopped clean=%s unsent_released=%d still_running=%d uncommitted=%d", clean, released,
                 self.venue.running, len(self._batch.acks))
        self.venue.close(wait_for_workers=clean)
        return 0 if clean else 1

    # -- the loop ----------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._safe_position = self.io.safe_position(self._last_read) or self._safe_position
            self._next_heartbeat = now + self.cfg.claim_idle_ms / 3000
        if now >= self._next_reclaim:
            more = self._reclaim()
            self._next_reclaim = now if more else now + max(1.0, self.cfg.claim_idle_ms / 2000)
        if now >= self._next_gc:
            self._gc_consumers()
            self._next_gc = now + 600
        self.venue.dispatch()
        if self._may_read():
            # The outcomes gathered so far are committed in the same round trip as this read (commit first).
            entries = self._commit_and_read(min(self.cfg.xreadgroup_count, self.cfg.max_in_flight - self.held),
                                            None if self.held else self.cfg.block_ms)
            if entries:
                self._admit(entries)
                self.venue.dispatch()
                self._collect(timeout=0)
                return
        self._commit()
        self._wait_for_progress()
        if self.held:
            self._commit()  # with nothing held the next tick reads, and that read carries the commit

    def _may_read(self) -> bool:
        """Room for a batch: nothing held, or (a venue taking milliseconds per order) room for half a batch, so the
        next one is read and admitted while the venue works on the last. A venue answering in microseconds gets whole
        batches, one at a time: halves would only double the round trips and scripts per intent."""
        if self.held == 0:
            return True
        room = self.cfg.max_in_flight - self.held
        return not self.venue.chunked and room >= max(1, self.cfg.xreadgroup_count // 2)

    def _wait_for_progress(self) -> None:
        if self.venue.futures:
            self._collect(timeout=0.05)
        elif self.venue.ready:
            self._stopping.wait(self.venue.rate_wait())

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
        self.venue.dispatch()
        self._wait_for_progress()
        self._commit()

    def _admit(self, entries: list[Entry], *, redelivered: bool = False) -> None:
        """Admission sorts the entries into the batch; what it claims goes to the venue pool."""
        if redelivered:
            held = set(self.venue.held_ids())
            entries = [(e, f) for e, f in entries if e not in held]  # already ours and in flight
        elif entries:
            self._last_read = entries[-1][0]
        claimed = self.admission.admit(entries, self._batch, redelivered=redelivered, held=self.held)
        if claimed and self.cfg.wait_replicas:
            # The claim is what stops a second execution after a failover: no order goes out before a replica has
            # it. Unconfirmed claims are not sent; they stay pending and come back by reclaim, then reconciled.
            acked = self.io.wait()
            if acked < self.cfg.wait_replicas:
                log.warning("claim_not_replicated count=%d replicas_acked=%d wanted=%d timeout_ms=%d "
                            "action=hold_for_reclaim", len(claimed), acked, self.cfg.wait_replicas,
                            self.cfg.wait_timeout_ms)
                return
        self.venue.add(claimed)

    def _collect(self, timeout: float) -> None:
        """Turn finished executions into results waiting for the next commit."""
        for work, outcome in self.venue.collect(timeout):
            self._record(work, outcome)

    # -- commit ----------------------------------------------------------------------------------------------

    def _record(self, work: Work, outcome: Outcome) -> None:
        """Queue one execution's result, idempotency record and ack for the next commit."""
        report = outcome.report
        result = result_document(work, outcome, self.executor.name, self.cfg.consumer)
        done = self.idem.done_value(result["source_entry_id"], report.status)
        batch = self._batch
        batch.results.append((self.idem.key(work.intent_id), encode(result), done))
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
        if self.cfg.wait_replicas:
            self._check_replicated(self.io.wait())

    def _commit_and_read(self, count: int, block_ms: int | None) -> list[Entry]:
        """``_commit()`` and then a read, in one round trip; the batch is committed before anything is read."""
        batch = self._batch
        if not batch:
            return self.io.read(count, block_ms)
        batch.counters["consumed"] = len(batch.acks)
        entries = self.io.commit_and_read(batch, count, block_ms)  # raises like _commit; the batch is kept
        self._committed(batch)
        if self.cfg.wait_replicas:
            self._check_replicated(self.io.last_wait)
        return entries

    def _check_replicated(self, acked: int) -> None:
        """A commit no replica confirmed may be lost in a failover: its entries are then delivered again and
        reconciled through their (replicated) claims, so this is logged, not retried."""
        if acked < self.cfg.wait_replicas and self._repl_log.ready():
            self._repl_log.log("commit_not_replicated replicas_acked=%d wanted=%d timeout_ms=%d action=none",
                               acked, self.cfg.wait_replicas, self.cfg.wait_timeout_ms)

    def _committed(self, batch: Batch) -> None:
        if self.cfg.pipeline_diag:
            log.info("pipeline_commit acked=%d results=%d dead=%d held=%d", len(batch.acks), len(batch.results),
                     len(batch.dead), self.held)
        self.metrics.committed(batch.counters, self._latencies, self.held)
        self._batch = Batch()
        self._latencies = []

    # -- crash recovery --------------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        ids = self.venue.held_ids()
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
