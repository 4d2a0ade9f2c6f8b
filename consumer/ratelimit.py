"""Fixed-window limit on order submissions, shared by every consumer through Redis.

Key ``quantum:rate:orders:<window_index>`` counts submissions in one window (INCRBY + EXPIRE, atomically in a small
script so the count never exceeds the limit). An intent over the limit waits for the next window: it is neither
dropped nor failed, and it stays unacknowledged, so a crash while waiting loses nothing.
"""

from __future__ import annotations

import time

import redis

_ACQUIRE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant <= 0 then return 0 end
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return grant
"""


class FixedWindowLimiter:
    """Hands out up to ``limit`` submissions per window across all consumers."""

    def __init__(self, client: redis.Redis, prefix: str, limit: int, window_sec: int, clock=time.time) -> None:
        self.limit = limit
        self.window_sec = window_sec
        self._prefix = prefix
        self._clock = clock
        self._acquire = client.register_script(_ACQUIRE)

    def key(self, now: float) -> str:
        return f"{self._prefix}{int(now // self.window_sec)}"

    def next_window_at(self, now: float) -> float:
        return (int(now // self.window_sec) + 1) * self.window_sec

    def acquire(self, wanted: int) -> tuple[int, float]:
        """Grant up to ``wanted`` submissions now; returns (granted, epoch second when more can be asked for)."""
        if wanted <= 0:
            return 0, 0.0
        now = self._clock()
        granted = int(self._acquire(keys=[self.key(now)], args=[wanted, self.limit, self.window_sec * 2]))
        return granted, self.next_window_at(now)
