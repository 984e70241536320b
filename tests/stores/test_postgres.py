"""PostgresStore against a real server (``IDEMPOTENCE_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``). One table per test session, dropped at the end.

Round trips are counted at the protocol level with libpq's trace: every frontend ``Sync``
(extended protocol) or ``Query`` (simple protocol) message is one round trip, every
``Execute``/``Query`` one statement.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from idempotence import StoreError
from idempotence._record import Claim, Status
from idempotence.stores import store_from_url
from idempotence.testing import LEASE, TTL, ManualClock, StoreContract, StoreDriver
from tests.conftest import POSTGRES_URL, backend_unavailable, postgres_admin_or_unavailable

try:
    import psycopg
    from psycopg import pq
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

    from idempotence.stores._postgres import PostgresStore
except ImportError as exc:  # pragma: no cover - depends on the environment
    backend_unavailable(f"psycopg is not installed: {exc}")

URL = POSTGRES_URL
TABLE = f"idem_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def admin() -> Iterator[psycopg.Connection[Any]]:
    """A plain connection for setup and inspection; drops the session table at the end."""
    conn = postgres_admin_or_unavailable(URL)
    PostgresStore(URL, table=TABLE).create_table()
    yield conn
    conn.execute(f'DROP TABLE IF EXISTS "{TABLE}"')
    conn.close()


@pytest.fixture
def key() -> str:
    return f"k#{uuid.uuid4().hex}"


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def store(self, clock: ManualClock, admin: Any) -> Iterator[PostgresStore]:
        store = PostgresStore(URL, table=TABLE, clock=clock, pool_size=16)
        yield store
        store.close()

    @pytest.fixture
    def store_url(self, admin: Any) -> str:
        return f"{URL}?table={TABLE}"


# -- round trips ----------------------------------------------------------------------
class Trace:
    """Collects libpq's protocol trace of every connection it is attached to."""

    def __init__(self) -> None:
        self.traced: list[tuple[pq.abc.PGconn, Any]] = []
        self.files: list[Any] = []  # kept open: libpq's FILE* streams point at them

    def _start(self, pgconn: pq.abc.PGconn) -> Any:
        f = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives as long as the trace
        self.files.append(f)
        pgconn.trace(f.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        return f

    def attach(self, pgconn: pq.abc.PGconn) -> None:
        self.traced.append((pgconn, self._start(pgconn)))

    def pool(self) -> ConnectionPool[Any]:
        """An open one-connection autocommit pool whose connection is traced."""
        return ConnectionPool(
            URL,
            min_size=1,
            max_size=1,
            kwargs={"autocommit": True},
            configure=lambda conn: self.attach(conn.pgconn),
            open=True,
        )

    def count(self) -> tuple[int, int]:
        """(round trips, statements) sent since the last call."""
        messages: list[str] = []
        traced, self.traced = self.traced, []
        for pgconn, f in traced:
            pgconn.untrace()  # flushes
            f.seek(0)
            messages += [ln.split("\t")[2] for ln in f.read().splitlines() if ln[:2] == "F\t"]
            self.attach(pgconn)
        trips = sum(m in ("Sync", "Query") for m in messages)
        return trips, sum(m in ("Execute", "Query") for m in messages)

    def close(self) -> None:
        for pgconn, _ in self.traced:
            pgconn.untrace()
        for f in self.files:
            f.close()


def test_one_round_trip_per_operation_sync(admin: Any, key: str) -> None:
    trace = Trace()
    pool = trace.pool()
    store = PostgresStore(pool=pool, table=TABLE)
    try:
        store.get(key)  # warm up: the pool's connection exists, trace attached
        trace.count()
        claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        assert trace.count() == (1, 1)
        assert store.renew(key, claim.record.fence, lease=LEASE)
        assert trace.count() == (1, 1)
        assert not store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired  # in progress
        assert trace.count() == (1, 1)
        assert store.complete(key, claim.record.fence, b"r", ttl=TTL)
        assert trace.count() == (1, 1)
        replay = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert (replay.acquired, replay.record.result) == (False, b"r")
        assert trace.count() == (1, 1)
        assert store.get(key) == replay.record
        assert trace.count() == (1, 1)
        other = store.claim(key + "2", "fp", lease=LEASE, ttl=TTL)
        trace.count()
        assert store.release(key + "2", other.record.fence)
        assert trace.count() == (1, 1)
        assert store.delete(key)
        assert trace.count() == (1, 1)
    finally:
        pool.close()
        trace.close()


async def test_one_round_trip_per_operation_async(admin: Any, key: str) -> None:
    trace = Trace()

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        trace.attach(conn.pgconn)

    async with AsyncConnectionPool(
        URL, min_size=1, max_size=1, kwargs={"autocommit": True}, configure=configure
    ) as pool:
        store = PostgresStore(async_pool=pool, table=TABLE)
        await store.aget(key)
        trace.count()
        claim = await store.aclaim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        assert trace.count() == (1, 1)
        assert await store.arenew(key, claim.record.fence, lease=LEASE)
        assert trace.count() == (1, 1)
        assert await store.acomplete(key, claim.record.fence, b"r", ttl=TTL)
        assert trace.count() == (1, 1)
        replay = await store.aclaim(key, "fp", lease=LEASE, ttl=TTL)
        assert (replay.acquired, replay.record.result) == (False, b"r")
        assert trace.count() == (1, 1)
        assert await store.aget(key) == replay.record
        assert trace.count() == (1, 1)
        other = await store.aclaim(key + "2", "fp", lease=LEASE, ttl=TTL)
        trace.count()
        assert await store.arelease(key + "2", other.record.fence)
        assert trace.count() == (1, 1)
    trace.close()


def test_auto_prepare_costs_one_round_trip_once_per_connection(admin: Any) -> None:
    trace = Trace()
    with trace.pool() as pool:
        store = PostgresStore(pool=pool, table=TABLE)
        store.get("warm-up")
        trace.count()
        for _ in range(20):
            store.claim(f"k#{uuid.uuid4().hex}", "fp", lease=LEASE, ttl=TTL)
        # psycopg prepares a statement on its 6th use: one extra Parse round trip, then
        # every execution is Bind/Execute of the prepared plan.
        assert trace.count() == (21, 20)
    trace.close()


# -- claim races, deterministically ---------------------------------------------------
def _hold_claim_open(store: PostgresStore, key: str) -> tuple[psycopg.Connection[Any], Claim]:
    """Run a claim in an open transaction (as if its commit were slow)."""
    conn = psycopg.connect(URL)
    op = store._claim_op(key, "fp", LEASE, TTL)
    row = conn.execute(op.query, op.params).fetchall()
    claim = op.parse(row, 1)
    assert isinstance(claim, Claim)
    return conn, claim


def _claim_while_held(store: PostgresStore, conn: psycopg.Connection[Any], key: str) -> Claim:
    box: list[Claim] = []
    thread = threading.Thread(target=lambda: box.append(store.claim(key, "fp", lease=1, ttl=1)))
    thread.start()
    time.sleep(0.3)  # the claim is now blocked on the held row
    assert box == []
    conn.commit()
    thread.join(10)
    conn.close()
    return box[0]


def test_loser_of_a_new_key_sees_the_winner(admin: Any, key: str) -> None:
    """The loser's snapshot predates the winner's insert: it retries once and gets the
    winner's record, never an empty or made-up one."""
    store = PostgresStore(URL, table=TABLE)
    try:
        conn, winner = _hold_claim_open(store, key)
        assert winner.acquired
        loser = _claim_while_held(store, conn, key)
        assert not loser.acquired
        assert loser.record == winner.record
    finally:
        store.close()


def test_loser_of_a_takeover_sees_the_new_fence(admin: Any, key: str) -> None:
    """Both see the released row in their snapshot; the loser gets the latest version
    (FOR SHARE follows the update chain), with the winner's fence, not the stale one."""
    store = PostgresStore(URL, table=TABLE)
    try:
        first = store.claim(key, "fp", lease=LEASE, ttl=TTL).record
        assert store.release(key, first.fence)
        conn, winner = _hold_claim_open(store, key)
        assert (winner.acquired, winner.record.fence) == (True, first.fence + 1)
        loser = _claim_while_held(store, conn, key)
        assert not loser.acquired
        assert loser.record == winner.record
    finally:
        store.close()


@pytest.mark.parametrize("state", ["released", "expired", "lapsed"])
def test_64_threads_race_for_a_reclaimable_key(admin: Any, key: str, state: str) -> None:
    clock = ManualClock()
    store = PostgresStore(URL, table=TABLE, clock=clock, pool_size=16)
    try:
        first = store.claim(key, "fp", lease=LEASE, ttl=TTL).record
        if state == "released":
            assert store.release(key, first.fence)
        elif state == "expired":
            assert store.complete(key, first.fence, b"old", ttl=TTL)
            clock.advance(TTL + 1)
        else:
            clock.advance(LEASE + 1)
        barrier = threading.Barrier(64)

        def claim(_: int) -> Claim:
            barrier.wait()
            return store.claim(key, "fp", lease=LEASE, ttl=TTL)

        with ThreadPoolExecutor(64) as pool:
            outcomes = list(pool.map(claim, range(64)))
        winners = [o.record for o in outcomes if o.acquired]
        assert len(winners) == 1
        assert winners[0].fence == first.fence + 1
        assert all(o.record == winners[0] for o in outcomes)
    finally:
        store.close()


async def test_64_tasks_race_for_a_new_key_and_losers_see_the_winner(admin: Any, key: str) -> None:
    store = PostgresStore(URL, table=TABLE, pool_size=16)
    try:
        outcomes = await asyncio.gather(
            *(store.aclaim(key, "fp", lease=LEASE, ttl=TTL) for _ in range(64))
        )
        winners = [o.record for o in outcomes if o.acquired]
        assert len(winners) == 1
        assert all(o.record == winners[0] for o in outcomes)
    finally:
        await store.aclose()


# -- failure and recovery -------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_down_fails_fast_sync() -> None:
    store = PostgresStore(
        f"postgresql://postgres@127.0.0.1:{_closed_port()}/test", connect_timeout=1,
        pool_timeout=2,
    )  # fmt: skip
    start = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL: connection refused"):
        store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert time.monotonic() - start < 4
    store.close()


def test_server_down_fails_fast_async() -> None:
    store = PostgresStore(
        f"postgresql://postgres@127.0.0.1:{_closed_port()}/test", connect_timeout=1,
        pool_timeout=2,
    )  # fmt: skip

    async def main() -> None:
        with pytest.raises(StoreError, match="cannot connect to PostgreSQL: connection refused"):
            await store.aclaim("k", "fp", lease=LEASE, ttl=TTL)
        await store.aclose()

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 4


def test_a_full_pool_fails_after_pool_timeout_with_store_error(admin: Any, key: str) -> None:
    """pool_size=1 and its connection held: a call waits pool_timeout, then the same
    StoreError as MySQLStore's (what to change, not the key); then calls go on."""
    store = PostgresStore(URL, table=TABLE, pool_size=1, pool_timeout=0.3)
    expected = r"no free connection within pool_timeout=0.3s: all pool_size=1 .* Raise pool_size"
    try:
        with store.sql_connection():
            started = time.monotonic()
            with pytest.raises(StoreError, match=expected) as caught:
                store.claim(key, "fp", lease=LEASE, ttl=TTL)
            assert 0.3 <= time.monotonic() - started < 3
            assert key not in str(caught.value)
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired

        async def main() -> None:
            try:
                source = store.asql_connection()
                assert source is not None
                async with source:
                    with pytest.raises(StoreError, match=expected):
                        await store.aget(key)
                assert await store.aget(key) is not None
            finally:
                await store.aclose()

        asyncio.run(main())
    finally:
        store.close()


def _terminate(admin: psycopg.Connection[Any], app: str) -> int:
    killed = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    ).fetchone()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # wait until the backends are really gone
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
        if row is not None and row[0] == 0:
            break
        time.sleep(0.05)
    return int(killed[0]) if killed else 0


def test_recovers_after_backends_are_terminated_sync(admin: Any) -> None:
    app = f"idem-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(URL, table=TABLE, connect_kwargs={"application_name": app})
    try:
        barrier = threading.Barrier(4)

        def busy(_: int) -> None:  # leave several idle connections in the pool
            barrier.wait()
            store.claim(f"k#{uuid.uuid4().hex}", "fp", lease=LEASE, ttl=TTL)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(busy, range(4)))
        assert _terminate(admin, app) >= 2
        # The first call meets a dead connection and fails closed; the pool then drops
        # its other dead idle connections, so every later call works.
        with pytest.raises(StoreError):
            store.get("k")
        for _ in range(6):
            assert store.claim(f"k#{uuid.uuid4().hex}", "fp", lease=LEASE, ttl=TTL).acquired
    finally:
        store.close()


def test_recovers_after_backends_are_terminated_async(admin: Any) -> None:
    app = f"idem-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(URL, table=TABLE, connect_kwargs={"application_name": app})

    async def main() -> None:
        await asyncio.gather(
            *(store.aclaim(f"k#{uuid.uuid4().hex}", "fp", lease=LEASE, ttl=TTL) for _ in range(4))
        )
        assert await asyncio.to_thread(_terminate, admin, app) >= 2
        with pytest.raises(StoreError):
            await store.aget("k")
        for _ in range(6):
            claim = await store.aclaim(f"k#{uuid.uuid4().hex}", "fp", lease=LEASE, ttl=TTL)
            assert claim.acquired

    asyncio.run(main())


# -- event loops ----------------------------------------------------------------------
def _connections(admin: psycopg.Connection[Any], app: str) -> int:
    """Backends of ``app``, once disconnected clients' backends have had time to exit."""
    deadline = time.monotonic() + 3
    while True:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        ).fetchone()
        count = int(row[0]) if row else -1
        if count == 0 or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_async_works_across_asyncio_run_calls(admin: Any, key: str) -> None:
    """Lambda style: one ``asyncio.run`` per invocation, the same store object. Each run
    gets its own pool, closed when its loop ends (no connection of a dead loop leaks)."""
    app = f"idem-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(URL, table=TABLE, connect_kwargs={"application_name": app})
    fence = asyncio.run(store.aclaim(key, "fp", lease=LEASE, ttl=TTL)).record.fence
    assert _connections(admin, app) == 0

    async def second() -> bool:
        return await store.acomplete(key, fence, b"done", ttl=TTL)

    assert asyncio.run(second())
    record = asyncio.run(store.aget(key))
    assert record is not None
    assert (record.status, record.result) == (Status.COMPLETED, b"done")
    assert _connections(admin, app) == 0


def test_hand_run_loops_with_aclose(admin: Any, key: str) -> None:
    app = f"idem-{uuid.uuid4().hex[:8]}"
    store = PostgresStore(URL, table=TABLE, connect_kwargs={"application_name": app})
    for acquired in (True, False):
        loop = asyncio.new_event_loop()
        claim = loop.run_until_complete(store.aclaim(key, "fp", lease=LEASE, ttl=TTL))
        assert claim.acquired is acquired
        loop.run_until_complete(store.aclose())
        loop.close()
        assert _connections(admin, app) == 0


# -- configuration --------------------------------------------------------------------
def test_url_forms() -> None:
    store = store_from_url(
        "postgresql://u:p@db.example:6543/app?table=my_records&sslmode=require&connect_timeout=2"
    )
    assert isinstance(store, PostgresStore)
    assert store.table == "my_records"
    assert store.connect_timeout == 2
    assert store.url == "postgresql://u:p@db.example:6543/app?sslmode=require&connect_timeout=2"
    assert "p@" not in repr(store)
    other = store_from_url("postgres://db/app?pool_size=3&pool_timeout=1.5&auto_create=false")
    assert isinstance(other, PostgresStore)
    assert (other.url, other.table, other.pool_size) == ("postgres://db/app", "idempotency", 3)
    assert (other.pool_timeout, other.auto_create) == (1.5, False)
    assert other.operation_timeout == 5.0  # the default
    timed = store_from_url("postgresql://db/app?operation_timeout=0.5&keepalives_idle=7")
    assert isinstance(timed, PostgresStore)
    assert (timed.url, timed.operation_timeout) == ("postgresql://db/app?keepalives_idle=7", 0.5)
    untimed = store_from_url("postgresql://db/app?operation_timeout=none")
    assert isinstance(untimed, PostgresStore)
    assert untimed.operation_timeout is None


def test_keepalive_defaults_give_way_to_the_url_and_connect_kwargs() -> None:
    kwargs = PostgresStore("postgresql://db/app")._pool_options()["kwargs"]
    assert kwargs["keepalives"] == 1
    assert (kwargs["keepalives_idle"], kwargs["keepalives_interval"]) == (30, 10)
    assert kwargs["tcp_user_timeout"] == 30_000  # libpq >= 12
    url = "postgresql://db/app?keepalives_idle=7"
    mine = PostgresStore(url, connect_kwargs={"tcp_user_timeout": 1000})._pool_options()
    assert "keepalives_idle" not in mine["kwargs"]  # libpq reads the URL's 7
    assert mine["kwargs"]["tcp_user_timeout"] == 1000


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_operation_timeout_cuts_a_blocked_statement(admin: Any, key: str, mode: str) -> None:
    """A statement that gets no reply (here: blocked on a table lock) fails with StoreError
    after ``operation_timeout``; the cut connection is discarded and the store recovers."""
    store = PostgresStore(URL, table=TABLE, operation_timeout=0.3)
    driver = StoreDriver(store, mode)
    try:
        assert driver.get(key) is None  # a pooled, open connection
        with admin.transaction():
            admin.execute(f'LOCK TABLE "{TABLE}" IN ACCESS EXCLUSIVE MODE')
            began = time.monotonic()
            with pytest.raises(StoreError, match=r"operation_timeout=0\.3s"):
                driver.claim(key, "fp", lease=LEASE, ttl=TTL)
            took = time.monotonic() - began
        assert 0.3 <= took < 1.5, took
        # The server ran the claim once the lock was gone (its reply had nowhere to go):
        # the key is held, like any claim whose reply was lost.
        deadline = time.monotonic() + 5
        while driver.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not driver.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
    finally:
        store.delete(key)
        driver.close()
        store.close()


def test_operation_timeout_none_disables_the_watch(admin: Any, key: str) -> None:
    from idempotence.stores._postgres import _watchdog

    store = PostgresStore(URL, table=TABLE, operation_timeout=None)
    try:
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        assert _watchdog.pending() == 0  # nothing registered, nothing left behind
    finally:
        store.delete(key)
        store.close()


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        PostgresStore(URL, table='x"; DROP TABLE y; --')
    with pytest.raises(ValueError, match="give url"):
        PostgresStore()
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="operation_timeout"):
            PostgresStore(URL, operation_timeout=bad)
    sync_conn = psycopg.connect(URL, connect_timeout=3)  # not autocommit
    try:
        with pytest.raises(ValueError, match="autocommit"):
            PostgresStore(connection=sync_conn)
    finally:
        sync_conn.close()


def test_migration_sql_needs_no_connection() -> None:
    ddl = PostgresStore("postgresql://nowhere.invalid/db", table="app.idem").migration_sql()
    assert ddl.startswith('CREATE TABLE IF NOT EXISTS "app"."idem" (')
    assert "fence            bigint NOT NULL" in ddl


def test_table_is_created_on_first_use(admin: psycopg.Connection[Any], key: str) -> None:
    table = f"idem_auto_{uuid.uuid4().hex[:8]}"
    store = PostgresStore(URL, table=table)
    try:
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        assert asyncio.run(store.aget(key)) is not None
    finally:
        store.close()
        admin.execute(f'DROP TABLE IF EXISTS "{table}"')
    manual = PostgresStore(URL, table=table, auto_create=False)
    with pytest.raises(StoreError, match="UndefinedTable"):
        manual.get(key)
    manual.close()


def test_first_use_by_many_stores_at_once_creates_the_table_once(
    admin: psycopg.Connection[Any],
) -> None:
    """Concurrent CREATE TABLE IF NOT EXISTS collides in PostgreSQL's catalog (unique
    violation, duplicate type): every store must still claim, none may fail."""
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(5):
        table = f"idem_race_{uuid.uuid4().hex[:8]}"
        stores = [PostgresStore(URL, table=table) for _ in range(12)]
        barrier = threading.Barrier(len(stores))

        def first_claim(store: PostgresStore, barrier: threading.Barrier = barrier) -> bool:
            barrier.wait()
            store.create_table()  # the auto-create path, raced head-on
            return store.claim(f"k-{id(store)}", "fp", lease=LEASE, ttl=TTL).acquired

        try:
            with ThreadPoolExecutor(len(stores)) as pool:
                assert all(pool.map(first_claim, stores))
        finally:
            for store in stores:
                store.close()
            admin.execute(f'DROP TABLE IF EXISTS "{table}"')


def test_injected_connections(admin: Any, key: str) -> None:
    with psycopg.connect(URL, autocommit=True) as conn:
        store = PostgresStore(connection=conn, table=TABLE)
        assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired
        # Only a sync source: the async twins run it in a thread.
        assert asyncio.run(store.aget(key)) is not None
        store.close()
        assert not conn.closed  # injected: not ours to close

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(URL, autocommit=True) as aconn:
            astore = PostgresStore(aconnection=aconn, table=TABLE)
            assert (await astore.aget(key)) is not None
            with pytest.raises(StoreError, match="only an async connection source"):
                astore.get(key)

    asyncio.run(main())


def test_purge_deletes_only_expired_rows_with_lapsed_leases(admin: Any) -> None:
    clock = ManualClock(start=1_000.0)  # long before any other test's records
    store = PostgresStore(URL, table=TABLE, clock=clock)
    try:
        old = f"purge#{uuid.uuid4().hex}"
        fence = store.claim(old, "fp", lease=10, ttl=100).record.fence
        assert store.complete(old, fence, b"r", ttl=100)
        released = f"purge#{uuid.uuid4().hex}"
        rfence = store.claim(released, "fp", lease=500, ttl=1000).record.fence
        clock.advance(50)
        new = f"purge#{uuid.uuid4().hex}"
        store.claim(new, "fp", lease=10, ttl=100)
        assert store.release(released, rfence)  # expired, but its lease runs to 1500
        clock.advance(60)
        assert store.purge() == 1
        assert store.get(new) is not None
        assert not store.delete(old)
        assert store.delete(released)
        assert asyncio.run(store.apurge()) == 0
        assert store.delete(new)
    finally:
        store.close()


def test_purge_never_revives_a_stale_fence(admin: Any, key: str) -> None:
    """The fence reset the model's -DPURGE variant finds: a purged row's key restarts from
    the clock (milliseconds), never from 1, so a paused zombie's fence stays stale."""
    clock = ManualClock(start=2_000.0)  # long before any other test's records
    store = PostgresStore(URL, table=TABLE, clock=clock)
    try:
        zombie = store.claim(key, "fp", lease=60, ttl=3600).record.fence  # then pauses
        clock.advance(61)
        successor = store.claim(key, "fp", lease=60, ttl=3600)
        assert successor.acquired
        assert store.release(key, successor.record.fence)  # its body raised
        clock.advance(61)
        assert store.purge() >= 1  # the released row: retention over, lease over
        newcomer = store.claim(key, "fp", lease=60, ttl=3600)
        assert newcomer.acquired
        assert newcomer.record.fence > successor.record.fence > zombie
        assert not store.complete(key, zombie, b"zombie", ttl=3600)
        assert store.complete(key, newcomer.record.fence, b"newcomer", ttl=3600)
    finally:
        store.delete(key)
        store.close()


def test_server_clock_gives_a_new_key_its_fence(admin: Any, key: str) -> None:
    store = PostgresStore(URL, table=TABLE)
    try:
        claim = store.claim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.record.fence == int(claim.now * 1000)  # server ms, as fresh_fence
        assert abs(claim.now - time.time()) < 60
        again = asyncio.run(store.aclaim(key + "a", "fp", lease=LEASE, ttl=TTL))
        assert again.record.fence == int(again.now * 1000)
    finally:
        store.delete(key)
        store.delete(key + "a")
        store.close()


def test_module_imports_without_psycopg() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
        "from idempotence.stores._postgres import PostgresStore\n"
        "from idempotence import MissingDependencyError\n"
        "store = PostgresStore('postgresql://x/y')\n"
        "try:\n    store.get('k')\nexcept Exception as e:\n"
        "    assert isinstance(e.__cause__, MissingDependencyError) or "
        "isinstance(e, MissingDependencyError), repr(e)\n    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
