"""Read-only views of the pipeline's Redis state: streams, the consumer group, dead letters, limiters, counters.

Every function here issues read commands only (XINFO, XREVRANGE, SCAN, GET, PTTL, HGETALL, TIME): the proof CLI runs
against production and must never change what it observes. Values come back as the report's sections (sections.py)
so that the human layout, the JSON report and the live view share one shape.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any

import redis

from .config import COUNTER_NAMES, ProofSettings, redact_url
from .sections import (Consumer, Counters, DeadLetter, Dlq, GroupInfo, RateKey, RateLimiters, ReplicaLink, SentinelView,
                       StreamInfo, Topology)

log = logging.getLogger(__name__)


def connect(settings: ProofSettings) -> redis.Redis:
    """A client that fails fast: an unreachable Redis must become exit 2 within seconds, not hang an operator.

    With REDIS_SENTINELS + REDIS_SENTINEL_MASTER in the environment the sentinels name the master to read
    (consumer/connection.py); a clash with REDIS_URL is a ValueError, which the caller reports as exit 2.
    """
    from ..connection import connect as connect_redis, sentinel_from_env

    return connect_redis(
        settings.redis_url,
        sentinel_from_env(os.environ),
        decode_responses=True,
        encoding_errors="replace",  # dead letters hold arbitrary bytes; a report must still print
        socket_connect_timeout=settings.connect_timeout_sec,
        socket_timeout=max(settings.connect_timeout_sec, 5.0),
        retry_on_timeout=False,
    )


def where(settings: ProofSettings) -> str:
    """Where the proof reads, safe to print: the sentinels and master name, or the URL without its password."""
    from ..connection import sentinel_from_env

    try:
        target = sentinel_from_env(os.environ)
    except ValueError:
        target = None
    return target.describe() if target is not None else redact_url(settings.redis_url)


def id_ms(entry_id: str | None) -> int | None:
    """The millisecond time part of a stream entry id (the Redis server's clock when it was added)."""
    if not entry_id or "-" not in entry_id:
        return None
    try:
        return int(entry_id.split("-", 1)[0])
    except ValueError:
        return None


def _as_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def server_time(r: redis.Redis) -> float:
    """Redis's own clock, so that ages of entry ids and limiter resets do not depend on this host's clock."""
    sec, usec = r.time()
    return sec + usec / 1e6


def stream_info(r: redis.Redis, key: str) -> StreamInfo:
    """Length, last-generated-id and entries-added of a stream; `exists: false` when the key is missing."""
    try:
        info = r.xinfo_stream(key)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            # A stream that does not exist has had nothing added: 0 keeps deltas defined once it appears.
            return StreamInfo(key=key, exists=False)
        raise
    return StreamInfo(key=key, exists=True, length=_as_int(info.get("length")) or 0,
                      last_generated_id=info.get("last-generated-id"),
                      entries_added=_as_int(info.get("entries-added")))


def group_info(r: redis.Redis, stream: str, group: str) -> GroupInfo:
    """Lag, pending and entries-read of one group; lag is estimated from entries-added when Redis reports nil."""
    out = GroupInfo(stream=stream, name=group)
    try:
        groups = r.xinfo_groups(stream)
    except redis.ResponseError as exc:
        if "no such key" in str(exc).lower():
            return out
        raise
    for g in groups:
        if g.get("name") != group:
            continue
        out = GroupInfo(stream=stream, name=group, exists=True, lag=_as_int(g.get("lag")),
                        pending=_as_int(g.get("pending")) or 0, entries_read=_as_int(g.get("entries-read")),
                        last_delivered_id=g.get("last-delivered-id"),
                        consumer_count=_as_int(g.get("consumers")) or 0)
        if out.entries_read is None and out.last_delivered_id in ("0-0", "0"):
            out.entries_read = 0  # a group created at 0 that has read nothing yet: Redis reports nil
        break
    return out


def estimate_lag(group: GroupInfo, intents: StreamInfo) -> None:
    """Fill a nil lag (Redis cannot compute it after some deletions) from entries-added − entries-read."""
    if not group.exists or group.lag is not None:
        return
    added, read = intents.entries_added, group.entries_read
    if added is not None and read is not None:
        group.lag = max(0, added - read)
        group.lag_estimated = True


def count_lag(r: redis.Redis, stream: str, group: GroupInfo, limit: int = 10_000) -> None:
    """Fill a lag Redis cannot report at all by counting the entries after the group's last-delivered id.

    A freshly promoted Redis 7.0 master (and any replica) has no entries-read for the group: replication does not
    carry it, so both lag and the estimate above are nil until the group catches up with the stream's end. The count
    is exact (XRANGE after last-delivered-id) up to ``limit`` entries; beyond that the lag stays unknown.
    """
    if not group.exists or group.lag is not None or not group.last_delivered_id:
        return
    rows = r.xrange(stream, f"({group.last_delivered_id}", "+", count=limit + 1)
    if len(rows) <= limit:
        group.lag = len(rows)
        group.lag_estimated = True


_CONSUMER_NAME = re.compile(r"^(?P<host>.+)-(?P<pid>[0-9]+)$")


def consumer_host(name: str | None) -> str | None:
    """The host a consumer runs on, read from the service's default name `<hostname>-<pid>`; None for other names.

    XINFO CONSUMERS carries no client address, and CLIENT LIST needs rights the read-only proof user does not have,
    so the name is the one place the host is recorded.
    """
    m = _CONSUMER_NAME.match(name or "")
    return m.group("host") if m else None


def consumers(r: redis.Redis, stream: str, group: str, live_ms: int = 15_000) -> list[Consumer]:
    """Each consumer's host, pending count, idle time and liveness: a consumer holding entries while idle is a
    crashed one. A consumer idle for no more than `live_ms` is live. Redis 7.0 resets idle only when a read returns
    entries (or a claim touches them), so on a quiet stream a running consumer reads as not live: liveness is
    meaningful under traffic, which is when a rolling deploy needs it."""
    try:
        rows = r.xinfo_consumers(stream, group)
    except redis.ResponseError:
        return []
    out = []
    for c in rows:
        idle = _as_int(c.get("idle"))
        out.append(Consumer(name=c.get("name"), host=consumer_host(c.get("name")),
                            pending=_as_int(c.get("pending")) or 0, idle_ms=idle,
                            inactive_ms=_as_int(c.get("inactive")),  # Redis >= 7.2 only
                            live=idle is not None and idle <= live_ms))
    out.sort(key=lambda c: (-c.pending, c.name or ""))
    return out


def dlq_info(r: redis.Redis, key: str, newest: int) -> Dlq:
    """The dead-letter stream's length and its newest reasons (payloads are left out: they can be large or binary)."""
    length = r.xlen(key)
    rows = r.xrevrange(key, "+", "-", count=newest) if newest > 0 and length else []
    return Dlq(key=key, length=length, newest=[DeadLetter(id=eid, reason=fields.get("reason"),
                                                          source_id=fields.get("source_id")) for eid, fields in rows])


def rate_limiters(r: redis.Redis, pattern: str, now: float, keep: int, window_sec: int = 1) -> RateLimiters:
    """Every limiter key with its count, TTL and reset time, found with SCAN (never KEYS on a production Redis).

    A fixed-window key ends in its window index (``quantum:rate:orders:<index>``), so its window resets at
    ``(index + 1) * window_sec``; the key itself outlives the window a little (its TTL is two windows), so the TTL
    is the reset time only for keys of another shape.
    """
    keys = sorted(set(r.scan_iter(match=pattern, count=1000)))
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.get(k)
        pipe.pttl(k)
    raw = pipe.execute(raise_on_error=False) if keys else []
    rows = []
    for i, k in enumerate(keys):
        value, pttl = raw[2 * i], raw[2 * i + 1]
        ttl_ms = pttl if isinstance(pttl, int) and pttl >= 0 else None
        rows.append(RateKey(
            key=k,
            count=_as_int(value) if not isinstance(value, Exception) else None,
            ttl_sec=None if ttl_ms is None else round(ttl_ms / 1000, 3),
            resets_at=_window_end(k, window_sec) or (None if ttl_ms is None else round(now + ttl_ms / 1000, 3)),
            no_expiry=pttl == -1,
        ))
    # Newest windows first: those are the ones an operator is looking at.
    rows.sort(key=lambda row: row.key, reverse=True)
    return RateLimiters(pattern=pattern, total=len(rows), keys=rows[:keep], truncated=len(rows) > keep)


def _window_end(key: str, window_sec: int) -> float | None:
    index = key.rsplit(":", 1)[-1]
    return float((int(index) + 1) * window_sec) if index.isdigit() else None


def counters(r: redis.Redis, key: str) -> Counters:
    """The service's counters hash; missing fields read as 0 so that deltas are always defined."""
    raw = r.hgetall(key)
    values = {name: _as_int(raw.get(name)) or 0 for name in COUNTER_NAMES}
    extra = {k: v for k, v in raw.items() if k not in COUNTER_NAMES}
    return Counters(key=key, exists=bool(raw), values=values, extra=extra)


@dataclass
class Sample:
    """The cheap part of the state, read twice per run (and every tick in --watch) to see movement."""

    t: float
    results: StreamInfo
    intents: StreamInfo
    group: GroupInfo
    counters: Counters
    dlq_length: int

    @property
    def backlog(self) -> int | None:
        return self.group.backlog


def take_sample(r: redis.Redis, s: ProofSettings) -> Sample:
    """One consistent-enough reading of the moving numbers (a handful of O(1) commands)."""
    now = server_time(r)
    intents = stream_info(r, s.intent_stream)
    group = group_info(r, s.intent_stream, s.group)
    estimate_lag(group, intents)
    count_lag(r, s.intent_stream, group)
    return Sample(
        t=now,
        results=stream_info(r, s.result_stream),
        intents=intents,
        group=group,
        counters=counters(r, s.stats_key),
        dlq_length=r.xlen(s.dlq_stream),
    )


def topology(r: redis.Redis) -> Topology:
    """Master, replicas with their replication lag, and (through Sentinel) the sentinels and their agreement.

    The lag is the master's view (INFO replication): bytes behind ``master_repl_offset`` and seconds since the
    replica's last acknowledgement. Sentinel facts only when the client came from ``REDIS_SENTINELS``.
    """
    repl = r.info("replication")
    offset = _as_int(repl.get("master_repl_offset")) or 0
    replicas = [ReplicaLink(address=f"{v.get('ip')}:{v.get('port')}", state=v.get("state"),
                            lag_bytes=max(0, offset - (_as_int(v.get("offset")) or 0)), lag_sec=_as_int(v.get("lag")))
                for k, v in sorted(repl.items()) if re.fullmatch(r"slave[0-9]+", k) and isinstance(v, dict)]
    sentinels: list[SentinelView] = []
    master = None
    manager = getattr(r, "sentinel_manager", None)
    if manager is not None:
        name = r.connection_pool.service_name
        for s in manager.sentinels:
            kw = s.connection_pool.connection_kwargs
            address = f"{kw.get('host')}:{kw.get('port')}"
            try:
                host, port = s.sentinel_get_master_addr_by_name(name)
                host = host.decode() if isinstance(host, bytes) else host
                sentinels.append(SentinelView(address=address, master=f"{host}:{port}", reachable=True))
            except (redis.RedisError, OSError, TypeError):
                sentinels.append(SentinelView(address=address, master=None, reachable=False))
        addr = r.connection_pool.master_address
        master = f"{addr[0]}:{addr[1]}" if addr else None
    return Topology(role=repl.get("role"), master=master, repl_offset=offset,
                    min_replicas_good=_as_int(repl.get("min_slaves_good_slaves")), replicas=replicas,
                    sentinels=sentinels)


def server_facts(r: redis.Redis) -> tuple[str | None, str | None]:
    """Redis version and role: lag needs 7.0, and a replica would show a stale picture."""
    return r.info("server").get("redis_version"), r.info("replication").get("role")
