"""Sync and async shells that drive the sans-I/O :func:`~idempotence._protocol.protocol`.

Each shell only maps operations to store calls (``claim`` / ``aclaim``...), runs the body
under a lease heartbeat, and sleeps; every decision lives in the protocol, and the loop
around it is :func:`~idempotence._drive.drive` / ``adrive``. The two ``step`` functions
stay twins on purpose: one calls the store's sync methods and a timer-thread heartbeat,
the other awaits the async methods under an asyncio heartbeat task.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import TYPE_CHECKING, Any

from . import _log
from ._context import CURRENT_KEY
from ._drive import adrive, drive
from ._protocol import ClaimOp, CompleteOp, Op, Plan, ReleaseOp, RunOp, SleepOp, protocol
from ._timers import Timers

if TYPE_CHECKING:
    from .stores import Store

__all__ = ["arun_op", "invocation", "run_async", "run_op", "run_sync"]


def _renew(store: Store, key: str, fence: int, lease: float) -> bool:
    """One heartbeat of a running sync invocation: extend its lease. ``False`` (stop
    beating) once the lease is lost; a failed renewal is logged and tried again next beat."""
    try:
        if store.renew(key, fence, lease=lease):
            return True
    except Exception:
        _renew_failed(key)
        return True
    _lease_lost(key)
    return False


def _renew_failed(key: str) -> None:
    # the failure's type only: a client library's message may quote the key
    exc = sys.exc_info()[1]
    cause = exc.__cause__ if exc is not None else None
    reason = type(exc).__name__ + (f" from {type(cause).__name__}" if cause is not None else "")
    _log.warning(
        "could not renew a lease in %s (%s); trying again next beat",
        _log.namespace(key),
        reason,
        extra=_log.fields("renew_failed", key),
    )


def _lease_lost(key: str) -> None:
    _log.warning(
        "a lease in %s was lost while the function ran; its result will not be kept",
        _log.namespace(key),
        extra=_log.fields("lease_lost", key),
    )


_timers = Timers("idempotence-heartbeat")

#: Where :mod:`idempotence.observe` is once imported. Nobody can subscribe without importing
#: it, so the shells look it up instead of importing it: it loads ``logging`` and
#: ``dataclasses`` (-> ``inspect``), about half of the package's cold import.
_OBSERVE = __package__ + ".observe"
_modules = sys.modules


def invocation(plan: Plan, store: Store) -> Generator[Op, Any, Any]:
    """The protocol generator of one invocation of ``plan`` against ``store``: what
    :func:`run_sync` and :func:`run_async` drive, reported to the observers of
    :mod:`idempotence.observe` when any is subscribed. A front-end that drives several
    invocations itself (batching their store operations) starts each with this."""
    machine = protocol(plan)
    observe = _modules.get(_OBSERVE)
    if observe is not None and getattr(observe, "observers", None):  # all it costs unobserved
        watch: Callable[[Generator[Op, Any, Any], Plan, Store], Generator[Op, Any, Any]]
        watch = observe.watch
        machine = watch(machine, plan, store)
    return machine


def run_op(op: RunOp, store: Store, body: Callable[[], Any], *, heartbeat: bool) -> Any:
    """Perform a :class:`RunOp`: ``body()`` with the current key set (see
    :func:`~idempotence.current_key`) and, with ``heartbeat``, its lease renewed every
    lease / 3 while it runs. Returns or raises what ``body`` does."""
    token = CURRENT_KEY.set(op.key)
    beat = 0  # the heartbeat: renew every lease / 3 on the shared timer thread
    if heartbeat and op.fence is not None:
        every = op.lease / 3
        renew = functools.partial(_renew, store, op.key, op.fence, op.lease)
        beat = _timers.add(every, renew, every)
    try:
        return body()
    finally:
        if beat:
            _timers.cancel(beat)  # waits for a renewal in flight, if any
        CURRENT_KEY.reset(token)


async def arun_op(
    op: RunOp, store: Store, body: Callable[[], Awaitable[Any]], *, heartbeat: bool
) -> Any:
    """Async :func:`run_op`: ``await body()`` under an asyncio heartbeat task."""
    token = CURRENT_KEY.set(op.key)
    try:
        if heartbeat and op.fence is not None:
            return await _beating(body, store, op.key, op.fence, op.lease)
        return await body()
    finally:
        CURRENT_KEY.reset(token)


def run_sync(plan: Plan, store: Store, body: Callable[[], Any], *, heartbeat: bool) -> Any:
    """Run one invocation synchronously: ``body()`` runs at most once per key."""
    machine = invocation(plan, store)

    def step(op: Op) -> Any:
        if type(op) is ClaimOp:
            return store.claim(op.key, op.fingerprint, lease=op.lease, ttl=op.ttl)
        if type(op) is RunOp:
            return run_op(op, store, body, heartbeat=heartbeat)
        if type(op) is CompleteOp:
            return store.complete(op.key, op.fence, op.result, ttl=op.ttl)
        if type(op) is ReleaseOp:
            return store.release(op.key, op.fence)
        if type(op) is SleepOp:
            time.sleep(op.seconds)
        return None

    return drive(machine, step)


async def _renew_forever(store: Store, key: str, fence: int, lease: float) -> None:
    """Renew now, then every ``lease / 3``, until the lease is lost or this is cancelled."""
    import asyncio  # imported on first async use: keeps the package's cold import small

    while True:
        try:
            if not await store.arenew(key, fence, lease=lease):
                _lease_lost(key)
                return
        except Exception:
            _renew_failed(key)
        await asyncio.sleep(lease / 3)


class _Beats:
    """The heartbeats of one event loop's running invocations, on ONE timer: a body that
    starts adds ``(due, store, key, fence, lease)`` to a dict and removes it when it ends
    (nearly all end before their first beat); the timer is armed at the earliest due. When
    it fires, each entry due within 1/16 of its interval (``lease / 3``) gets its renewing
    task (:func:`_renew_forever`: renew now, then every ``lease / 3``), so the first beat
    comes between 15/16 of ``lease / 3`` and ``lease / 3`` after the start, and a timer
    firing serves all the entries due about then. Per call: two dict operations, not a
    ``call_later`` timer (a heap push and a cancellation on the loop's timer heap): the
    timer is never cancelled. One armed for an earlier due replaces it (``due``: the one
    that counts); a replaced timer, or one that finds nothing due, does nothing when it
    fires, and none is re-armed while no body runs.

    It never holds its loop (its timer is held by the loop; its tasks only while their
    bodies run), so the loop (the key of :data:`_loop_beats`) is collected once done."""

    __slots__ = ("count", "due", "running", "tasks")

    def __init__(self) -> None:
        self.running: dict[int, tuple[float, Store, str, int, float]] = {}
        self.tasks: dict[int, Any] = {}  # token -> its renewing task, once started
        self.count = itertools.count()
        self.due = math.inf  # when the timer that counts fires (inf: none armed)

    def add(self, loop: Any, store: Store, key: str, fence: int, lease: float) -> int:
        token = next(self.count)
        due = loop.time() + lease / 3
        self.running[token] = (due, store, key, fence, lease)
        if due < self.due:
            self.due = due
            loop.call_at(due, self._fire, loop, due)
        return token

    def remove(self, token: int) -> None:
        del self.running[token]
        if self.tasks:
            task = self.tasks.pop(token, None)
            if task is not None:
                task.cancel()

    def _fire(self, loop: Any, armed: float) -> None:
        if armed != self.due:  # replaced by a timer armed for an earlier due
            return
        now, tasks, earliest = loop.time(), self.tasks, math.inf
        for token, (due, store, key, fence, lease) in self.running.items():
            if token in tasks:
                continue
            if due - lease / 48 <= now:
                tasks[token] = loop.create_task(_renew_forever(store, key, fence, lease))
            elif due < earliest:
                earliest = due
        self.due = earliest
        if earliest < math.inf:
            loop.call_at(earliest, self._fire, loop, earliest)


#: Each event loop's :class:`_Beats` (set up on its first heartbeat, under the lock).
_loop_beats: weakref.WeakKeyDictionary[Any, _Beats] = weakref.WeakKeyDictionary()
_loop_beats_lock = threading.Lock()


async def _beating(
    body: Callable[[], Awaitable[Any]], store: Store, key: str, fence: int, lease: float
) -> Any:
    """``await body()`` while its lease is renewed every ``lease / 3`` (see :class:`_Beats`:
    a body that ends before the first beat costs no timer nor task of its own)."""
    import asyncio

    loop = asyncio.get_running_loop()
    beats = _loop_beats.get(loop)
    if beats is None:
        with _loop_beats_lock:
            beats = _loop_beats.setdefault(loop, _Beats())
    token = beats.add(loop, store, key, fence, lease)
    try:
        return await body()
    finally:
        beats.remove(token)


async def run_async(
    plan: Plan, store: Store, body: Callable[[], Awaitable[Any]], *, heartbeat: bool
) -> Any:
    """Run one invocation on the running event loop: ``await body()`` at most once per key."""
    machine = invocation(plan, store)

    async def step(op: Op) -> Any:
        if type(op) is ClaimOp:
            return await store.aclaim(op.key, op.fingerprint, lease=op.lease, ttl=op.ttl)
        if type(op) is RunOp:
            return await arun_op(op, store, body, heartbeat=heartbeat)
        if type(op) is CompleteOp:
            return await store.acomplete(op.key, op.fence, op.result, ttl=op.ttl)
        if type(op) is ReleaseOp:
            return await store.arelease(op.key, op.fence)
        if type(op) is SleepOp:
            import asyncio

            await asyncio.sleep(op.seconds)
        return None

    return await adrive(machine, step)
