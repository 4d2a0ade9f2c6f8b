"""At-most-once execution per intent_id, claimed atomically in Redis before anything is sent to a venue.

Record ``quantum:idem:<intent_id>``:
- ``claimed|<entry_id>|<consumer>`` — set with SET NX before execution; whoever sets it owns the intent.
- ``done|<entry_id>|<status>`` — written in the same atomic commit as the result and the ack.

A second entry with the same intent_id (the AI engine published twice) finds the record and is acked as a duplicate.
The same entry delivered again (its consumer crashed) finds ``claimed`` with its own entry id: the outcome is then
recovered from the venue by client order id instead of trading again (see docs/idempotency.md).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import redis

_CLAIM = """
local out = {}
for i, key in ipairs(KEYS) do
  local ok = redis.call('SET', key, ARGV[i + 1], 'NX', 'EX', ARGV[1])
  if ok then out[i] = '' else out[i] = redis.call('GET', key) or '' end
end
return out
"""

_RELEASE = """
local n = 0
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i] then redis.call('DEL', key); n = n + 1 end
end
return n
"""


class Claim(Enum):
    NEW = "new"  # this consumer owns the intent: execute it
    DUPLICATE = "duplicate"  # another entry carries (or carried) this intent_id: ack, do not execute
    REDELIVERED = "redelivered"  # this very entry was claimed before a crash: reconcile with the venue


class ClaimRequest(NamedTuple):
    """One intent to claim, and the entry that carries it (a named tuple: one is built per executed intent)."""

    intent_id: str
    entry_id: str


class IdempotencyStore:
    """Claims and releases of idempotency records, one round trip per batch."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_sec: int, consumer: str) -> None:
        self._prefix = prefix
        self._ttl = ttl_sec
        self._consumer = consumer
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def key(self, intent_id: str) -> str:
        return self._prefix + intent_id

    def claimed_value(self, req: ClaimRequest) -> str:
        return f"claimed|{req.entry_id}|{self._consumer}"

    @staticmethod
    def done_value(entry_id: str, status: str) -> str:
        return f"done|{entry_id}|{status}"

    def claim(self, requests: list[ClaimRequest]) -> list[Claim]:
        if not requests:
            return []
        keys = [self.key(r.intent_id) for r in requests]
        existing = self._claim(keys=keys, args=[self._ttl, *(self.claimed_value(r) for r in requests)])
        verdicts = []
        for req, prior in zip(requests, existing):
            if not prior:
                verdicts.append(Claim.NEW)
                continue
            state, _, rest = (prior.decode() if isinstance(prior, bytes) else prior).partition("|")
            entry = rest.split("|", 1)[0]
            same_entry = entry == req.entry_id
            verdicts.append(Claim.REDELIVERED if state == "claimed" and same_entry else Claim.DUPLICATE)
        return verdicts

    def release(self, requests: list[ClaimRequest]) -> int:
        """Give back claims of intents that were never sent to a venue (shutdown before their turn)."""
        if not requests:
            return 0
        keys = [self.key(r.intent_id) for r in requests]
        values = [self.claimed_value(r) for r in requests]
        return int(self._release(keys=keys, args=values))
