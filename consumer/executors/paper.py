"""The paper venue: fills every order after ``PAPER_LATENCY_MS``, remembering it like an exchange would.

Its order book lives in Redis (``quantum:paper:order:<client_order_id>``, SET NX), which is what makes reconciliation
after a crash real: the service asks this venue, by client order id, what became of an order. Failures are injected
deterministically (a hash of the intent_id against ``PAPER_FAIL_RATE``) so tests and ramp gates can rely on them.
"""

from __future__ import annotations

import json
import time
import zlib

import redis

from .base import Executor, Order, OutcomeUnknown, Report

KEY_PREFIX = "quantum:paper:order:"
DUPLICATES_KEY = "quantum:paper:duplicate_orders"  # client order ids the venue saw twice: must stay empty
_JSON = json.JSONEncoder(separators=(",", ":"))

# Many orders in one round trip, each remembered exactly as ``submit`` does (SET NX EX); 1 = new, 0 = known already.
_SUBMIT_MANY = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('SET', key, ARGV[i + 1], 'NX', 'EX', ARGV[1]) and 1 or 0
end
return out
"""


def injected_failure(client_order_id: str, fail_rate: float) -> bool:
    """Same answer for the same id on every run and every host."""
    return fail_rate > 0 and zlib.crc32(client_order_id.encode()) % 1_000_000 < fail_rate * 1_000_000


class PaperExecutor(Executor):
    name = "paper"

    def __init__(self, client: redis.Redis, latency_ms: int = 0, fail_rate: float = 0.0,
                 ttl_sec: int = 7 * 24 * 3600) -> None:
        self._redis = client
        self._latency = latency_ms / 1000.0
        self._fail_rate = fail_rate
        self._ttl = ttl_sec
        self._submit_many = client.register_script(_SUBMIT_MANY)

    def submit(self, order: Order) -> Report:
        if self._latency:
            time.sleep(self._latency)  # the venue's round trip
        if injected_failure(order.client_order_id, self._fail_rate):
            return Report(status="REJECTED", error="paper venue: injected rejection (PAPER_FAIL_RATE)")
        report = Report(status="FILLED", filled_qty=order.qty, avg_price=order.price,
                        venue_order_id=f"paper-{order.client_order_id}")
        key = KEY_PREFIX + order.client_order_id
        record = _JSON.encode(report.__dict__)
        try:
            if self._redis.set(key, record, nx=True, ex=self._ttl):
                return report
            # A second order with a known client order id: a real venue refuses it; count it so tests can see it.
            self._redis.hincrby(DUPLICATES_KEY, order.client_order_id, 1)
            return self.lookup(order.client_order_id) or report
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OutcomeUnknown(f"paper venue unreachable: {exc}") from exc

    def submit_many(self, orders: list[Order]) -> list[Report]:
        """The same venue behaviour as ``submit`` for each order, with one Redis round trip for the lot.

        The service hands a chunk of orders to one worker; a venue with latency still takes them one by one.
        """
        if self._latency:
            return [self.submit(order) for order in orders]
        reports: list[Report] = []
        sent: list[int] = []
        keys: list[str] = []
        records: list[str] = []
        for i, order in enumerate(orders):
            if injected_failure(order.client_order_id, self._fail_rate):
                reports.append(Report(status="REJECTED", error="paper venue: injected rejection (PAPER_FAIL_RATE)"))
                continue
            report = Report(status="FILLED", filled_qty=order.qty, avg_price=order.price,
                            venue_order_id=f"paper-{order.client_order_id}")
            reports.append(report)
            sent.append(i)
            keys.append(KEY_PREFIX + order.client_order_id)
            records.append(_JSON.encode(report.__dict__))
        if not keys:
            return reports
        try:
            fresh = self._submit_many(keys=keys, args=[self._ttl, *records])
            for i, new in zip(sent, fresh):
                if not new:  # known already: refused, counted, answered from the book like ``submit``
                    cid = orders[i].client_order_id
                    self._redis.hincrby(DUPLICATES_KEY, cid, 1)
                    reports[i] = self.lookup(cid) or reports[i]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise OutcomeUnknown(f"paper venue unreachable: {exc}") from exc
        return reports

    def lookup(self, client_order_id: str) -> Report | None:
        raw = self._redis.get(KEY_PREFIX + client_order_id)
        return Report(**json.loads(raw)) if raw else None
