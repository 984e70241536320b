"""The bounded pool of idempotence.stores._pool (MySQLStore's) on stand-in connections:
the paths a server test cannot reach on demand (a waiter cancelled or timing out just as it
is served, a failed connect freeing its place). tests/stores/test_mysql.py runs it on
MariaDB."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

import pytest

from idempotence import StoreError
from idempotence.stores._pool import AsyncPool, Pool, pool_url_options


class Conn:
    ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.closed = False

    def close(self) -> None:
        self.closed = True


def close(conn: Conn) -> None:
    conn.close()


async def aconnect() -> Conn:
    return Conn()


def test_options_from_the_url_and_the_constructor() -> None:
    assert pool_url_options({}) == {"pool_size": 10, "pool_timeout": 5.0}
    assert pool_url_options({"pool_size": "3", "pool_timeout": "0.5"}) == {
        "pool_size": 3,
        "pool_timeout": 0.5,
    }
    for size in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="pool_size must be a whole number"):
            Pool("S", size, 1.0, close)  # type: ignore[arg-type]
    for timeout in (0, -1, float("inf"), float("nan"), None):
        with pytest.raises(ValueError, match="pool_timeout must be a number"):
            Pool("S", 1, timeout, close)  # type: ignore[arg-type]


def test_a_failed_connect_frees_its_place_for_a_waiter() -> None:
    pool: Pool[Conn] = Pool("S", 1, 2.0, close)

    def refuse() -> Conn:
        raise OSError("refused")

    with pytest.raises(OSError, match="refused"), pool.connection(refuse):
        pass
    assert pool.open == 0
    with pool.connection(Conn) as conn:
        assert pool.open == 1
    assert not conn.closed
    assert pool._idle == [conn]


def test_a_sync_waiter_is_served_in_order_and_times_out_alone() -> None:
    pool: Pool[Conn] = Pool("S", 1, 0.05, close)
    with pool.connection(Conn) as held:
        with pytest.raises(StoreError, match="pool_size=1") as caught, pool.connection(Conn):
            pass
        assert "pool_timeout=0.05s" in str(caught.value)
        assert not pool._waiters  # the timed-out waiter left the queue
    got: list[Conn] = []

    def wait() -> None:
        with pool.connection(Conn) as conn:
            got.append(conn)

    pool.timeout = 5.0
    with pool.connection(Conn) as again:
        thread = threading.Thread(target=wait)
        thread.start()
        while not pool._waiters:
            thread.join(0.001)
    thread.join(5)
    assert got == [again] == [held]  # handed over, not a new one
    assert pool.open == 1


async def test_a_cancelled_async_waiter_passes_what_it_was_handed_on() -> None:
    pool: AsyncPool[Conn] = AsyncPool("S", 1, 5.0, close)
    entered = asyncio.Event()

    async def use() -> int:
        async with pool.connection(aconnect) as conn:
            entered.set()
            return conn.id

    async with pool.connection(aconnect) as held:
        first = asyncio.create_task(use())
        second = asyncio.create_task(use())
        await asyncio.sleep(0)
        assert len(pool._waiters) == 2
    # held is handed to the first waiter; it is cancelled before it runs: the second gets it
    first.cancel()
    assert await second == held.id
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (pool.open, pool._idle) == (1, [held])
    assert not pool._waiters


async def test_an_async_close_closes_the_idle_now_and_the_busy_on_return() -> None:
    pool: AsyncPool[Conn] = AsyncPool("S", 2, 5.0, close)
    async with pool.connection(aconnect) as busy:
        async with pool.connection(aconnect) as idle:
            pass
        pool.close()
        assert idle.closed
        assert not busy.closed
        assert pool.open == 1
    assert busy.closed
    assert pool.open == 0
    async with pool.connection(aconnect) as fresh:
        assert fresh not in (busy, idle)


async def test_an_async_waiter_times_out_with_the_store_error() -> None:
    pool: AsyncPool[Conn] = AsyncPool("S", 1, 0.05, close)
    async with pool.connection(aconnect):
        with pytest.raises(StoreError, match=r"S: no free connection within pool_timeout=0.05s"):
            async with pool.connection(aconnect):
                pass
        assert not pool._waiters
    assert pool.open == 1


def test_idle_connections_older_than_max_idle_are_retired() -> None:
    """A connection idle for more than max_idle is closed when a caller comes, and the
    caller gets a new one; a younger one is reused; the count of open connections
    follows."""
    pool: Pool[Conn] = Pool("S", 2, 1.0, close, max_idle=0.05)
    with pool.connection(Conn) as first, pool.connection(Conn) as second:
        pass
    assert pool.open == 2
    with pool.connection(Conn) as again:  # young: reused (the last one given back)
        assert again is first
    time.sleep(0.1)
    with pool.connection(Conn) as fresh:  # both idle ones too old: closed, a new one
        assert fresh not in (first, second)
        assert first.closed
        assert second.closed
        assert pool.open == 1
    assert pool.open == 1
    assert not fresh.closed


async def test_async_idle_connections_older_than_max_idle_are_retired() -> None:
    pool: AsyncPool[Conn] = AsyncPool("S", 1, 1.0, close, max_idle=0.05)
    async with pool.connection(aconnect) as first:
        pass
    async with pool.connection(aconnect) as again:
        assert again is first
    await asyncio.sleep(0.1)
    async with pool.connection(aconnect) as fresh:
        assert fresh is not first
        assert first.closed
    assert pool.open == 1
