"""The executor plugin interface: how an intent becomes an order at a venue.

An executor sends one order and reports what the venue did. It must use the intent_id as the venue's client order id,
so that the venue itself refuses a second order with the same id and so that ``lookup`` can find an order after a
crash. See docs/executors.md for writing an exchange adapter.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Order:
    """What the service asks a venue to do; built from a validated intent."""

    client_order_id: str
    symbol: str
    side: str
    order_type: str
    qty: float
    price: float | None = None
    time_in_force: str | None = None
    reduce_only: bool = False

    @classmethod
    def from_intent(cls, intent: dict[str, Any]) -> "Order":
        # One per executed intent: filled in directly, as a frozen dataclass's __init__ pays an object.__setattr__
        # per field (three times the cost). The same fields, the same frozen object.
        order = object.__new__(cls)
        order.__dict__.update(
            client_order_id=intent["intent_id"],
            symbol=intent["symbol"],
            side=intent["side"],
            order_type=intent["order_type"],
            qty=intent["qty"],
            price=intent.get("price"),
            time_in_force=intent.get("time_in_force"),
            reduce_only=bool(intent.get("reduce_only", False)),
        )
        return order


@dataclass(frozen=True)
class Report:
    """The venue's answer. ``status`` is FILLED, PARTIALLY_FILLED, REJECTED or FAILED."""

    status: str
    filled_qty: float = 0.0
    avg_price: float | None = None
    venue_order_id: str | None = None
    error: str | None = None


class OutcomeUnknown(Exception):
    """The order may or may not have reached the venue (timeout, dropped connection after sending).

    The service then neither writes a result nor acks: the entry is redelivered after CLAIM_IDLE_MS and reconciled
    through ``lookup``. Raise this instead of guessing.
    """


class Executor(ABC):
    """One venue. Methods are called from the service's worker threads, so they must be thread-safe."""

    name: str = "executor"

    @abstractmethod
    def submit(self, order: Order) -> Report:
        """Send the order and wait for its outcome. Any other exception than OutcomeUnknown means not sent."""

    @abstractmethod
    def lookup(self, client_order_id: str) -> Report | None:
        """The venue's record of an order sent earlier, or None when the venue never received it."""

    # Optional: ``submit_many(self, orders: list[Order]) -> list[Report]`` sends a chunk in one call, with the same
    # per-order semantics as ``submit`` (raise OutcomeUnknown when any of them may or may not have been sent). The
    # service uses it only for a venue that answers in well under a millisecond (the paper venue); a venue without it
    # gets one ``submit`` per order.

    def close(self) -> None:
        """Release connections; called once at shutdown."""
