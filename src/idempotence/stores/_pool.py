"""The pool options every pooled SQL store reads the same way (``pool_size``,
``pool_timeout``; PostgreSQL hands them to psycopg_pool), the error of a pool that stayed
full, and a bounded connection pool for the drivers that have none (PyMySQL, aiomysql).

A pool keeps at most ``size`` connections open, idle and in use together. A caller takes
the most recently returned idle connection, or opens a new one while fewer than ``size``
are open (the opening counts at once, so concurrent callers cannot overshoot); otherwise
it waits, first come first served, up to ``timeout`` seconds: a connection given back is
handed to the first waiter, and the place of a discarded one goes to it (it opens a new
connection). A waiter that is not served in time gets :func:`pool_exhausted`'s
:class:`~idempotence.StoreError`. A connection whose block raised is closed and discarded,
never reused (its session state is unknown). Idle connections are retired after
``max_idle`` seconds unused (:data:`DEFAULT_MAX_IDLE`, psycopg_pool's default, which
PostgresStore uses): the server (MariaDB's ``wait_timeout``) or a NAT or load balancer
on the way drops long-idle connections without telling the client, and the first call on
one would fail; a caller that finds the idle connections that old closes them and opens
a new one. ``close()`` closes the idle connections at once and those in use when they
come back; the pool stays usable and opens new ones.

Fork: a pool's state is reset in a child process (``os.register_at_fork``): the parent's
connections are dropped there without being closed (closing would speak on the parent's
sockets), and one checked out before the fork is dropped when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Generic, TypeVar

from .._errors import StoreError
from ._registry import option_number

__all__ = [
    "DEFAULT_MAX_IDLE",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_POOL_TIMEOUT",
    "AsyncPool",
    "Pool",
    "check_pool_options",
    "pool_exhausted",
    "pool_url_options",
]

_C = TypeVar("_C")

#: Connections per pool (PostgreSQL and MariaDB/MySQL alike).
DEFAULT_POOL_SIZE = 10
#: Seconds a caller waits for a free connection of a full pool.
DEFAULT_POOL_TIMEOUT = 5.0
#: Seconds an idle connection is kept before it is retired (psycopg_pool's ``max_idle``).
DEFAULT_MAX_IDLE = 600.0


def pool_url_options(options: Mapping[str, str]) -> dict[str, Any]:
    """``pool_size`` (a whole number >= 1) and ``pool_timeout`` (seconds > 0) of a store
    URL's query options (``url_query``), the defaults when absent."""
    size = option_number(options, "pool_size", DEFAULT_POOL_SIZE)
    if size is None or size != int(size):
        raise ValueError("store URL option 'pool_size' must be a positive whole number")
    return {
        "pool_size": int(size),
        "pool_timeout": option_number(options, "pool_timeout", DEFAULT_POOL_TIMEOUT),
    }


def check_pool_options(pool_size: object, pool_timeout: object) -> None:
    """``ValueError`` unless ``pool_size`` is a whole number >= 1 and ``pool_timeout`` a
    finite number of seconds > 0."""
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"pool_size must be a whole number >= 1, not {pool_size!r}")
    if (
        isinstance(pool_timeout, bool)
        or not isinstance(pool_timeout, (int, float))
        or not 0 < pool_timeout < float("inf")
    ):
        raise ValueError(f"pool_timeout must be a number of seconds > 0, not {pool_timeout!r}")


def pool_exhausted(store: str, size: int, timeout: float) -> StoreError:
    """The error of a caller that waited ``timeout`` seconds for a connection of a full
    pool: what happened and what to change (no call argument is quoted)."""
    return StoreError(
        f"{store}: no free connection within pool_timeout={timeout:g}s: all pool_size={size} "
        "connections of the pool stayed in use by other calls. Raise pool_size (the server "
        "must accept that many connections per process and per event loop), make fewer "
        "concurrent calls per process, or raise pool_timeout to let calls wait longer."
    )


class _Waiter(Generic[_C]):
    """A caller waiting for a connection: handed one (``conn``) or a place to open one
    (``slot``), then woken; ``generation`` and ``pid`` of the pool when it was served."""

    __slots__ = ("conn", "generation", "pid", "slot", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.conn: _C | None = None
        self.slot = False
        self.generation = 0
        self.pid = 0
        self.wake = wake

    @property
    def served(self) -> bool:
        return self.conn is not None or self.slot


#: Every live pool, reset in a forked child.
_POOLS: weakref.WeakSet[_Book[Any]] = weakref.WeakSet()


class _Book(Generic[_C]):
    """The bookkeeping of one pool (no I/O but closing): idle connections, how many are
    open (idle, in use or being opened), the waiters in arrival order, and a generation
    that :meth:`close` ends (a connection of an earlier one is closed when given back)."""

    def __init__(
        self,
        store: str,
        size: int,
        timeout: float,
        close: Callable[[_C], None],
        *,
        max_idle: float = DEFAULT_MAX_IDLE,
    ) -> None:
        check_pool_options(size, timeout)
        self.store, self.size, self.timeout = store, size, timeout
        #: Seconds an idle connection is kept (see the module).
        self.max_idle = max_idle
        self._close = close
        self._generation = 0
        self._reset()
        _POOLS.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_C] = []
        self._idle_since: list[float] = []  # when each of _idle was given back
        self._open = 0
        self._waiters: deque[_Waiter[_C]] = deque()
        self._generation += 1
        self._pid = os.getpid()

    @property
    def open(self) -> int:
        """Connections open: idle, in use, or being opened."""
        return self._open

    def _serve(self, waiter: _Waiter[_C], conn: _C | None) -> None:
        """Under the lock: ``waiter`` gets ``conn``, or a place to open one (``None``)."""
        waiter.conn, waiter.slot = conn, conn is None
        waiter.generation, waiter.pid = self._generation, self._pid

    def _checkout(self, waiter: _Waiter[_C]) -> bool:
        """Serve ``waiter`` now (an idle connection, or a place to open one), or queue it
        (``False``). Idle connections unused for more than ``max_idle`` are closed first
        (the most recently returned is the youngest: when it is too old, all are)."""
        stale: list[_C] = []
        with self._lock:
            if self._idle and time.monotonic() - self._idle_since[-1] > self.max_idle:
                stale, self._idle, self._idle_since = self._idle, [], []
                self._open -= len(stale)
            if self._idle:
                self._idle_since.pop()
                self._serve(waiter, self._idle.pop())
            elif self._open < self.size:
                self._open += 1
                self._serve(waiter, None)
            else:
                self._waiters.append(waiter)
            queued = not waiter.served
        for conn in stale:
            with contextlib.suppress(Exception):
                self._close(conn)
        return not queued

    def _withdraw(self, waiter: _Waiter[_C]) -> bool:
        """Take a waiter that stops waiting out of the queue; ``False`` if it was served
        meanwhile (it is then no longer queued)."""
        with self._lock:
            if waiter.served:
                return False
            self._waiters.remove(waiter)
            return True

    def _pass_on(self, waiter: _Waiter[_C]) -> None:
        """A served waiter that will not use what it got (cancelled): to the next one."""
        if waiter.conn is not None:
            self._give_back(waiter.conn, waiter, broken=False)
        else:
            self._free_slot(waiter.pid)

    def _give_back(self, conn: _C, taken: _Waiter[_C], *, broken: bool) -> None:
        """Return a connection: handed to the first waiter or kept idle; closed (its place
        freed) if its block raised or the pool was closed since it was taken."""
        with self._lock:
            if taken.pid != self._pid:  # taken before a fork: the parent's socket, drop it
                return
            if not broken and taken.generation == self._generation:
                if self._waiters:
                    waiter = self._waiters.popleft()
                    self._serve(waiter, conn)
                    waiter.wake()
                else:
                    self._idle.append(conn)
                    self._idle_since.append(time.monotonic())
                return
        with contextlib.suppress(Exception):
            self._close(conn)
        self._free_slot(taken.pid)

    def _free_slot(self, pid: int) -> None:
        """A connection's place is free (closed, or never opened): to the first waiter,
        who opens one, or one fewer open."""
        with self._lock:
            if pid != self._pid:
                return
            if self._waiters:
                waiter = self._waiters.popleft()
                self._serve(waiter, None)
                waiter.wake()
            else:
                self._open -= 1

    def close(self) -> None:
        """Close the idle connections now and those in use when they are given back."""
        with self._lock:
            idle, self._idle, self._idle_since = self._idle, [], []
            self._open -= len(idle)
            self._generation += 1
        for conn in idle:
            with contextlib.suppress(Exception):
                self._close(conn)


class Pool(_Book[_C]):
    """A bounded pool of sync connections shared by threads (see the module)."""

    @contextmanager
    def connection(self, connect: Callable[[], _C]) -> Iterator[_C]:
        """A connection of the pool (``connect()`` opens a new one when there is room),
        given back on a clean exit, closed and discarded if the block raised."""
        event = threading.Event()
        waiter: _Waiter[_C] = _Waiter(event.set)
        if not self._checkout(waiter):
            try:
                event.wait(self.timeout)
            except BaseException:  # interrupted: what it was handed goes to the next one
                if not self._withdraw(waiter):
                    self._pass_on(waiter)
                raise
            if self._withdraw(waiter):
                raise pool_exhausted(self.store, self.size, self.timeout)
        conn = waiter.conn
        if conn is None:
            try:
                conn = connect()
            except BaseException:
                self._free_slot(waiter.pid)
                raise
        try:
            yield conn
        except BaseException:
            self._give_back(conn, waiter, broken=True)
            raise
        self._give_back(conn, waiter, broken=False)


class AsyncPool(_Book[_C]):
    """A bounded pool of async connections for the tasks of one event loop (see the
    module)."""

    @asynccontextmanager
    async def connection(self, connect: Callable[[], Awaitable[_C]]) -> AsyncIterator[_C]:
        """Async :meth:`Pool.connection`."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        waiter: _Waiter[_C] = _Waiter(wake)
        if not self._checkout(waiter):
            try:
                await asyncio.wait((future,), timeout=self.timeout)
            except BaseException:  # cancelled: what it was handed goes to the next one
                if not self._withdraw(waiter):
                    self._pass_on(waiter)
                raise
            if self._withdraw(waiter):
                raise pool_exhausted(self.store, self.size, self.timeout)
        conn = waiter.conn
        if conn is None:
            try:
                conn = await connect()
            except BaseException:
                self._free_slot(waiter.pid)
                raise
        try:
            yield conn
        except BaseException:
            self._give_back(conn, waiter, broken=True)
            raise
        self._give_back(conn, waiter, broken=False)


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._reset()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
