"""MySQLStore against a real MariaDB/MySQL server (``IDEMPOTENCE_TEST_MYSQL_URL``, default
``mysql://root@127.0.0.1:3306/test``). One table per test session, dropped at the end."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from idempotence import StoreError
from idempotence._record import Status
from idempotence.stores import store_from_url
from idempotence.testing import LEASE, TTL, ManualClock, StoreContract
from tests.conftest import MYSQL_URL, backend_unavailable, mysql_admin_or_unavailable

try:
    import aiomysql  # noqa: F401
    import pymysql  # noqa: F401

    from idempotence.stores._mysql import MySQLStore
except ImportError as exc:  # pragma: no cover - depends on the environment
    backend_unavailable(f"pymysql/aiomysql are not installed: {exc}")

URL = MYSQL_URL
TABLE = f"idem_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def admin() -> Iterator[Any]:
    """A plain connection for setup and inspection; drops the session table at the end."""
    conn = mysql_admin_or_unavailable(URL)
    MySQLStore(URL, table=TABLE).create_table()
    yield conn
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS `{TABLE}`")
    conn.close()


@pytest.fixture
def key() -> str:
    return f"k#{uuid.uuid4().hex}"


class TestMySQLStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, admin: Any) -> Iterator[MySQLStore]:
        store = MySQLStore(URL, table=TABLE, clock=clock, pool_size=16)
        yield store
        store.close()

    @pytest.fixture
    def store_url(self, admin: Any) -> str:
        return f"{URL}?table={TABLE}"


def _server_store(**kwargs: Any) -> MySQLStore:
    return MySQLStore(URL, table=TABLE, **kwargs)


def test_server_clock_sets_leases_and_retention(admin: Any, key: str) -> None:
    store = _server_store()
    try:
        before = time.time()
        claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        after = time.time()
        assert claim.acquired
        assert before - 1 <= claim.now <= after + 1  # the server's clock, in epoch seconds
        assert claim.record.lease_expires_at == pytest.approx(claim.now + LEASE, abs=1e-3)
        assert claim.record.expires_at == pytest.approx(claim.now + TTL, abs=1e-3)
        # retention enforced on read: a released record reads as absent at once
        assert store.release(key, claim.record.fence)
        assert store.get(key) is None
        again = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert again.acquired
        assert again.record.fence == claim.record.fence + 1
    finally:
        store.close()


def test_keys_differing_in_case_or_trailing_space_are_distinct(admin: Any, key: str) -> None:
    store = _server_store()
    try:
        for variant in (key, key.upper(), key + " ", key + "\u00e9"):
            assert store.claim(variant, "fp", lease=LEASE, ttl=TTL).acquired, variant
        record = store.get(key + "\u00e9")
        assert record is not None
        assert record.key == key + "\u00e9"
    finally:
        store.close()


class _Counting:
    """Counts the commands (round trips) sent on every PyMySQL connection of a store."""

    def __init__(self, store: MySQLStore) -> None:
        self.sent = 0
        original = store._new_connection

        def new_connection() -> Any:
            conn = original()
            send = conn._execute_command

            def counted(command: int, sql: Any) -> Any:
                self.sent += 1
                return send(command, sql)

            conn._execute_command = counted
            return conn

        store._new_connection = new_connection  # type: ignore[method-assign]

    def take(self) -> int:
        sent, self.sent = self.sent, 0
        return sent


def test_one_round_trip_per_operation(admin: Any, key: str) -> None:
    store = _server_store()
    trips = _Counting(store)
    try:
        store.get(key)  # warm up: the connection exists
        trips.take()
        claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        assert trips.take() == 1
        assert store.renew(key, claim.record.fence, lease=LEASE)
        assert trips.take() == 1
        assert not store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        assert trips.take() == 1
        assert store.complete(key, claim.record.fence, b"r", ttl=TTL)
        assert trips.take() == 1
        replay = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert (replay.acquired, replay.record.result) == (False, b"r")
        assert trips.take() == 1
        assert store.get(key) == replay.record
        assert trips.take() == 1
        assert store.delete(key)
        assert trips.take() == 1
    finally:
        store.close()


def test_n_threads_claim_one_key_exactly_one_runs(admin: Any, key: str) -> None:
    """32 threads, each with its own connection, claim one key at once (server clock):
    exactly one acquires; every other sees that owner's fence."""
    store = _server_store(pool_size=32)
    n = 32
    barrier = threading.Barrier(n)

    def attempt(_: int) -> Any:
        barrier.wait()
        return store.claim(key, "fp", lease=LEASE, ttl=TTL)

    try:
        with ThreadPoolExecutor(n) as pool:
            outcomes = list(pool.map(attempt, range(n)))
        winners = [c for c in outcomes if c.acquired]
        assert len(winners) == 1
        fence = winners[0].record.fence
        assert all(c.record.fence == fence for c in outcomes)
        assert all(c.record.status is Status.IN_PROGRESS for c in outcomes)
    finally:
        store.close()


def test_n_threads_take_over_a_lapsed_lease_exactly_one_wins(admin: Any, key: str) -> None:
    """The takeover path of the claim under concurrency: after the lease lapsed, exactly one
    of N racing claimers gets fence + 1."""
    clock = ManualClock()
    store = MySQLStore(URL, table=TABLE, clock=clock, pool_size=16)
    n = 16
    try:
        first = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        clock.advance(LEASE + 1)
        barrier = threading.Barrier(n)

        def attempt(_: int) -> Any:
            barrier.wait()
            return store.claim(key, "fp", lease=LEASE, ttl=TTL)

        with ThreadPoolExecutor(n) as pool:
            outcomes = list(pool.map(attempt, range(n)))
        winners = [c for c in outcomes if c.acquired]
        assert len(winners) == 1
        assert winners[0].record.fence == first.record.fence + 1
        assert not store.complete(key, first.record.fence, b"zombie", ttl=TTL)
    finally:
        store.close()


def test_idempotent_function_runs_once_across_threads(admin: Any) -> None:
    from idempotence import Idempotency

    runs: list[int] = []
    lock = threading.Lock()
    idem = Idempotency(f"{URL}?table={TABLE}")

    @idem(key="order_id")
    def charge(order: dict[str, str]) -> str:
        with lock:
            runs.append(1)
        time.sleep(0.2)  # the others arrive while it runs
        return f"charged {order['order_id']}"

    order_id = uuid.uuid4().hex
    order = {"order_id": order_id}
    barrier = threading.Barrier(12)

    def call(_: int) -> Any:
        barrier.wait()
        try:
            return charge(order)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(call, range(12)))
    assert len(runs) == 1
    assert f"charged {order_id}" in outcomes
    assert charge(order) == f"charged {order_id}"  # a later duplicate replays the result


async def test_async_claims_concurrently_exactly_one(admin: Any, key: str) -> None:
    store = _server_store()
    try:
        outcomes = await asyncio.gather(
            *(store.aclaim(key, "fp", lease=LEASE, ttl=TTL) for _ in range(16))
        )
        assert sum(c.acquired for c in outcomes) == 1
        await store.aclose()
    finally:
        store.close()


def test_url_options_and_errors() -> None:
    parsed = MySQLStore.parse_url(
        "mariadb://u:p%40ss@db.example:3307/app?table=app.recs&pool_size=3"
    )
    assert parsed["table"] == "app.recs"
    assert (parsed["pool_size"], parsed["pool_timeout"]) == (3, 5.0)
    timed = MySQLStore("mysql://u@h/db?pool_size=2&pool_timeout=0.5")
    assert (timed.pool_size, timed.pool_timeout) == (2, 0.5)
    for bad in ("pool_size=0", "pool_size=1.5", "pool_timeout=0", "pool_timeout=soon"):
        with pytest.raises(ValueError, match="must be a positive"):
            MySQLStore.parse_url(f"mysql://u@h/db?{bad}")
    with pytest.raises(ValueError, match="pool_size must be a whole number"):
        MySQLStore("mysql://u@h/db", pool_size=0)
    with pytest.raises(ValueError, match="pool_timeout must be a number"):
        MySQLStore("mysql://u@h/db", pool_timeout=-1)
    assert parsed["connect"]["password"] == "p@ss"
    assert (parsed["connect"]["host"], parsed["connect"]["port"]) == ("db.example", 3307)
    with pytest.raises(ValueError, match="unknown option"):
        MySQLStore.parse_url("mysql://u@h/db?tabel=x")
    with pytest.raises(ValueError, match="invalid table name"):
        MySQLStore.parse_url("mysql://u@h/db?table=x;drop")
    with pytest.raises(ValueError, match="no database"):
        MySQLStore.parse_url("mysql://u@h/")
    assert isinstance(store_from_url(f"{URL}?table={TABLE}"), MySQLStore)
    assert isinstance(store_from_url("mariadb://root@127.0.0.1/test"), MySQLStore)


def test_unreachable_server_fails_fast_with_store_error() -> None:
    store = MySQLStore("mysql://root@127.0.0.1:1/test", connect_timeout=1)
    with pytest.raises(StoreError, match="cannot connect"):
        store.claim("k", "fp", lease=LEASE, ttl=TTL)


def test_missing_table_is_created_on_first_use(admin: Any, key: str) -> None:
    table = f"idem_auto_{uuid.uuid4().hex[:10]}"
    store = MySQLStore(URL, table=table)
    try:
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
    finally:
        store.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")


def _hold_row_lock(key: str) -> Any:
    """A separate connection holding an exclusive lock on ``key``'s row (rolled back by
    the caller)."""
    conn = mysql_admin_or_unavailable(URL)
    with conn.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute(f"SELECT fence FROM `{TABLE}` WHERE `key` = %s FOR UPDATE", (key.encode(),))
    return conn


def test_operation_timeout_bounds_a_blocked_operation_sync_and_async(admin: Any, key: str) -> None:
    store = MySQLStore(URL, table=TABLE, operation_timeout=0.5)
    claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
    holder = _hold_row_lock(key)
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="operation_timeout"):
            store.complete(key, claim.record.fence, b"r", ttl=TTL)
        assert time.monotonic() - started < 3

        async def acomplete() -> None:
            try:
                await store.acomplete(key, claim.record.fence, b"r", ttl=TTL)
            finally:
                await store.aclose()

        started = time.monotonic()
        with pytest.raises(StoreError, match="operation_timeout"):
            asyncio.run(acomplete())
        assert time.monotonic() - started < 3
    finally:
        holder.rollback()
        holder.close()
    # A statement already sent may still complete on the server once the lock is free
    # (the docstring says so); either way the next call reconnects and the record ends
    # completed once, with its result.
    store.complete(key, claim.record.fence, b"r", ttl=TTL)
    record = store.get(key)
    assert record is not None
    assert (record.status, record.result) == (Status.COMPLETED, b"r")
    store.close()


def test_sql_connection_is_not_cut_by_operation_timeout(admin: Any) -> None:
    store = MySQLStore(URL, table=TABLE, operation_timeout=0.3)
    try:
        with store.sql_connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT SLEEP(0.6)")
            assert cur.fetchone() == (0,)
        # the store's own operations are bounded again on the same (pooled) connection
        with store.sql_connection() as conn:
            assert conn._read_timeout is None
        assert store._pool._idle[-1]._read_timeout == 0.3
    finally:
        store.close()


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from idempotence import MissingDependencyError

    store = MySQLStore(URL, table=TABLE)  # building it imports no driver
    monkeypatch.setitem(sys.modules, "pymysql", None)
    monkeypatch.setitem(sys.modules, "aiomysql", None)
    with pytest.raises(MissingDependencyError, match=r"idempotence\[mysql\]"):
        store.get("k")
    with pytest.raises(MissingDependencyError, match=r"idempotence\[mysql\]"):
        asyncio.run(store.aget("k"))


# -- the bounded pools ---------------------------------------------------------------------
class _OpenConnections:
    """The connections a store has open (PyMySQL for ``sync``, aiomysql otherwise): how
    many at most at once, and the server's ids of all it opened."""

    def __init__(self, store: MySQLStore, *, sync: bool) -> None:
        self.now = self.peak = 0
        self.ids: set[int] = set()
        self._lock = threading.Lock()
        name = "_new_connection" if sync else "_anew_connection"
        original = getattr(store, name)

        def opened(conn: Any) -> Any:
            close = conn.close
            with self._lock:
                self.now += 1
                self.peak = max(self.peak, self.now)
                self.ids.add(conn.thread_id())

            def closed() -> None:
                with self._lock:
                    self.now -= 1
                close()

            conn.close = closed
            return conn

        async def anew() -> Any:
            return opened(await original())

        setattr(store, name, (lambda: opened(original())) if sync else anew)

    def on_server(self, admin: Any, *, settled: int | None = None) -> int:
        """How many of the opened connections the server has; with ``settled``, polled
        for up to 2 s until it is that many (the server ends a session a moment after the
        client quits)."""
        marks = ", ".join(str(i) for i in self.ids)
        deadline = time.monotonic() + 2
        while True:
            with admin.cursor() as cur:
                cur.execute(
                    f"SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID IN ({marks})"
                )
                count = int(cur.fetchone()[0])
            if settled is None or count == settled or time.monotonic() > deadline:
                return count
            time.sleep(0.01)


def test_pool_size_bounds_the_connections_of_threads_and_of_tasks(admin: Any) -> None:
    """pool_size=2: 10 threads, then 10 asyncio tasks, 4 idempotent calls each (claim and
    completion: 80 operations each way); every call succeeds on at most 2 connections."""
    from idempotence import Idempotency

    store = MySQLStore(URL, table=TABLE, pool_size=2)
    sync, aio = _OpenConnections(store, sync=True), _OpenConnections(store, sync=False)
    idem = Idempotency(store, namespace=f"pool-{uuid.uuid4().hex}")

    @idem(key="order_id")
    def charge(order: dict[str, str]) -> str:
        return f"charged {order['order_id']}"

    @idem(key="order_id")
    async def acharge(order: dict[str, str]) -> str:
        return f"charged {order['order_id']}"

    barrier = threading.Barrier(10)

    def caller(c: int) -> list[str]:
        barrier.wait()
        return [charge({"order_id": f"t{c}-{i}"}) for i in range(4)]

    with ThreadPoolExecutor(10) as pool:
        results = [r for rs in pool.map(caller, range(10)) for r in rs]
    assert sorted(results) == sorted(f"charged t{c}-{i}" for c in range(10) for i in range(4))
    assert sync.peak == 2  # both used, none beyond
    assert len(sync.ids) == 2  # none replaced
    assert sync.on_server(admin) == 2 == store._pool.open

    async def tasks() -> list[str]:
        async def task(c: int) -> list[str]:
            return [await acharge({"order_id": f"a{c}-{i}"}) for i in range(4)]

        try:
            return [r for rs in await asyncio.gather(*(task(c) for c in range(10))) for r in rs]
        finally:
            assert aio.on_server(admin) == 2
            await store.aclose()

    results = asyncio.run(tasks())
    assert sorted(results) == sorted(f"charged a{c}-{i}" for c in range(10) for i in range(4))
    assert aio.peak == 2
    assert len(aio.ids) == 2
    assert (sync.now, aio.now) == (0, 0)  # aclose closed the loop's and the sync ones
    assert sync.on_server(admin, settled=0) == 0
    assert aio.on_server(admin, settled=0) == 0


def test_a_full_pool_fails_after_pool_timeout_with_store_error(admin: Any, key: str) -> None:
    """pool_size=1 and its connection held: a call waits pool_timeout, then StoreError
    saying what to change (not the key); once the connection is returned, calls go on."""
    store = MySQLStore(URL, table=TABLE, pool_size=1, pool_timeout=0.2)
    expected = r"no free connection within pool_timeout=0.2s: all pool_size=1 .* Raise pool_size"
    try:
        with store.sql_connection():
            started = time.monotonic()
            with pytest.raises(StoreError, match=expected) as caught:
                store.claim(key, "fp", lease=LEASE, ttl=TTL)
            assert 0.2 <= time.monotonic() - started < 2
            assert key not in str(caught.value)
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired

        async def main() -> None:
            try:
                source = store.asql_connection()
                assert source is not None
                async with source:
                    started = time.monotonic()
                    with pytest.raises(StoreError, match=expected) as caught:
                        await store.aget(key)
                    assert 0.2 <= time.monotonic() - started < 2
                    assert key not in str(caught.value)
                assert await store.aget(key) is not None
            finally:
                await store.aclose()

        asyncio.run(main())
    finally:
        store.close()


def test_a_waiting_caller_gets_the_returned_connection_in_arrival_order(admin: Any) -> None:
    """pool_size=1: callers queued behind a held connection are served first come first
    served, each on the one connection, as soon as it is returned."""
    store = MySQLStore(URL, table=TABLE, pool_size=1, pool_timeout=5)
    opened = _OpenConnections(store, sync=True)
    served: list[int] = []

    def wait_for_it(n: int) -> None:
        with store.sql_connection():
            served.append(n)

    try:
        with store.sql_connection():
            threads = []
            for n in range(3):
                threads.append(threading.Thread(target=wait_for_it, args=(n,)))
                threads[-1].start()
                deadline = time.monotonic() + 5
                while len(store._pool._waiters) <= n:  # queued before the next one starts
                    assert time.monotonic() < deadline, "the caller did not queue"
                    time.sleep(0.001)
        for t in threads:
            t.join(5)
        assert served == [0, 1, 2]
        assert opened.peak == 1
        assert len(opened.ids) == 1
    finally:
        store.close()


def test_a_connection_that_failed_is_discarded_and_close_closes_all(admin: Any) -> None:
    store = MySQLStore(URL, table=TABLE, pool_size=2)
    opened = _OpenConnections(store, sync=True)
    used: list[int] = []

    def fail() -> None:
        with store.sql_connection() as conn:
            used.append(conn.thread_id())
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        fail()
    assert (opened.now, store._pool.open) == (0, 0)  # closed, its place free
    with store.sql_connection() as held:
        assert held.thread_id() not in used
        with store.sql_connection():
            pass  # returned: idle
        assert (opened.now, store._pool.open) == (2, 2)
        store.close()  # the idle one now, the held one when it is returned
        assert (opened.now, store._pool.open) == (1, 1)
        assert held.open
    assert (opened.now, store._pool.open) == (0, 0)
    assert opened.on_server(admin, settled=0) == 0
    store.get("k")  # usable again: a new connection
    assert opened.now == 1
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this platform")
def test_a_forked_child_opens_its_own_connections(admin: Any) -> None:
    """The child neither uses nor closes the parent's pooled connection."""
    store = MySQLStore(URL, table=TABLE)
    with store.sql_connection() as conn:
        parent = conn.thread_id()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            with store.sql_connection() as conn:
                os.write(write, str(conn.thread_id()).encode())
            store.close()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    child = int(os.read(read, 64) or b"0")
    os.close(read)
    assert os.waitpid(pid, 0)[1] == 0
    assert child not in (0, parent)
    with store.sql_connection() as conn:
        assert conn.thread_id() == parent
        conn.ping(reconnect=False)  # still open: the child did not close it
    store.close()


def test_a_connection_the_server_dropped_while_idle_is_retired_not_used(
    admin: Any, key: str
) -> None:
    """The server closes a connection left idle (``wait_timeout``; here ``KILL``, as a
    restart or a NAT timeout would): used as is, the next call fails; once it has been idle
    longer than the pool's max_idle (600 s by default, as PostgresStore's pool), the call
    closes it and runs on a new connection."""
    store = MySQLStore(URL, table=TABLE)
    try:

        def drop_the_idle_connection() -> int:
            (conn,) = store._pool._idle
            thread_id = int(conn.thread_id())
            with admin.cursor() as cursor:
                cursor.execute(f"KILL {thread_id}")
            return thread_id

        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        drop_the_idle_connection()
        with pytest.raises(StoreError):  # younger than max_idle: used, and it is gone
            store.get(key)
        assert store.get(key) is not None  # the broken one was discarded
        dropped = drop_the_idle_connection()
        store._pool.max_idle = 0.05
        time.sleep(0.1)
        record = store.get(key)  # the idle connection is retired, a new one opened
        assert record is not None
        assert record.status is Status.IN_PROGRESS
        (fresh,) = store._pool._idle
        assert int(fresh.thread_id()) != dropped
        assert store._pool.open == 1
    finally:
        store.close()
