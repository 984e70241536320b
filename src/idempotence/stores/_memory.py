"""In-process store: a dict behind a lock. For tests and single-process tools.

Twins kept: the ``a``-methods call their sync twin inline (the dict never blocks), one line
each; the scan filter and ``count`` are shared (``_maintenance.matching`` /
``CountedByScan``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .._record import Claim, Record, Status
from ._base import Clock, Store, _new, decide_claim, system_clock
from ._maintenance import CountedByScan, Progress, StoreStats, matches, matching, stats_of
from ._registry import url_query

__all__ = ["MemoryStore"]


class MemoryStore(CountedByScan, Store):
    """Records in a dict of this process, guarded by a lock.

    Not shared between processes; use it in tests and for single-process programs. ``clock``
    (seconds since the epoch) can be injected to test leases and retention without sleeping.
    ``round_trips`` counts operations, as a networked store would count requests.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or system_clock
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()
        self.round_trips = 0

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``memory://`` (none; options are refused)."""
        url_query(url, ())
        return {}

    @classmethod
    def from_url(cls, url: str) -> MemoryStore:
        """``memory://`` (every call gives a new, empty store)."""
        return cls(**cls.parse_url(url))

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        with self._lock:
            self.round_trips += 1
            outcome = decide_claim(
                self._records.get(key), key, fingerprint, now=self.clock(), lease=lease, ttl=ttl
            )
            if outcome.acquired:
                self._records[key] = outcome.record
            return outcome

    # -- capability: BatchClaims (idempotence.stores.capabilities) ----------------------
    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)`` under one lock hold (one round
        trip). See :class:`~idempotence.stores.capabilities.BatchClaims`."""
        with self._lock:
            self.round_trips += 1
            now, out = self.clock(), []
            for key, fingerprint, lease, ttl in items:
                records = self._records
                outcome = decide_claim(
                    records.get(key), key, fingerprint, now=now, lease=lease, ttl=ttl
                )
                if outcome.acquired:
                    records[key] = outcome.record
                out.append(outcome)
            return out

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Complete every ``(key, fence, result, ttl)`` under one lock hold."""
        with self._lock:
            self.round_trips += 1
            now = self.clock()
            return [
                self._complete(key, fence, result, ttl, now) for key, fence, result, ttl in items
            ]

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Release every ``(key, fence)`` under one lock hold."""
        with self._lock:
            self.round_trips += 1
            now = self.clock()
            return [self._release(key, fence, now) for key, fence in items]

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        return self.claim_many(items)

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        return self.complete_many(items)

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        return self.release_many(items)

    def _owned(self, key: str, fence: int, now: float) -> Record | None:
        record = self._records.get(key)
        if (
            record is None
            or record.fence != fence
            or record.status is not Status.IN_PROGRESS
            or now >= record.expires_at  # past retention
        ):
            return None
        return record

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        with self._lock:
            self.round_trips += 1
            return self._complete(key, fence, result, ttl, self.clock())

    def _complete(self, key: str, fence: int, result: bytes, ttl: float, now: float) -> bool:
        record = self._owned(key, fence, now)
        if record is None:
            return False
        self._records[key] = _new(Record, (
            key, Status.COMPLETED, record.fingerprint, fence, record.lease_expires_at,
            now + ttl, bytes(result),
        ))  # fmt: skip
        return True

    def release(self, key: str, fence: int) -> bool:
        with self._lock:
            self.round_trips += 1
            return self._release(key, fence, self.clock())

    def _release(self, key: str, fence: int, now: float) -> bool:
        record = self._owned(key, fence, now)
        if record is None:
            return False
        # Keep the record (and its fence) but end its retention: it reads as absent and
        # the next claim takes it over with fence + 1, so a zombie's fence stays stale.
        self._records[key] = record._replace(expires_at=now)
        return True

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        with self._lock:
            self.round_trips += 1
            now = self.clock()
            record = self._owned(key, fence, now)
            if record is None:
                return False
            self._records[key] = record._replace(
                lease_expires_at=now + lease,
                expires_at=max(record.expires_at, now + lease),
            )
            return True

    def get(self, key: str) -> Record | None:
        with self._lock:
            self.round_trips += 1
            record = self._records.get(key)
            if record is None or record.is_expired(self.clock()):
                return None
            return record

    def delete(self, key: str) -> bool:
        with self._lock:
            self.round_trips += 1
            return self._records.pop(key, None) is not None

    def __len__(self) -> int:
        return len(self._records)

    # -- capability: Maintainable (idempotence.stores.capabilities) ----------------------
    def scan(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
        limit: int | None = None,
        batch_size: int = 1000,
    ) -> Iterator[Record]:
        """The records matching the filters (a snapshot taken under the lock). See
        :class:`~idempotence.stores.capabilities.Maintainable`."""
        with self._lock:
            now, records = self.clock(), list(self._records.values())
        yield from matching(records, now, namespace, status, older_than, expired, limit)

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = 1000,
        progress: Progress | None = None,
    ) -> int:
        """Delete the matching records (all at once: the dict has no round trips)."""
        with self._lock:
            now = self.clock()
            doomed = [
                key
                for key, record in self._records.items()
                if matches(record, now, namespace=namespace, expired=expired)
            ]
            for key in doomed:
                del self._records[key]
        if progress is not None and doomed:
            progress(len(doomed))
        return len(doomed)

    def stats(self) -> StoreStats:
        """Counts by status and namespace (one pass over a snapshot)."""
        return stats_of(self.scan(), self.clock())

    # The dict never blocks: the async twins run inline instead of in a worker thread.
    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        return self.claim(key, fingerprint, lease=lease, ttl=ttl)

    async def acomplete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        return self.complete(key, fence, result, ttl=ttl)

    async def arelease(self, key: str, fence: int) -> bool:
        return self.release(key, fence)

    async def arenew(self, key: str, fence: int, *, lease: float) -> bool:
        return self.renew(key, fence, lease=lease)

    async def aget(self, key: str) -> Record | None:
        return self.get(key)

    async def adelete(self, key: str) -> bool:
        return self.delete(key)
