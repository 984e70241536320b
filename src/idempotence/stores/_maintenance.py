"""Shared pieces of the :class:`~idempotence.stores.capabilities.Maintainable` capability:
the namespace of a key, the record filter every store applies (natively or after reading),
the statistics of a set of records, and the in-process sweep of expired records."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .._record import Record, Status

if TYPE_CHECKING:
    from .capabilities import Maintainable


__all__ = [
    "DEFAULT_BATCH",
    "CountedByScan",
    "Progress",
    "StoreStats",
    "Sweeper",
    "created_at",
    "is_purgeable",
    "keyset_pages",
    "matches",
    "matching",
    "namespace_of",
    "stats_of",
    "sweep_interval",
]

#: Records deleted per round trip by ``purge`` (DynamoDB: 25 per ``BatchWriteItem``).
DEFAULT_BATCH = 1000

#: Called after each batch of a purge with the number of records the batch deleted.
Progress = Callable[[int], None]

#: Fences at or above this are creation times in milliseconds (2001-09-09 onwards).
_MS_FENCE = 10**12


def namespace_of(key: str) -> str:
    """The namespace of a stored key: the text before its last ``#`` (keys are
    ``namespace#digest``); the whole key if it has no ``#``."""
    head, sep, _ = key.rpartition("#")
    return head if sep else key


def created_at(record: Record) -> float | None:
    """When the record was first created (epoch seconds), read from its fence: a record
    created from nothing takes the store clock in milliseconds, and each take-over adds 1.
    ``None`` for a fence that is not a time (written before fences were clock-based)."""
    return record.fence / 1000 if record.fence >= _MS_FENCE else None


def is_purgeable(record: Record, now: float) -> bool:
    """Retention has ended and the lease is over too: deleting the record cannot hand a
    live owner's fence to someone else."""
    return now >= record.expires_at and now >= record.lease_expires_at


def matches(
    record: Record,
    now: float,
    *,
    namespace: str | None = None,
    status: Status | None = None,
    older_than: float | None = None,
    expired: bool = False,
) -> bool:
    """The filter of ``scan``/``purge``: in ``namespace``, with ``status``, first created
    more than ``older_than`` seconds before ``now`` (a record whose fence is not a time
    counts as old), and purgeable at ``now`` if ``expired``."""
    if namespace is not None and namespace_of(record.key) != namespace:
        return False
    if status is not None and record.status is not status:
        return False
    if older_than is not None and record.fence > (now - older_than) * 1000:
        return False
    return not expired or is_purgeable(record, now)


def matching(
    records: Iterable[Record],
    now: float,
    namespace: str | None,
    status: Status | None,
    older_than: float | None,
    expired: bool,
    limit: int | None,
) -> Iterator[Record]:
    """The ``scan`` of a store that filters after reading: the records of ``records`` that
    :func:`matches` at ``now``, at most ``limit`` (reading stops at the next record once
    ``limit`` are found)."""
    found = 0
    for record in records:
        if limit is not None and found >= limit:
            return
        if matches(
            record, now, namespace=namespace, status=status, older_than=older_than, expired=expired
        ):
            found += 1
            yield record


class CountedByScan:
    """``count`` for a :class:`~idempotence.stores.capabilities.Maintainable` store that
    has no cheaper way to count than its own ``scan`` (DynamoDB, Redis, memory)."""

    def count(
        self: Maintainable,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
    ) -> int:
        """How many records match (a scan)."""
        return sum(
            1
            for _ in self.scan(
                namespace=namespace, status=status, older_than=older_than, expired=expired
            )
        )


class StoreStats:
    """Counts of a store's records. ``expired`` counts the records past retention that
    are still stored and that ``purge()`` would delete now (their lease is over too; stores
    without native expiry keep them until purged): the same set as ``count(expired=True)``.
    A record past retention whose lease still runs (released by an owner whose lease is
    not over) is in ``total`` but not in ``expired`` until its lease ends.

    Written out rather than a ``@dataclass`` (same constructor, repr and equality):
    :mod:`dataclasses` imports :mod:`inspect`, a cold-import cost of every store."""

    __match_args__ = (
        "total",
        "by_status",
        "by_namespace",
        "expired",
        "oldest_in_progress",
        "oldest_in_progress_key",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __init__(
        self,
        total: int = 0,
        by_status: dict[str, int] | None = None,
        by_namespace: dict[str, int] | None = None,
        expired: int = 0,
        oldest_in_progress: float | None = None,
        oldest_in_progress_key: str | None = None,
    ) -> None:
        self.total = total
        self.by_status: dict[str, int] = {} if by_status is None else by_status
        self.by_namespace: dict[str, int] = {} if by_namespace is None else by_namespace
        self.expired = expired
        #: First-creation time (epoch seconds) of the oldest live in-progress record.
        self.oldest_in_progress = oldest_in_progress
        self.oldest_in_progress_key = oldest_in_progress_key

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, StoreStats)
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__match_args__)
        return f"{type(self).__name__}({fields})"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the statistics."""
        return {
            "total": self.total,
            "by_status": dict(sorted(self.by_status.items())),
            "by_namespace": dict(sorted(self.by_namespace.items())),
            "expired": self.expired,
            "oldest_in_progress": self.oldest_in_progress,
            "oldest_in_progress_key": self.oldest_in_progress_key,
        }


def stats_of(records: Iterable[Record], now: float) -> StoreStats:
    """The statistics of ``records`` at ``now`` (one pass)."""
    stats = StoreStats()
    for record in records:
        stats.total += 1
        status = record.status.value
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        ns = namespace_of(record.key)
        stats.by_namespace[ns] = stats.by_namespace.get(ns, 0) + 1
        if is_purgeable(record, now):
            stats.expired += 1
        if record.status is Status.IN_PROGRESS and not record.is_expired(now):
            born = created_at(record)
            if born is not None and (
                stats.oldest_in_progress is None or born < stats.oldest_in_progress
            ):
                stats.oldest_in_progress, stats.oldest_in_progress_key = born, record.key
    return stats


def batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of at most ``size``."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def keyset_pages(
    fetch: Callable[[Any, int], list[Any]],
    last_key: Callable[[Any], Any],
    limit: int | None,
    batch_size: int,
) -> Iterator[Any]:
    """The rows of a keyset-paged scan, at most ``limit``: ``fetch(after, size)`` returns
    the next ``size`` rows in key order after the key ``after`` (``None``: from the start),
    ``last_key(row)`` is a row's key. One query per ``batch_size`` rows; a short page ends
    the scan. The SQL stores' ``scan`` share it."""
    after: Any = None
    left = limit
    while left is None or left > 0:
        size = batch_size if left is None else min(batch_size, left)
        rows = fetch(after, size)
        yield from rows
        if len(rows) < size:
            return
        after = last_key(rows[-1])
        left = None if left is None else left - len(rows)


def sweep_interval(every: object) -> float | None:
    """``every`` checked as the ``sweep_every`` option of a store: ``None`` (no sweep) or a
    finite number of seconds above 0; anything else raises ``ValueError``."""
    if every is None:
        return None
    if (
        isinstance(every, bool)
        or not isinstance(every, (int, float))
        or not (math.isfinite(every) and every > 0)
    ):
        raise ValueError(
            "sweep_every must be a positive, finite number of seconds (or None: no sweep)"
        )
    return float(every)


class Sweeper:
    """The opt-in in-process sweep of stores without native expiry: every ``every``
    seconds, :meth:`maybe` (called by the store on each claim) runs ``purge`` (the store's
    batched purge of expired records) in a daemon thread, one at a time. A failed sweep is
    retried at the next interval; the claim that triggered it is never delayed or failed."""

    def __init__(self, every: float, purge: Callable[[], int], clock: Callable[[], float]) -> None:
        checked = sweep_interval(every)
        if checked is None:
            raise ValueError("sweep_every must be a positive, finite number of seconds")
        self.every = checked
        self._purge = purge
        self._clock = clock
        self._next = clock() + every
        self._lock = threading.Lock()
        self._running = False
        #: Sweeps run and records they deleted (for tests and metrics).
        self.runs = 0
        self.deleted = 0

    def maybe(self) -> threading.Thread | None:
        """Start a sweep if one is due and none is running; the thread started, or None."""
        if self._clock() < self._next:
            return None
        with self._lock:
            if self._running or self._clock() < self._next:
                return None
            self._running = True
            self._next = self._clock() + self.every
        thread = threading.Thread(target=self._sweep, name="idempotence-sweep", daemon=True)
        thread.start()
        return thread

    def _sweep(self) -> None:
        try:
            self.deleted += self._purge()
            self.runs += 1
        except Exception as exc:  # retried at the next interval
            import logging  # on the first failure: not a cold-import cost

            logging.getLogger("idempotence.stores").warning(
                "idempotence: expired-record sweep failed (%s); retrying later", type(exc).__name__
            )
        finally:
            self._running = False
