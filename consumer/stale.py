"""Deciding that an intent is too old to trade, as cheaply as possible.

A Redis entry id starts with the server's millisecond clock when the entry was added, and an intent is never younger
than its entry. So an entry whose id is older than the TTL is stale without reading its payload: that is what lets a
1.4M backlog drain at the speed of XREADGROUP + XACK. Entries newer than the TTL are checked again on the intent's own
``timestamp`` once the payload is parsed.
"""

from __future__ import annotations

import logging
import time


def entry_ms(entry_id: bytes | str) -> int:
    """Milliseconds part of a stream entry id (``1700000000000-3`` -> 1700000000000)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


class StalePolicy:
    """Age checks against ``INTENT_MAX_AGE_SEC``."""

    def __init__(self, max_age_sec: int) -> None:
        self.max_age_sec = max_age_sec
        self._max_age_ms = max_age_sec * 1000

    def entry_age_if_stale(self, entry_id: bytes, now_ms: int) -> float | None:
        """Age in seconds when the entry id alone proves the intent stale, else None."""
        age_ms = now_ms - entry_ms(entry_id)
        return age_ms / 1000.0 if age_ms > self._max_age_ms else None

    def is_stale(self, created_epoch: float, now: float) -> bool:
        return now - created_epoch > self.max_age_sec


class ThrottledLog:
    """At most one line per interval; the next line says how many were held back.

    Draining a 1.4M backlog must not write 1.4M log lines, but an operator still needs to see that drops happen.
    """

    def __init__(self, logger: logging.Logger, interval_sec: float, clock=time.monotonic) -> None:
        self._logger = logger
        self._interval = interval_sec
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def ready(self) -> bool:
        """True when the next event may be logged; otherwise count it as suppressed."""
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            return True
        self._suppressed += 1
        return False

    def suppress(self, n: int) -> None:
        self._suppressed += n

    def log(self, message: str, *args: object) -> None:
        """Log one event (call only after ``ready()`` said yes)."""
        self._last = self._clock()
        if self._suppressed:
            message += " suppressed_since_last=%d"
            args = (*args, self._suppressed)
            self._suppressed = 0
        self._logger.warning(message, *args)
