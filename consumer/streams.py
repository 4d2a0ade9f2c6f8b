"""All Redis Streams I/O of the service: the group, reads, reclaims, heartbeats and the atomic commit.

The commit is the heart of "no loss, no double execution": one Lua script writes every outcome of a batch (results,
idempotency records, dead letters, counters) and acks the entries in the same atomic step. It is idempotent: a batch
carries a token, so retrying a commit whose reply was lost on a dropped connection changes nothing, and a result is
only written when its intent's record is not already ``done``.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import redis

from .config import Config

Entry = tuple[bytes, dict[bytes, bytes] | None]

_COMMIT = """
local group, token_ttl, idem_ttl, maxlen = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n_results, n_dead, n_acks, n_counters = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', token_ttl) then return -1 end
local a = 9
local written = 0
for r = 1, n_results do
  -- the done record replaces the claim; the value it replaced says whether a result was written already
  local prior = redis.call('SET', KEYS[5 + r], ARGV[a + 1], 'EX', idem_ttl, 'GET')
  if not (prior and string.sub(prior, 1, 5) == 'done|') then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', maxlen, '*', 'payload', ARGV[a])
    written = written + 1
  end
  a = a + 2
end
for d = 1, n_dead do
  redis.call('XADD', KEYS[3], '*', 'payload', ARGV[a], 'reason', ARGV[a + 1], 'source_id', ARGV[a + 2])
  a = a + 3
end
if n_acks > 0 then
  redis.call('XACK', KEYS[1], group, unpack(ARGV, a, a + n_acks - 1))
  a = a + n_acks
end
for c = 1, n_counters do
  redis.call('HINCRBY', KEYS[4], ARGV[a], ARGV[a + 1])
  a = a + 2
end
return written
"""


@dataclass
class Batch:
    """Outcomes waiting to be committed together; nothing here is acked until ``StreamIO.commit``."""

    results: list[tuple[str, bytes, str]] = field(default_factory=list)  # (idem key, payload, done value)
    dead: list[tuple[bytes, str, bytes]] = field(default_factory=list)  # (payload, reason, source entry id)
    acks: list[bytes] = field(default_factory=list)
    counters: Counter = field(default_factory=Counter)
    token: str | None = None  # set at the first commit attempt and kept for retries

    def __bool__(self) -> bool:
        return bool(self.results or self.dead or self.acks or self.counters)


class StreamIO:
    """Thin, named wrappers over the commands the service uses, with its stream and group baked in."""

    def __init__(self, client: redis.Redis, cfg: Config) -> None:
        self.r = client
        self.cfg = cfg
        self._commit = client.register_script(_COMMIT)
        self._seq = 0
        self._nonce = os.urandom(6).hex()  # a restarted consumer with the same name never reuses a token
        self.last_wait = 0  # replicas that confirmed the last commit_and_read (with REDIS_WAIT_REPLICAS)

    def ensure_group(self, at: bytes | str = "0") -> None:
        """Create the group (and the stream) if missing, its last-delivered id ``at``; an existing group is kept."""
        try:
            self.r.xgroup_create(self.cfg.intent_stream, self.cfg.group, id=at, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """New entries (``>``), blocking up to ``block_ms`` when given."""
        reply = self.r.xreadgroup(self.cfg.group, self.cfg.consumer, {self.cfg.intent_stream: ">"},
                                  count=count, block=block_ms)
        return _entries(reply)

    def read_history(self, after: bytes, count: int) -> list[Entry]:
        """This consumer's own pending entries after ``after`` (left over from a previous process of the same name)."""
        reply = self.r.xreadgroup(self.cfg.group, self.cfg.consumer, {self.cfg.intent_stream: after}, count=count)
        return _entries(reply)

    def autoclaim(self, count: int, start: bytes | str = "0-0") -> tuple[bytes, list[Entry]]:
        """Take over entries idle longer than CLAIM_IDLE_MS (their consumer died or hung)."""
        reply = self.r.xautoclaim(self.cfg.intent_stream, self.cfg.group, self.cfg.consumer,
                                  min_idle_time=self.cfg.claim_idle_ms, start_id=start, count=count)
        cursor, claimed = reply[0], reply[1]
        return cursor, [(eid, fields) for eid, fields in claimed]

    def delivery_counts(self, ids: list[bytes]) -> dict[bytes, int]:
        """How often each of this consumer's pending entries was delivered."""
        if not ids:
            return {}
        rows = self.r.xpending_range(self.cfg.intent_stream, self.cfg.group, min=min(ids, key=_id_key),
                                     max=max(ids, key=_id_key), count=len(ids) + 10_000,
                                     consumername=self.cfg.consumer)
        wanted = set(ids)
        return {row["message_id"]: int(row["times_delivered"]) for row in rows if row["message_id"] in wanted}

    def wait(self) -> int:
        """WAIT for REDIS_WAIT_REPLICAS replicas to hold every write sent so far on this client's connection."""
        return int(self.r.wait(self.cfg.wait_replicas, self.cfg.wait_timeout_ms))

    def safe_position(self, last_read: bytes | None) -> bytes | None:
        """An entry id up to which every entry is acked: just below the oldest pending one, else ``last_read``.

        Where a lost group is recreated (the service's NOGROUP handling). None when nothing is known.
        """
        summary = self.r.xpending(self.cfg.intent_stream, self.cfg.group)
        if not summary or not summary.get("pending"):
            return last_read
        oldest = summary["min"]
        ms, seq = _id_key(oldest if isinstance(oldest, bytes) else str(oldest).encode())
        if seq > 0:
            return f"{ms}-{seq - 1}".encode()
        return f"{ms - 1}-18446744073709551615".encode() if ms > 0 else b"0"

    def heartbeat(self, ids: list[bytes]) -> None:
        """Reset the idle time of entries still being worked on, so no other consumer reclaims them."""
        for i in range(0, len(ids), 500):
            self.r.xclaim(self.cfg.intent_stream, self.cfg.group, self.cfg.consumer, min_idle_time=0,
                          message_ids=ids[i:i + 500], justid=True)

    def commit(self, batch: Batch) -> int:
        """Write every outcome and ack, atomically and idempotently; retrying the same batch object is safe.

        Returns how many results were written, or -1 when an earlier attempt of this batch had already been applied.
        """
        if not batch:
            return 0
        keys, args = self._commit_call(batch)
        return int(self._commit(keys=keys, args=args))

    def commit_and_read(self, batch: Batch, count: int, block_ms: int | None) -> list[Entry]:
        """``commit(batch)`` then ``read(count, block_ms)`` in one round trip (a pipeline, not a transaction).

        Redis runs the commit script before the read, so every outcome of the batch is written and acked before new
        entries are taken, exactly as with two calls; only the wait for the first reply is saved. A lost reply
        raises like ``commit`` does and the same batch (same token) is committed again later, which changes nothing
        if it had been applied; entries the lost read had delivered stay pending and are reclaimed.
        """
        if not batch:
            return self.read(count, block_ms)
        keys, args = self._commit_call(batch)
        pipe = self.r.pipeline(transaction=False)
        pipe.evalsha(self._commit.sha, len(keys), *keys, *args)
        if self.cfg.wait_replicas:  # on the pipeline's connection, right after the commit it confirms
            pipe.wait(self.cfg.wait_replicas, self.cfg.wait_timeout_ms)
        pipe.xreadgroup(self.cfg.group, self.cfg.consumer, {self.cfg.intent_stream: ">"}, count=count, block=block_ms)
        replies = pipe.execute(raise_on_error=False)
        committed, reply = replies[0], replies[-1]
        if isinstance(committed, redis.exceptions.NoScriptError):  # script cache flushed (Redis restarted, failover)
            self.commit(batch)  # loads the script; the token makes a second application impossible
            self.last_wait = self.wait() if self.cfg.wait_replicas else 0
        elif isinstance(committed, Exception):
            raise committed
        elif self.cfg.wait_replicas:
            if isinstance(replies[1], Exception):  # e.g. NOPERM: the ACL user lacks +wait; say so, do not hide it
                raise replies[1]
            self.last_wait = int(replies[1])
        if isinstance(reply, Exception):
            raise reply
        return _entries(reply)

    def _commit_call(self, batch: Batch) -> tuple[list[Any], list[Any]]:
        if batch.token is None:
            self._seq += 1
            batch.token = f"quantum:commit:{self.cfg.consumer}:{self._nonce}:{self._seq}"
        token = batch.token
        keys: list[Any] = [self.cfg.intent_stream, self.cfg.result_stream, self.cfg.dlq_stream, self.cfg.stats_key,
                           token]
        args: list[Any] = [self.cfg.group, 3600, self.cfg.idempotency_ttl_sec, self.cfg.stream_maxlen,
                           len(batch.results), len(batch.dead), len(batch.acks), len(batch.counters)]
        for key, payload, done in batch.results:
            keys.append(key)
            args += (payload, done)
        for payload, reason, source in batch.dead:
            args += (payload, reason, source)
        args += batch.acks
        for name, n in batch.counters.items():
            args += (name, n)
        return keys, args

    def delete_idle_consumers(self, idle_ms: int) -> list[str]:
        """Remove consumers of earlier processes that hold nothing: keeps the group's consumer list readable."""
        removed = []
        for c in self.r.xinfo_consumers(self.cfg.intent_stream, self.cfg.group):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name != self.cfg.consumer and c["pending"] == 0 and c["idle"] > idle_ms:
                self.r.xgroup_delconsumer(self.cfg.intent_stream, self.cfg.group, name)
                removed.append(name)
        return removed


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


def _entries(reply: Any) -> list[Entry]:
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3 shape
        return [(eid, fields) for stream in reply.values() for eid, fields in stream[0]]
    return [(eid, fields) for _stream, entries in reply for eid, fields in entries]
