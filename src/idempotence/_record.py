"""Records, the store's view of one idempotency key, and the outcome of a claim."""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["Claim", "Record", "Status"]


class Status(str, enum.Enum):
    """State of a record: claimed and running, or finished with a stored result."""

    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"


class Record(NamedTuple):
    """What a store holds for one key.

    Times are seconds since the epoch on the store's clock. ``fence`` grows by one on
    every successful claim of the key; ``complete``/``release``/``renew`` only act when the
    caller's fence is still the record's. ``result`` is the encoded result (bytes, opaque to
    the store) once completed.
    """

    key: str
    status: Status
    fingerprint: str
    fence: int
    lease_expires_at: float
    expires_at: float
    result: bytes | None = None

    def is_expired(self, now: float) -> bool:
        """Retention has ended: the record is treated as absent."""
        return now >= self.expires_at

    def is_live(self, now: float) -> bool:
        """The record is in progress and its lease has not lapsed."""
        return self.status is Status.IN_PROGRESS and now < self.lease_expires_at


class Claim(NamedTuple):
    """Outcome of ``Store.claim``.

    ``acquired`` tells whether the caller now owns the key; ``record`` is the caller's new
    record when acquired, otherwise the existing one (returned by the same round trip).
    ``now`` is the store's clock at the decision.
    """

    acquired: bool
    record: Record
    now: float
