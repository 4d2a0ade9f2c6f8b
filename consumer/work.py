"""What one intent carries between the service's pieces: admission makes a Work, the venue pool an Outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .executors import Report
from .idempotency import ClaimRequest


@dataclass(slots=True)
class Work:
    """A valid, fresh, claimed intent on its way to the venue."""

    entry_id: bytes
    intent: dict[str, Any]
    received_at: float
    created: float
    reconcile: bool = False

    @property
    def intent_id(self) -> str:
        return self.intent["intent_id"]

    def claim_request(self) -> ClaimRequest:
        return ClaimRequest(self.intent_id, self.entry_id.decode())


@dataclass(slots=True)
class Outcome:
    """The venue's answer for one Work, with the wall-clock span of the call that produced it."""

    report: Report
    started: float
    finished: float
    reconciled: bool
