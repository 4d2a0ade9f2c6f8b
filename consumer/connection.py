"""How the service, the bridge and the proof reach Redis: one URL, or the master that Redis Sentinel names.

``REDIS_URL`` points at one server. ``REDIS_SENTINELS`` (``host:port,host:port,...``) with ``REDIS_SENTINEL_MASTER``
asks the sentinels which server is the master instead, and asks again whenever a connection to it breaks or turns
read-only, which is how a failover reaches the clients (redis-py's ``redis.sentinel`` does the discovery). Exactly one
of the two may be set; neither keeps the historical default URL.

The data nodes' ACL user comes from ``REDIS_USERNAME`` / ``REDIS_PASSWORD`` (a URL carries its own), the sentinels'
from ``REDIS_SENTINEL_USERNAME`` / ``REDIS_SENTINEL_PASSWORD``: sentinels have their own users, and a client that only
reads the master's address never needs the data password there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

import redis
from redis.sentinel import Sentinel

from .config import ConfigError

log = logging.getLogger("quantum.connection")

# Replies a client sees while a failover is under way. Each means "this server is not (or no longer) the master you
# need": back off and reconnect through the sentinels, never give up and never drop work.
#   UNBLOCKED   a blocked XREADGROUP released because the master was turned into a replica
#   READONLY    a write sent to a demoted master (redis-py's sentinel connection turns it into ConnectionError)
#   NOREPLICAS  the master refuses writes: fewer than min-replicas-to-write replicas within min-replicas-max-lag
#   MASTERDOWN  a replica that lost its master and serves no stale data
#   LOADING     a restarted server still loading its data set
FAILOVER_REPLIES = ("UNBLOCKED", "READONLY", "NOREPLICAS", "MASTERDOWN", "LOADING")


def is_failover_reply(exc: BaseException) -> bool:
    """True for an error reply that a failover (or a lagging replica set) explains; such a reply is transient."""
    if not isinstance(exc, redis.ResponseError):
        return False
    text = str(exc).rpartition("of pipeline caused error: ")[2]  # redis-py prefixes errors raised by a pipeline
    return text.split(" ", 1)[0].upper() in FAILOVER_REPLIES


@dataclass(frozen=True)
class SentinelTarget:
    """Where the sentinels are, which master they watch, and the ACL users for both kinds of server."""

    addresses: tuple[tuple[str, int], ...]
    master: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    db: int = 0

    def describe(self) -> str:
        """A log- and report-safe name: ``sentinel://h1:26379,h2:26379/<master>`` (never a password)."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.addresses)
        return f"sentinel://{hosts}/{self.master}"


def parse_sentinels(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` (an IPv6 address in brackets) into pairs; ConfigError names ``name``."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
            raise ConfigError(f"{name}={raw!r} is not allowed (a comma-separated list of host:port, "
                              f"e.g. 10.0.0.1:26379,10.0.0.2:26379)")
        out.append((host, int(port)))
    if not out:
        raise ConfigError(f"{name}={raw!r} is not allowed (at least one host:port)")
    if len(set(out)) != len(out):
        raise ConfigError(f"{name}={raw!r} lists a sentinel twice")
    return tuple(out)


def sentinel_from_env(env: Mapping[str, str]) -> SentinelTarget | None:
    """The Sentinel settings, None when ``REDIS_SENTINELS`` is unset; ConfigError when they clash with REDIS_URL."""

    def get(name: str) -> str:
        return (env.get(name) or "").strip()

    raw, master = get("REDIS_SENTINELS"), get("REDIS_SENTINEL_MASTER")
    # read together, so that the README's variable table and this reader name the same variables
    username, password, db_raw = get("REDIS_USERNAME"), get("REDIS_PASSWORD"), get("REDIS_DB") or "0"
    sentinel_username, sentinel_password = get("REDIS_SENTINEL_USERNAME"), get("REDIS_SENTINEL_PASSWORD")
    if not raw:
        if master:
            raise ConfigError(f"REDIS_SENTINEL_MASTER={master!r} is set without REDIS_SENTINELS "
                              "(set both for Sentinel, or neither and REDIS_URL)")
        return None
    if get("REDIS_URL"):
        raise ConfigError("REDIS_URL and REDIS_SENTINELS are both set: set exactly one (REDIS_URL for one server, "
                          "REDIS_SENTINELS with REDIS_SENTINEL_MASTER for a Sentinel-managed master)")
    addresses = parse_sentinels("REDIS_SENTINELS", raw)
    if not master or any(c.isspace() for c in master):
        raise ConfigError(f"REDIS_SENTINEL_MASTER={master!r} is not allowed (the master name the sentinels monitor, "
                          "required with REDIS_SENTINELS)")
    if not db_raw.isdigit() or int(db_raw) > 15:
        raise ConfigError(f"REDIS_DB={db_raw!r} is not allowed (0..15)")
    return SentinelTarget(addresses, master, username or None, password or None, sentinel_username or None,
                          sentinel_password or None, int(db_raw))


def connect(url: str, sentinel: SentinelTarget | None = None, **kwargs: Any) -> redis.Redis:
    """A client of the master: ``redis.Redis.from_url(url)``, or the master the sentinels name right now.

    ``kwargs`` are the usual redis-py connection options. With Sentinel, every new connection asks the sentinels for
    the master's address, and a READONLY reply disconnects so that the next attempt asks again.
    """
    if sentinel is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel_kwargs = {
        "socket_connect_timeout": kwargs.get("socket_connect_timeout") or 2.0,
        "socket_timeout": kwargs.get("socket_connect_timeout") or 2.0,
        "username": sentinel.sentinel_username,
        "password": sentinel.sentinel_password,
    }
    manager = Sentinel(list(sentinel.addresses), sentinel_kwargs=sentinel_kwargs, min_other_sentinels=0,
                       username=sentinel.username, password=sentinel.password, db=sentinel.db, **kwargs)
    client = manager.master_for(sentinel.master, redis_class=redis.Redis)
    client.sentinel_manager = manager  # type: ignore[attr-defined]  # the topology view reads the sentinels
    return client


def reset(client: redis.Redis) -> None:
    """Drop every connection of ``client``'s pool: the next command connects afresh (and asks the sentinels).

    A single-connection client (``Redis.client()``) reconnects on its own with the address it had, never asking the
    sentinels again (redis-py 8.1 only asks in ``connect()``, which the pool calls): it is reconnected here, through
    the sentinels. If that fails the address stays stale, the next command fails, and the next reset asks again.
    """
    try:
        client.connection_pool.disconnect()
    except Exception as exc:  # noqa: BLE001 - a reset must never turn one failure into a crash
        log.warning("redis_reset_failed error=%r", str(exc)[:120])
    conn = getattr(client, "connection", None)
    if conn is not None:
        conn.disconnect()
        try:
            conn.connect()
        except (redis.RedisError, OSError):
            pass
