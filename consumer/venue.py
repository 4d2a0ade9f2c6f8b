"""The venue pool: the rate limit, the worker threads, and the only code that talks to a venue.

The loop hands claimed Work in with ``add``; ``dispatch`` sends as many as the rate limit grants to a
ThreadPoolExecutor of EXEC_CONCURRENCY workers; ``collect`` gives back each finished (Work, Outcome). An intent whose
outcome is unknown (OutcomeUnknown, or a failing lookup) is logged and not given back: it stays pending in the stream
and is reconciled with the venue when it is redelivered. Any other executor error means the order was not sent and
becomes a FAILED report.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from .executors import Executor, Order, OutcomeUnknown, Report
from .ratelimit import FixedWindowLimiter
from .results import iso
from .stale import ThrottledLog
from .work import Outcome, Work

log = logging.getLogger("quantum.execution")

FAST_VENUE_SEC = 0.0005  # venue time per order below which granted intents go to the pool as one chunk


class VenuePool:
    """Holds claimed Work until the rate limit and a worker let it go to the venue; owns the executor."""

    def __init__(self, executor: Executor, limiter: FixedWindowLimiter, concurrency: int,
                 log_interval_sec: float) -> None:
        self.executor = executor
        self.limiter = limiter
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="exec")
        self.ready: deque[Work] = deque()  # claimed, waiting for a rate-limit token
        self.futures: dict[Future, list[Work]] = {}  # at the venue, one pool task per chunk
        self.running = 0  # intents in those chunks
        self.venue_sec = 1.0  # venue time per order, smoothed; assumed slow until measured
        self.rate_wait_until = 0.0  # epoch second when the limiter's next window opens
        self._rate_log = ThrottledLog(log, log_interval_sec)

    @property
    def held(self) -> int:
        """Intents this pool holds unacknowledged: waiting for a token or at the venue."""
        return len(self.ready) + self.running

    @property
    def chunked(self) -> bool:
        """The venue answers in microseconds: what the limiter grants goes to the pool as one chunk."""
        return self.venue_sec < FAST_VENUE_SEC

    def held_ids(self) -> list[bytes]:
        """Entry ids of every held intent (for heartbeats, and to skip a redelivery of one already in flight)."""
        return [w.entry_id for w in self.ready] + [w.entry_id for c in self.futures.values() for w in c]

    def add(self, work: list[Work]) -> None:
        self.ready.extend(work)

    def dispatch(self) -> None:
        """Hand claimed intents to the pool, as many as the rate limit grants now."""
        ready = self.ready
        if not ready or time.time() < self.rate_wait_until:
            return
        granted, next_window = self.limiter.acquire(len(ready))
        # A venue that takes milliseconds per order gets one pool task per intent: the pool's queue feeds every
        # worker the moment it is free, so EXEC_CONCURRENCY orders are always at the venue. A venue that answers in
        # microseconds gains nothing from parallel workers (the GIL serialises the Python around each order) and
        # pays more for a hand-off than for a fill, so it gets everything granted as one chunk.
        size = granted if self.chunked else 1
        while granted > 0:
            n = min(size, granted)
            chunk = [ready.popleft() for _ in range(n)]
            self.futures[self.pool.submit(self._execute_chunk, chunk)] = chunk
            self.running += n
            granted -= n
        if ready:
            self.rate_wait_until = next_window
            if self._rate_log.ready():
                self._rate_log.log("rate_limited waiting=%d limit=%d window_sec=%d resume_at=%s", len(ready),
                                   self.limiter.limit, self.limiter.window_sec, iso(next_window))

    def rate_wait(self) -> float:
        """Seconds until the limiter may grant more, capped at 0.2 so the loop stays responsive."""
        return max(0.0, min(0.2, self.rate_wait_until - time.time()))

    def collect(self, timeout: float) -> list[tuple[Work, Outcome]]:
        """Finished executions, waiting up to ``timeout`` for the first; unknown outcomes are logged and left out."""
        if not self.futures:
            return []
        done, _ = wait(self.futures, timeout=timeout, return_when=FIRST_COMPLETED)
        finished: list[tuple[Work, Outcome]] = []
        for fut in done:
            chunk = self.futures.pop(fut)
            self.running -= len(chunk)
            try:
                outcomes = fut.result()
            except Exception as exc:  # noqa: BLE001 - never expected: _execute_chunk returns exceptions
                outcomes = [exc] * len(chunk)
            timed = [o for o in outcomes if isinstance(o, Outcome)]
            if timed:
                per_order = (max(o.finished for o in timed) - min(o.started for o in timed)) / len(timed)
                self.venue_sec += 0.2 * (per_order - self.venue_sec)
            for work, outcome in zip(chunk, outcomes):
                if isinstance(outcome, Exception):  # OutcomeUnknown or a failing lookup: leave it pending
                    log.error("execution_outcome_unknown intent_id=%s entry_id=%s error=%r action=reconcile_later",
                              work.intent_id, work.entry_id.decode(), str(outcome)[:200])
                    continue
                finished.append((work, outcome))
        return finished

    def take_unsent(self) -> list[Work]:
        """At shutdown: every held intent not yet at the venue (waiting, or queued and cancelled), no longer held."""
        unsent = list(self.ready)
        self.ready.clear()
        for fut, chunk in list(self.futures.items()):
            if fut.cancel():
                unsent.extend(chunk)
                del self.futures[fut]
                self.running -= len(chunk)
        return unsent

    def close(self, wait_for_workers: bool) -> None:
        """Stop the workers (waiting for them only when nothing is left running) and close the executor."""
        self.pool.shutdown(wait=wait_for_workers, cancel_futures=True)
        self.executor.close()

    def _execute_chunk(self, chunk: list[Work]) -> list[Outcome | Exception]:
        """Runs on a worker thread: each intent's outcome, or the exception that leaves it pending (OutcomeUnknown).

        An executor with ``submit_many`` (the paper venue) gets the chunk's orders in one call; any other executor, a
        chunk of one, or an intent to reconcile goes order by order through ``_execute``.
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
            failed = _failed(exc)
            finished = time.time()
            return [Outcome(failed, started, finished, False) for _ in chunk]
        finished = time.time()
        return [Outcome(r, started, finished, False) for r in reports]

    def _execute_or_exception(self, work: Work) -> Outcome | Exception:
        try:
            return self._execute(work)
        except Exception as exc:  # noqa: BLE001 - OutcomeUnknown or a failing lookup: reported by collect
            return exc

    def _execute(self, work: Work) -> Outcome:
        """Runs on a worker thread: one order, or for a redelivered claim first the venue's record of it."""
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
            report = _failed(exc)
        return Outcome(report, started, time.time(), False)


def _failed(exc: Exception) -> Report:
    """The report of an order that was not sent because the executor raised."""
    return Report(status="FAILED", error=f"{type(exc).__name__}: {exc}"[:300])
