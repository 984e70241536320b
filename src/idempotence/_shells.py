"""Sync and async shells that drive the sans-I/O :func:`~idempotence._protocol.protocol`.

Each shell only maps operations to store calls (``claim`` / ``aclaim``...), runs the body
under a lease heartbeat, and sleeps; every decision lives in the protocol.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import _log
from ._context import CURRENT_KEY
from ._protocol import ClaimOp, CompleteOp, Plan, ReleaseOp, RunOp, SleepOp, protocol
from .stores._base import Store

__all__ = ["run_async", "run_sync"]


class _Heartbeats:
    """One daemon thread renews the leases of every running sync invocation of the process.

    Registering and cancelling are a dict insert and pop; the thread wakes only when a
    lease is due for renewal (every ``lease / 3``), so a fast call costs no thread.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: dict[int, list[Any]] = {}  # id -> [due, store, key, fence, lease]
        self._ids = itertools.count(1)
        self._pid = 0  # the process whose thread runs (a fork has none)
        self._next_wake = float("inf")

    def start(self, store: Store, key: str, fence: int, lease: float) -> int:
        """Begin renewing ``key``'s lease every ``lease / 3``; returns a handle for stop.

        The hot path takes no lock: dict insert/pop and ``next`` on a counter are atomic
        under the GIL. The thread is only woken when this lease is due before its next
        planned wake-up (typically the first call after an idle period).
        """
        due = time.monotonic() + lease / 3
        ident = next(self._ids)
        self._active[ident] = [due, store, key, fence, lease]
        if self._pid != os.getpid():
            with self._cond:
                if self._pid != os.getpid():
                    self._pid = os.getpid()
                    self._next_wake = due
                    threading.Thread(
                        target=self._run, name="idempotence-heartbeat", daemon=True
                    ).start()
        elif due < self._next_wake:
            with self._cond:
                self._cond.notify()
        return ident

    def stop(self, ident: int) -> None:
        """Stop renewing (the body returned or raised)."""
        self._active.pop(ident, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(i, e) for i, e in list(self._active.items()) if e[0] <= now]
                for _, entry in due:
                    entry[0] = now + entry[4] / 3
                self._next_wake = min((e[0] for e in list(self._active.values())), default=now + 60)
                if not due:
                    self._cond.wait(self._next_wake - now)
                    continue
            for ident, (_, store, key, fence, lease) in due:
                try:
                    if not store.renew(key, fence, lease=lease):
                        _log.warning("lease on %s was lost; the result will not be kept", key)
                        self._active.pop(ident, None)
                except Exception:
                    _log.warning("could not renew the lease on %s", key, exc_info=True)


_heartbeats = _Heartbeats()


def run_sync(plan: Plan, store: Store, body: Callable[[], Any], *, heartbeat: bool) -> Any:
    """Run one invocation synchronously: ``body()`` runs at most once per key."""
    machine = protocol(plan)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = machine.send(value) if error is None else machine.throw(error)
        except StopIteration as done:
            return done.value
        value, error = None, None
        try:
            if type(op) is ClaimOp:
                value = store.claim(op.key, op.fingerprint, lease=op.lease, ttl=op.ttl)
            elif type(op) is RunOp:
                token = CURRENT_KEY.set(op.key)
                beat = (
                    _heartbeats.start(store, op.key, op.fence, op.lease)
                    if heartbeat and op.fence is not None
                    else 0
                )
                try:
                    value = body()
                finally:
                    _heartbeats.stop(beat)
                    CURRENT_KEY.reset(token)
            elif type(op) is CompleteOp:
                value = store.complete(op.key, op.fence, op.result, ttl=op.ttl)
            elif type(op) is ReleaseOp:
                value = store.release(op.key, op.fence)
            elif type(op) is SleepOp:
                time.sleep(op.seconds)
        except BaseException as exc:
            error = exc


async def _renew_forever(store: Store, key: str, fence: int, lease: float) -> None:
    import asyncio  # imported on first async use: keeps the package's cold import small

    while True:
        await asyncio.sleep(lease / 3)
        try:
            if not await store.arenew(key, fence, lease=lease):
                _log.warning("lease on %s was lost; the result will not be kept", key)
                return
        except Exception:
            _log.warning("could not renew the lease on %s", key, exc_info=True)


async def _beating(
    body: Callable[[], Awaitable[Any]], store: Store, key: str, fence: int, lease: float
) -> Any:
    import asyncio

    task = asyncio.get_running_loop().create_task(_renew_forever(store, key, fence, lease))
    try:
        return await body()
    finally:
        task.cancel()


async def run_async(
    plan: Plan, store: Store, body: Callable[[], Awaitable[Any]], *, heartbeat: bool
) -> Any:
    """Run one invocation on the running event loop: ``await body()`` at most once per key."""
    machine = protocol(plan)
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            op = machine.send(value) if error is None else machine.throw(error)
        except StopIteration as done:
            return done.value
        value, error = None, None
        try:
            if type(op) is ClaimOp:
                value = await store.aclaim(op.key, op.fingerprint, lease=op.lease, ttl=op.ttl)
            elif type(op) is RunOp:
                token = CURRENT_KEY.set(op.key)
                try:
                    if heartbeat and op.fence is not None:
                        value = await _beating(body, store, op.key, op.fence, op.lease)
                    else:
                        value = await body()
                finally:
                    CURRENT_KEY.reset(token)
            elif type(op) is CompleteOp:
                value = await store.acomplete(op.key, op.fence, op.result, ttl=op.ttl)
            elif type(op) is ReleaseOp:
                value = await store.arelease(op.key, op.fence)
            elif type(op) is SleepOp:
                import asyncio

                await asyncio.sleep(op.seconds)
        except BaseException as exc:
            error = exc
