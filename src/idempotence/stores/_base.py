"""The store interface: five atomic operations on records, sync and async.

A store keeps one :class:`~idempotence.Record` per key and offers:

``claim(key, fingerprint, lease=, ttl=)``
    One atomic round trip. Creates an ``IN_PROGRESS`` record (a record created from nothing
    takes the fence :func:`fresh_fence` of ``now``: the store clock in milliseconds), or takes
    over a record whose retention ended or whose lease lapsed (with the same fingerprint;
    fence + 1), or fails and returns the existing record.
``complete(key, fence, result, ttl=)``
    Store the encoded result and mark the record ``COMPLETED``, only if ``fence`` is still
    the record's and it is in progress. Returns whether it did.
``release(key, fence)``
    Give up an in-progress record the caller owns (fence-conditional), so a retry can run:
    the record is kept with its fence but its retention ends now, so it reads as absent and
    the next claim takes it over with fence + 1 (a stale owner stays fenced out).
``renew(key, fence, lease=)``
    Extend the lease of an in-progress record the caller owns (fence-conditional).
``get(key)`` / ``delete(key)``
    Read (retention enforced on read: an expired record reads as ``None``) / forget a key.

Each has an ``a``-prefixed async twin (``aclaim``...). The defaults run the sync method in a
worker thread; stores with a native async client override them. Any exception raised by a
store method that is not already an :class:`~idempotence.IdempotencyError` is translated
into :class:`~idempotence.StoreError` at this boundary (the original is chained).

To write a store: subclass :class:`Store`, implement the six sync methods (and the async
ones if you have an async client), and run :mod:`idempotence.testing`'s conformance suite.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, MutableMapping
from typing import Any, ClassVar, TypeVar

from .._errors import IdempotencyError, StoreError
from .._record import Claim, Record, Status

__all__ = ["Clock", "Store", "decide_claim", "fresh_fence"]

Clock = Callable[[], float]
_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")

_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE

_OPERATIONS = (
    "claim", "complete", "release", "renew", "get", "delete",
    "aclaim", "acomplete", "arelease", "arenew", "aget", "adelete",
    # the BatchClaims capability (idempotence.stores.capabilities), where a store has it
    "claim_many", "complete_many", "release_many",
    "aclaim_many", "acomplete_many", "arelease_many",
)  # fmt: skip


def _translate(name: str, method: _F) -> _F:
    """Wrap a store method so foreign exceptions surface as ``StoreError``."""
    if getattr(method, "__idempotence_wrapped__", False):
        return method

    def fail(self: Store, exc: Exception) -> StoreError:
        return StoreError(
            f"{type(self).__name__}.{name} failed: {type(exc).__name__}: {exc}"
            f"{_socket_cause(exc)}. The function was not run. Check that the store is "
            "reachable and configured, then retry."
        )

    wrapper: Any = None
    make = _EXACT.get(name)
    if make is not None and _shape(method) == _shape(getattr(Store, name)):
        wrapper = make(method, fail)
    elif method.__code__.co_flags & _CO_COROUTINE:  # inspect.iscoroutinefunction, unimported

        async def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return await method(self, *args, **kwargs)
            except IdempotencyError:
                raise
            except Exception as exc:
                raise fail(self, exc) from exc

    else:

        def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except IdempotencyError:
                raise
            except Exception as exc:
                raise fail(self, exc) from exc

    functools.update_wrapper(wrapper, method)
    wrapper.__idempotence_wrapped__ = True
    return wrapper  # type: ignore[no-any-return]


def _socket_cause(exc: BaseException) -> str:
    """``"; cause: ConnectionRefusedError: ..."``: the innermost socket error behind a
    client library's wrapper (e.g. botocore's ``EndpointConnectionError``), which names the
    real cause (refused, unknown host, timed out); empty if there is none."""
    root: BaseException | None = None
    seen: set[int] = set()
    link: BaseException | None = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError):
            root = link
        link = link.__cause__ or link.__context__
    if root is None or root is exc:
        return ""
    return f"; cause: {type(root).__name__}: {root}"


def _shape(fn: Callable[..., Any]) -> tuple[Any, ...]:
    """Parameter names and kinds, defaults and sync/async of a function."""
    code = fn.__code__
    n = code.co_argcount + code.co_kwonlyargcount
    return (
        code.co_varnames[:n],
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_flags & (0x04 | 0x08 | _CO_COROUTINE),  # *args, **kwargs, async
        fn.__defaults__,
        fn.__kwdefaults__,
    )


# Wrappers with the interface's exact signatures for the two operations on every call's
# path (claim; complete): arguments pass straight through instead of being packed into
# *args/**kwargs and out again (~0.35 us a call). Every other method, and any method with
# another signature, gets the generic wrapper above.
_Fail = Callable[[Any, Exception], Exception]


def _claim(m: Any, fail: _Fail) -> Any:
    def claim(self: Any, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        try:
            return m(self, key, fingerprint, lease=lease, ttl=ttl)
        except IdempotencyError:
            raise
        except Exception as exc:
            raise fail(self, exc) from exc

    return claim


def _complete(m: Any, fail: _Fail) -> Any:
    def complete(self: Any, key: str, fence: int, result: bytes, *, ttl: float) -> Any:
        try:
            return m(self, key, fence, result, ttl=ttl)
        except IdempotencyError:
            raise
        except Exception as exc:
            raise fail(self, exc) from exc

    return complete


def _aclaim(m: Any, fail: _Fail) -> Any:
    async def aclaim(self: Any, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        try:
            return await m(self, key, fingerprint, lease=lease, ttl=ttl)
        except IdempotencyError:
            raise
        except Exception as exc:
            raise fail(self, exc) from exc

    return aclaim


def _acomplete(m: Any, fail: _Fail) -> Any:
    async def acomplete(self: Any, key: str, fence: int, result: bytes, *, ttl: float) -> Any:
        try:
            return await m(self, key, fence, result, ttl=ttl)
        except IdempotencyError:
            raise
        except Exception as exc:
            raise fail(self, exc) from exc

    return acomplete


_EXACT: dict[str, Callable[[Any, _Fail], Any]] = {
    "claim": _claim, "complete": _complete, "aclaim": _aclaim, "acomplete": _acomplete,
}  # fmt: skip


class Store(ABC):
    """Base class of every store. See the module docstring for the contract."""

    #: Largest encoded result the store can keep; larger results complete as "not stored".
    max_result_bytes: ClassVar[int] = 64 * 1024 * 1024
    #: Whether ``clock`` is read by the store itself (False: the server's clock decides).
    uses_client_clock: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _OPERATIONS:
            if name in cls.__dict__:
                setattr(cls, name, _translate(name, cls.__dict__[name]))

    # -- sync ---------------------------------------------------------------------------
    @abstractmethod
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """Atomically claim ``key`` or return the existing record (one round trip)."""

    @abstractmethod
    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        """Store ``result`` and mark completed, if ``fence`` still owns the key."""

    @abstractmethod
    def release(self, key: str, fence: int) -> bool:
        """End the in-progress record's retention (keeping its fence), if ``fence`` still
        owns the key."""

    @abstractmethod
    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        """Extend the lease to now + ``lease``, if ``fence`` still owns the key."""

    @abstractmethod
    def get(self, key: str) -> Record | None:
        """The live record of ``key``, or ``None`` (absent or past retention)."""

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Forget ``key`` whatever its state. Returns whether a record was removed."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections. The store may be used again afterwards (it reconnects)."""

    # -- async (defaults: the sync method in a worker thread) ---------------------------
    async def aclaim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        """Async :meth:`claim`."""
        return await _to_thread(self.claim, key, fingerprint, lease=lease, ttl=ttl)

    async def acomplete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        """Async :meth:`complete`."""
        return await _to_thread(self.complete, key, fence, result, ttl=ttl)

    async def arelease(self, key: str, fence: int) -> bool:
        """Async :meth:`release`."""
        return await _to_thread(self.release, key, fence)

    async def arenew(self, key: str, fence: int, *, lease: float) -> bool:
        """Async :meth:`renew`."""
        return await _to_thread(self.renew, key, fence, lease=lease)

    async def aget(self, key: str) -> Record | None:
        """Async :meth:`get`."""
        return await _to_thread(self.get, key)

    async def adelete(self, key: str) -> bool:
        """Async :meth:`delete`."""
        return await _to_thread(self.delete, key)

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        self.close()


async def _to_thread(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    import asyncio  # imported on first async use: keeps the package's cold import small

    return await asyncio.to_thread(fn, *args, **kwargs)


# Records and claims are built on every call of the in-process stores: ``tuple.__new__``
# skips the Python-level ``__new__`` that calling a NamedTuple class runs (~0.3 us each).
# Every field is passed (defaults are not applied on this path).
_new = tuple.__new__


def forget_closed_loops(per_loop: MutableMapping[Any, Any]) -> None:
    """Drop the entries of event loops that are closed from a ``{loop: client}`` map (their
    clients were closed with their loops, or leaked with them). Call it under the map's
    lock."""
    for loop in [loop for loop in per_loop if loop.is_closed()]:
        del per_loop[loop]


def fresh_fence(now: float) -> int:
    """The fence of a record created from nothing: ``now`` (the store's clock) in whole
    milliseconds, at least 1.

    A record's fence only grows while the record exists (take-overs add 1), but a record
    can be deleted (``delete``, ``purge()``, a backend TTL) while a paused invocation still
    holds one of its fences. Restarting at 1 would hand that stale fence to a new owner
    (ABA: the zombie completes over it). Starting from the clock instead gives a fence
    above every earlier one of the key, provided the clock moved forward since that fence
    was issued by more than the number of take-overs the record saw (one per millisecond,
    sustained, over its whole life). Every store computes it the same way (Lua
    ``math.floor``, SQL ``floor``: exact for doubles below 2**53 ms, i.e. until year 287396).
    """
    fence = int(now * 1000)
    return fence if fence > 1 else 1


def decide_claim(
    existing: Record | None,
    key: str,
    fingerprint: str,
    *,
    now: float,
    lease: float,
    ttl: float,
) -> Claim:
    """The claim rule, as a pure function (the reference the native stores implement).

    ``existing`` is the stored record (possibly past retention). Returns the claim outcome;
    when acquired, ``record`` is the one to write.
    """
    if existing is not None and not existing.is_expired(now):
        lapsed = existing.status is Status.IN_PROGRESS and now >= existing.lease_expires_at
        if not (lapsed and existing.fingerprint == fingerprint):
            return _new(Claim, (False, existing, now))
    fence = existing.fence + 1 if existing is not None else fresh_fence(now)
    # Fields: key, status, fingerprint, fence, lease_expires_at, expires_at, result.
    lease_end, expires = now + lease, now + (ttl if ttl > lease else lease)
    record = _new(Record, (key, Status.IN_PROGRESS, fingerprint, fence, lease_end, expires, None))
    return _new(Claim, (True, record, now))


#: Wall-clock seconds since the epoch: the clock of stores that read their own
#: (``time.time`` itself, not a wrapper: it is read on every claim and complete).
system_clock: Clock = time.time
