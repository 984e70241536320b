"""The protocol as a sans-I/O state machine.

:func:`protocol` is a generator: it yields operations (:class:`ClaimOp`, :class:`RunOp`,
:class:`CompleteOp`, :class:`ReleaseOp`, :class:`SleepOp`), receives their results (or
has their exceptions thrown into it), and finally returns the call's result or raises. It
does no I/O and reads no clock, so every decision (run, replay, wait, refuse, fence) is
tested without a store; :mod:`idempotence._shells` drives it synchronously or with
``await``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from . import _log
from ._codec import UnencodableError
from ._errors import (
    AlreadyInProgressError,
    KeyReuseError,
    LeaseLostError,
    ResultNotStoredError,
    ResultTooLargeError,
    StoreError,
)
from ._record import Claim, Record, Status

__all__ = [
    "ClaimOp",
    "CompleteOp",
    "LocalCache",
    "Op",
    "Plan",
    "ReleaseOp",
    "RunOp",
    "SleepOp",
    "protocol",
]


# Operations are built on every call: through ``tuple.__new__`` they skip the Python-level
# ``__new__`` that calling a NamedTuple class runs (about 0.3 us each).
_new = tuple.__new__

_FIRST_POLL = 0.05
_MAX_POLL = 1.0


class ClaimOp(NamedTuple):
    key: str
    fingerprint: str
    lease: float
    ttl: float


class RunOp(NamedTuple):
    """Run the function; ``fence`` is ``None`` when running without a claim (fail-open)."""

    key: str
    fence: int | None
    lease: float


class CompleteOp(NamedTuple):
    key: str
    fence: int
    result: bytes
    ttl: float


class ReleaseOp(NamedTuple):
    key: str
    fence: int


class SleepOp(NamedTuple):
    seconds: float


Op = ClaimOp | RunOp | CompleteOp | ReleaseOp | SleepOp


class LocalCache:
    """Completed records of this process, most recently used last, at most ``size``."""

    def __init__(self, size: int, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self.clock = clock
        self._items: OrderedDict[str, Record] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Record | None:
        with self._lock:
            record = self._items.get(key)
            if record is None:
                return None
            if record.is_expired(self.clock()):
                del self._items[key]
                return None
            self._items.move_to_end(key)
            return record

    def put(self, record: Record) -> None:
        with self._lock:
            self._items[record.key] = record
            self._items.move_to_end(record.key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Plan(NamedTuple):
    """Everything one invocation needs, derived before any I/O.

    ``encode(result) -> bytes`` frames a successful result (raising
    :class:`UnencodableError` when it cannot, or when it is too large for the store);
    ``encode_not_stored(reason) -> bytes`` frames the marker kept instead;
    ``encode_error(exc) -> bytes`` frames an
    exception listed in ``store_errors``; ``replay(record) -> result`` decodes a completed
    record (raising stored errors). Adapters (Lambda, HTTP) build their own plans.
    """

    key: str
    fingerprint: str
    lease: float
    ttl: float
    encode: Callable[[Any], bytes]
    replay: Callable[[Record], Any]
    encode_not_stored: Callable[[str], bytes]
    encode_error: Callable[[BaseException], bytes] | None = None
    store_errors: tuple[type[BaseException], ...] = ()
    should_store: Callable[[Any], bool] | None = None
    wait: bool = False
    wait_timeout: float = 60.0
    cache: LocalCache | None = None
    fail_open: bool = False


def _reuse(plan: Plan) -> KeyReuseError:
    return KeyReuseError(
        f"idempotency key {plan.key!r} was already used with a different payload; "
        "use a new key for a new operation",
        key=plan.key,
    )


def _in_progress(plan: Plan, claim: Claim) -> AlreadyInProgressError:
    retry_after = max(0.0, claim.record.lease_expires_at - claim.now)
    return AlreadyInProgressError(
        f"idempotency key {plan.key!r} is being processed by another invocation; "
        f"retry in {retry_after:.1f}s (or use on_in_progress='wait')",
        key=plan.key,
        retry_after=retry_after,
    )


def _not_stored(plan: Plan, reason: str, result: Any) -> ResultNotStoredError:
    return ResultNotStoredError(
        f"the function ran, but its result cannot be kept under {plan.key!r}: {reason}. "
        "The key is completed as 'result not stored' (duplicates get this error, "
        "they do not run again). The result is attached as .result.",
        key=plan.key,
        result=result,
    )


def _short_cause(exc: StoreError) -> str:
    """The exception type behind a store failure, for a one-line log (no message text: it
    may carry key material or values)."""
    cause = exc.__cause__
    return f"StoreError from {type(cause).__name__}" if cause is not None else "StoreError"


def protocol(plan: Plan) -> Generator[Op, Any, Any]:
    """One invocation of the idempotency protocol (see ``docs/protocol.md``)."""
    if plan.cache is not None:
        cached = plan.cache.get(plan.key)
        if cached is not None and cached.fingerprint == plan.fingerprint:
            return plan.replay(cached)

    waited, delay = 0.0, _FIRST_POLL
    while True:
        try:
            claim: Claim = yield _new(ClaimOp, (plan.key, plan.fingerprint, plan.lease, plan.ttl))
        except StoreError as exc:
            if not plan.fail_open:
                raise
            cause = _short_cause(exc)
            try:
                return (yield _new(RunOp, (plan.key, None, plan.lease)))
            finally:  # one line per call, after the run (whether it returned or raised)
                _log.warning(
                    "idempotency store unavailable (%s); a call in %s ran without "
                    "idempotency (fail_open): a duplicate of this call may run it again",
                    cause,
                    _log.namespace(plan.key),
                    extra=_log.fields("fail_open", plan.key),
                )
        if claim.acquired:
            break
        record = claim.record
        if record.fingerprint != plan.fingerprint:
            raise _reuse(plan)
        if record.status is Status.COMPLETED:
            if plan.cache is not None:
                plan.cache.put(record)
            return plan.replay(record)
        if not plan.wait or waited >= plan.wait_timeout:
            raise _in_progress(plan, claim)
        pause = min(delay, plan.wait_timeout - waited)
        yield _new(SleepOp, (pause,))
        waited += pause
        delay = min(delay * 2, _MAX_POLL)

    fence = claim.record.fence
    try:
        result = yield _new(RunOp, (plan.key, fence, plan.lease))
    except GeneratorExit:  # the driver was abandoned: nothing more may be yielded
        raise
    except BaseException as exc:
        if plan.encode_error is not None and isinstance(exc, plan.store_errors):
            try:
                data = plan.encode_error(exc)
            except Exception as failure:  # its args cannot be written: never re-run either
                data = plan.encode_not_stored(
                    f"the {type(exc).__name__} it raised cannot be stored "
                    f"({type(failure).__name__}: {failure})"
                )
            stored = yield _new(CompleteOp, (plan.key, fence, data, plan.ttl))
            if not stored:
                _log.warning(
                    "a lease in %s was lost before the function's error could be stored",
                    _log.namespace(plan.key),
                    extra=_log.fields("lease_lost", plan.key),
                )
            raise
        try:
            yield _new(ReleaseOp, (plan.key, fence))
        except StoreError as release_failure:
            _log.warning(
                "could not release a key in %s after the function raised (%s); the key "
                "frees itself when its lease lapses",
                _log.namespace(plan.key),
                _short_cause(release_failure),
                extra=_log.fields("release_failed", plan.key),
            )
        raise

    not_stored: ResultNotStoredError | None = None
    try:
        keep = plan.should_store is None or plan.should_store(result)
        data = plan.encode(result) if keep else b""
    except Exception as exc:  # UnencodableError, a failing serializer or should_store
        # The side effect happened: keep the key completed (never re-run), say so loudly.
        keep = True
        reason = str(exc) if isinstance(exc, UnencodableError) else f"{type(exc).__name__}: {exc}"
        data = plan.encode_not_stored(reason)
        not_stored = _not_stored(plan, reason, result)
    if not keep:  # should_store declined: free the key for a retry
        yield _new(ReleaseOp, (plan.key, fence))
        return result
    try:
        try:
            completed = yield _new(CompleteOp, (plan.key, fence, data, plan.ttl))
        except ResultTooLargeError as exc:  # the store measured it: keep the marker instead
            not_stored = _not_stored(plan, str(exc), result)
            marker = plan.encode_not_stored(str(exc))
            completed = yield _new(CompleteOp, (plan.key, fence, marker, plan.ttl))
    except StoreError as exc:
        raise StoreError(
            f"the function ran but its result could not be saved under {plan.key!r}: {exc}. "
            "Do not retry blindly: a retry after the lease lapses runs it again. The result "
            "is attached as .result.",
            key=plan.key,
            result=result,
        ) from exc
    if not completed:
        raise LeaseLostError(
            f"the lease on {plan.key!r} lapsed while the function ran and another invocation "
            "took the key over; its record stands. Raise `lease` or keep heartbeat on. "
            "This invocation's result is attached as .result.",
            key=plan.key,
            result=result,
        )
    if not_stored is not None:
        raise not_stored
    if plan.cache is not None:
        plan.cache.put(
            Record(
                key=plan.key,
                status=Status.COMPLETED,
                fingerprint=plan.fingerprint,
                fence=fence,
                lease_expires_at=0.0,
                expires_at=plan.cache.clock() + plan.ttl,
                result=data,
            )
        )
    return result
