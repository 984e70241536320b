"""MySQLStore against a real MariaDB/MySQL server (``IDEMPOTENCE_TEST_MYSQL_URL``, default
``mysql://root@127.0.0.1:3306/test``). One table per test session, dropped at the end."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
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
    assert parsed["pool_size"] == 3
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
        assert store._idle[-1]._read_timeout == 0.3
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
