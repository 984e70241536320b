"""Transactional idempotency: claim, business writes and result commit together or not at
all, on SQLite and PostgreSQL (and DynamoDB's TransactWriteItems); duplicates wait and
replay; a process killed before COMMIT leaves nothing behind."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from idempotence import AlreadyInProgressError, KeyReuseError, Status
from idempotence.effects import (
    TransactionalIdempotency,
    current_key,
    transactional,
)
from idempotence.stores import SQLiteStore, Store
from tests.conftest import MYSQL_URL
from tests.effects.conftest import PG_URL, RECORDS_TABLE, SESSION

N = 32
ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Receipt:
    order_id: str
    amount: int


# -- a database per dialect: records table, business table, connection factory ------------------
@dataclasses.dataclass
class DB:
    dialect: str
    target: str  # sqlite path or PostgreSQL URL
    business: str
    connect: Callable[[], Any]
    store: Store

    def q(self, sql: str) -> str:
        if self.dialect == "mysql":
            return sql.replace("?", "%s").replace('"', "`").replace("key", "`key`")
        return sql.replace("?", "%s") if self.dialect == "postgres" else sql

    def execute(self, conn: Any, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        """Run ``sql`` (``?`` placeholders, ``"quoted"`` names) on ``conn``; its rows."""
        if self.dialect == "mysql":  # PyMySQL: through a cursor
            with conn.cursor() as cur:
                cur.execute(self.q(sql), params)
                return list(cur.fetchall())
        cur = conn.execute(self.q(sql), params)
        return list(cur.fetchall()) if cur.description is not None else []

    def count(self, key: str) -> int:
        conn = self.connect()
        try:
            rows = self.execute(
                conn, f'SELECT count(*) FROM "{self.business}" WHERE key = ?', (key,)
            )
            return int(rows[0][0])
        finally:
            conn.close()

    def insert(self, conn: Any, key: str, amount: int) -> None:
        self.execute(
            conn, f'INSERT INTO "{self.business}" (key, amount) VALUES (?, ?)', (key, amount)
        )


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DB]:
    business = f"effects_business_{SESSION}"
    if request.param == "sqlite":
        path = str(tmp_path / "app.db")
        setup = sqlite3.connect(path, isolation_level=None)
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute(f'CREATE TABLE "{business}" (key TEXT, amount INTEGER)')
        setup.close()
        store: Store = SQLiteStore(path, table=RECORDS_TABLE)
        yield DB("sqlite", path, business, lambda: sqlite3.connect(path, timeout=30), store)
    elif request.param == "mysql":
        import pymysql

        from idempotence.stores._mysql import MySQLStore

        admin = request.getfixturevalue("mysql_admin")
        with admin.cursor() as cur:
            cur.execute(f"CREATE TABLE IF NOT EXISTS `{business}` (`key` text, amount int)")
        options = MySQLStore.parse_url(MYSQL_URL)["connect"]
        store = MySQLStore(MYSQL_URL, table=RECORDS_TABLE)
        yield DB("mysql", MYSQL_URL, business, lambda: pymysql.connect(**options), store)
    else:
        import psycopg

        from idempotence.stores._postgres import PostgresStore

        admin = request.getfixturevalue("pg_admin")
        admin.execute(f'CREATE TABLE IF NOT EXISTS "{business}" (key text, amount int)')
        store = PostgresStore(PG_URL, table=RECORDS_TABLE)
        yield DB("postgres", PG_URL, business, lambda: psycopg.connect(PG_URL), store)
    store.close()


@pytest.fixture
def key() -> str:
    return f"orders.create#{uuid.uuid4().hex}"


# -- the context manager ------------------------------------------------------------------------
def test_runs_once_then_replays(db: DB, key: str) -> None:
    txi = TransactionalIdempotency(table=RECORDS_TABLE)
    for attempt in range(3):
        conn = db.connect()
        try:
            with txi.transaction(conn, key, payload={"amount": 5}, result_type=Receipt) as tx:
                if tx.replayed:
                    assert tx.result == Receipt("o1", 5)
                else:
                    assert attempt == 0
                    db.insert(conn, key, 5)
                    tx.set_result(Receipt("o1", 5))
        finally:
            conn.close()
        assert tx.replayed is (attempt > 0)
    assert db.count(key) == 1
    record = db.store.get(key)  # the same records, seen through the store API
    assert record is not None
    assert record.status is Status.COMPLETED
    assert abs(record.fence - time.time() * 1000) < 60_000  # a new key: the clock in ms


def test_replays_go_through_on_replay_as_with_decorators(db: DB, key: str) -> None:
    seen: list[str] = []

    def on_replay(value: Any, record: Any) -> Any:
        seen.append(record.key)
        return {**value, "replayed": True}

    txi = TransactionalIdempotency(table=RECORDS_TABLE, on_replay=on_replay)
    results = []
    for _ in range(2):
        conn = db.connect()
        try:
            with txi.transaction(conn, key) as tx:
                if not tx.replayed:
                    tx.set_result({"order_id": "o1"})
        finally:
            conn.close()
        results.append(tx.result)
    assert results == [{"order_id": "o1"}, {"order_id": "o1", "replayed": True}]
    assert seen == [key]


def test_body_error_rolls_everything_back(db: DB, key: str) -> None:
    txi = TransactionalIdempotency(table=RECORDS_TABLE)
    conn = db.connect()
    try:

        def declined() -> None:
            with txi.transaction(conn, key) as tx:
                db.insert(conn, key, 1)
                tx.set_result("ok")
                raise RuntimeError("payment declined")

        with pytest.raises(RuntimeError, match="payment declined"):
            declined()
        assert db.count(key) == 0
        assert db.store.get(key) is None
        with txi.transaction(conn, key) as tx:  # the key is free: a retry runs
            assert not tx.replayed
            db.insert(conn, key, 1)
    finally:
        conn.close()
    assert db.count(key) == 1
    assert db.store.get(key) is not None


def test_key_reuse_and_misuse(db: DB, key: str) -> None:
    txi = TransactionalIdempotency(table=RECORDS_TABLE)
    conn = db.connect()
    try:
        with txi.transaction(conn, key, payload={"a": 1}):
            pass
        with pytest.raises(KeyReuseError), txi.transaction(conn, key, payload={"a": 2}):
            pass
        with txi.transaction(conn, key, payload={"a": 1}) as tx:
            assert tx.replayed
            assert tx.result is None
            with pytest.raises(RuntimeError, match="already completed"):
                tx.set_result(1)
    finally:
        conn.close()


def test_in_progress_claim_of_the_normal_api_is_respected(db: DB, key: str) -> None:
    claim = db.store.claim(key, "-", lease=60, ttl=60)
    assert claim.acquired
    txi = TransactionalIdempotency(table=RECORDS_TABLE)
    conn = db.connect()
    try:
        with pytest.raises(AlreadyInProgressError), txi.transaction(conn, key):
            pass
        db.store.release(key, claim.record.fence)
        with txi.transaction(conn, key) as tx:  # released: taken over with fence + 1
            assert not tx.replayed
    finally:
        conn.close()
    record = db.store.get(key)
    assert record is not None
    assert record.fence == claim.record.fence + 1


def test_32_concurrent_duplicates_write_once(db: DB, key: str) -> None:
    txi = TransactionalIdempotency(db.connect, table=RECORDS_TABLE)
    runs: list[int] = []

    @txi(key="order_id")
    def create(conn: Any, order: dict[str, Any]) -> Receipt:
        runs.append(1)
        db.insert(conn, key, order["amount"])
        time.sleep(0.05)  # duplicates arrive while the transaction is open
        return Receipt(order["order_id"], order["amount"])

    barrier = threading.Barrier(N)

    def call(_: int) -> Receipt:
        barrier.wait()
        return create({"order_id": key, "amount": 7})

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(call, range(N)))
    assert len(runs) == 1
    assert db.count(key) == 1
    assert results == [Receipt(key, 7)] * N


@pytest.mark.parametrize("crash", ["before-commit", "after-commit"])
def test_killed_process_leaves_no_duplicate_and_no_lost_effect(
    db: DB, key: str, crash: str
) -> None:
    args = [db.dialect, db.target, RECORDS_TABLE, db.business, key]
    worker = [sys.executable, "-m", "tests.effects.crash_worker", *args]
    died = subprocess.run([*worker, crash], cwd=ROOT, capture_output=True, text=True, timeout=60)
    if crash == "before-commit":
        assert died.returncode == -signal.SIGKILL, died.stderr
        assert db.count(key) == 0  # the business write died with the transaction
        assert db.store.get(key) is None
    else:
        assert died.returncode == 3, died.stderr
        assert db.count(key) == 1
    retry = subprocess.run([*worker, "none"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.strip() == ("ran" if crash == "before-commit" else "replayed")
    assert db.count(key) == 1  # exactly once, never lost


def test_decorator_current_key_and_no_key(db: DB) -> None:
    seen: list[str] = []

    @transactional(db.connect, table=RECORDS_TABLE, key="id", required=False)
    def handle(conn: Any, msg: dict[str, Any]) -> int:
        seen.append(current_key())
        return 1

    msg = {"id": uuid.uuid4().hex}
    assert handle(msg) == 1
    assert handle(msg) == 1
    assert len(seen) == 1
    assert seen[0] == handle.key_for(msg)  # type: ignore[attr-defined]
    with pytest.raises(LookupError):
        current_key()

    @transactional(db.connect, table=RECORDS_TABLE, key="id", required=False)
    def keyless(conn: Any, msg: dict[str, Any]) -> int:
        return 2

    assert keyless({"id": None}) == 2  # runs without idempotency, still in a transaction


def test_nested_in_callers_transaction_commits_with_it(db: DB, key: str) -> None:
    txi = TransactionalIdempotency(table=RECORDS_TABLE)
    conn = db.connect()
    try:
        if db.dialect == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
        elif db.dialect == "mysql":
            conn.begin()
        else:
            conn.execute("SELECT 1")  # psycopg: an implicit transaction is now open
        with txi.transaction(conn, key) as tx:
            db.insert(conn, key, 1)
        assert not tx.replayed
        conn.rollback()  # the caller's rollback undoes the savepoint's work too
        assert db.count(key) == 0
        assert db.store.get(key) is None
    finally:
        conn.close()


def test_options_that_do_not_apply_are_refused() -> None:
    with pytest.raises(TypeError, match="heartbeat"):
        TransactionalIdempotency(heartbeat=False)
    txi = TransactionalIdempotency()
    with pytest.raises(TypeError, match="connect="):
        txi(lambda conn, x: x)
    with (
        pytest.raises(TypeError, match="sqlite3, psycopg 3, PyMySQL or aiomysql"),
        txi.transaction(object(), "k"),
    ):
        pass


def test_migration_sql() -> None:
    txi = TransactionalIdempotency(table="app.idem")
    assert 'CREATE TABLE IF NOT EXISTS "app"."idem"' in txi.migration_sql()
    assert "WITHOUT ROWID" in txi.migration_sql("sqlite")


# -- async (PostgreSQL) ---------------------------------------------------------------------------
async def test_async_32_tasks_write_once(pg_admin: Any, key: str) -> None:
    from psycopg_pool import AsyncConnectionPool

    from idempotence.stores._postgres import PostgresStore

    business = f"effects_business_{SESSION}"
    pg_admin.execute(f'CREATE TABLE IF NOT EXISTS "{business}" (key text, amount int)')
    runs: list[int] = []
    async with AsyncConnectionPool(PG_URL, min_size=1, max_size=N + 2, open=False) as pool:
        txi = TransactionalIdempotency(pool, table=RECORDS_TABLE)

        @txi(key="order_id", fingerprint="amount")
        async def create(conn: Any, order: dict[str, Any]) -> Receipt:
            runs.append(1)
            await conn.execute(
                f'INSERT INTO "{business}" (key, amount) VALUES (%s, %s)', (key, order["amount"])
            )
            await asyncio.sleep(0.05)
            assert current_key() == create.key_for(order)  # type: ignore[attr-defined]
            return Receipt(order["order_id"], order["amount"])

        results = await asyncio.gather(*(create({"order_id": key, "amount": 9}) for _ in range(N)))
        with pytest.raises(KeyReuseError):
            await create({"order_id": key, "amount": 10})
        async with pool.connection() as conn:

            async def boom() -> None:
                async with txi.atransaction(conn, key + "-2"):
                    await conn.execute(
                        f'INSERT INTO "{business}" (key, amount) VALUES (%s, 1)', (key,)
                    )
                    raise ValueError("boom")

            with pytest.raises(ValueError, match="boom"):
                await boom()
            async with txi.atransaction(conn, key + "-3") as tx:
                tx.set_result([1, 2])
            async with txi.atransaction(conn, key + "-3") as tx:
                assert tx.replayed
                assert tx.result == [1, 2]
    assert len(runs) == 1
    assert results == [Receipt(key, 9)] * N
    count = pg_admin.execute(f'SELECT count(*) FROM "{business}" WHERE key = %s', (key,))
    assert count.fetchone() == (1,)
    store = PostgresStore(PG_URL, table=RECORDS_TABLE)
    assert store.get(key + "-2") is None
    store.close()


async def test_atransaction_needs_an_async_connection(tmp_path: Path) -> None:
    txi = TransactionalIdempotency()
    conn = sqlite3.connect(tmp_path / "x.db")
    with pytest.raises(TypeError, match="AsyncConnection"):
        async with txi.atransaction(conn, "k"):
            pass
    conn.close()


def test_decorator_namespace_has_the_lambda_function_name(
    db: DB, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same code deployed as two Lambda functions over one database: each runs."""
    runs: list[str] = []

    def deploy(function: str) -> Any:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", function)
        txi = TransactionalIdempotency(db.connect, table=RECORDS_TABLE)

        @txi(key="order_id")
        def record(conn: Any, order: dict[str, Any]) -> str:
            runs.append(function)
            db.insert(conn, key, order["amount"])
            return function

        return record

    order = {"order_id": key, "amount": 1}
    assert deploy("ledger-a")(order) == "ledger-a"
    assert deploy("ledger-b")(order) == "ledger-b"  # not ledger-a's stored answer
    assert deploy("ledger-a")(order) == "ledger-a"  # a replay
    assert runs == ["ledger-a", "ledger-b"]
    assert db.count(key) == 2


# -- async (MariaDB/MySQL through aiomysql: the store's own async connections) -----------------
async def test_async_mysql_tasks_write_once(mysql_admin: Any, key: str) -> None:
    from idempotence.stores._mysql import MySQLStore

    business = f"effects_business_{SESSION}"
    with mysql_admin.cursor() as cur:
        cur.execute(f"CREATE TABLE IF NOT EXISTS `{business}` (`key` text, amount int)")
    store = MySQLStore(MYSQL_URL, table=RECORDS_TABLE, pool_size=N)
    txi = TransactionalIdempotency(store, table=RECORDS_TABLE)
    runs: list[int] = []

    async def insert(conn: Any, amount: int) -> None:
        async with conn.cursor() as cur:
            await cur.execute(
                f"INSERT INTO `{business}` (`key`, amount) VALUES (%s, %s)", (key, amount)
            )

    @txi(key="order_id", fingerprint="amount")
    async def create(conn: Any, order: dict[str, Any]) -> Receipt:
        runs.append(1)
        await insert(conn, order["amount"])
        await asyncio.sleep(0.05)
        return Receipt(order["order_id"], order["amount"])

    results = await asyncio.gather(*(create({"order_id": key, "amount": 9}) for _ in range(16)))
    with pytest.raises(KeyReuseError):
        await create({"order_id": key, "amount": 10})
    source = store.asql_connection()
    assert source is not None
    async with source as conn:

        async def boom() -> None:
            async with txi.atransaction(conn, key + "-2"):
                await insert(conn, 1)
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            await boom()
        async with txi.atransaction(conn, key + "-3") as tx:
            tx.set_result([1, 2])
        async with txi.atransaction(conn, key + "-3") as tx:
            assert tx.replayed
            assert tx.result == [1, 2]
    assert await store.aget(key + "-2") is None  # rolled back with the body's error
    record = await store.aget(create.key_for({"order_id": key, "amount": 9}))  # type: ignore[attr-defined]
    assert record is not None
    assert record.status is Status.COMPLETED  # visible through the store API
    await store.aclose()
    assert len(runs) == 1
    assert results == [Receipt(key, 9)] * 16
    with mysql_admin.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM `{business}` WHERE `key` = %s", (key,))
        assert cur.fetchone() == (1,)


def test_migration_sql_mysql() -> None:
    ddl = TransactionalIdempotency(table="app.idem").migration_sql("mysql")
    assert "CREATE TABLE IF NOT EXISTS `app`.`idem`" in ddl
    assert "VARBINARY" in ddl


# -- replay_types: an undeclared class is refused when it is stored -------------------------------
def test_an_undeclared_class_is_refused_at_store_time_and_rolls_back(db: DB, key: str) -> None:
    from idempotence import UnencodableError

    txi = TransactionalIdempotency(table=RECORDS_TABLE)
    conn = db.connect()

    def undeclared() -> None:
        with txi.transaction(conn, key, payload={"amount": 5}) as tx:
            db.insert(conn, key, 5)
            tx.set_result(Receipt("o1", 5))  # no result_type names Receipt

    try:
        with pytest.raises(UnencodableError, match="replay would not rebuild"):
            undeclared()
    finally:
        conn.close()
    assert db.count(key) == 0  # the business write rolled back with it
    assert db.store.get(key) is None  # and no record: the key is free
    conn = db.connect()
    try:
        with txi.transaction(conn, key, payload={"amount": 5}, result_type=Receipt) as tx:
            assert not tx.replayed
            db.insert(conn, key, 5)
            tx.set_result(Receipt("o1", 5))
    finally:
        conn.close()
    assert db.count(key) == 1


def test_replay_types_declares_classes_for_the_context_manager(db: DB, key: str) -> None:
    txi = TransactionalIdempotency(table=RECORDS_TABLE, replay_types=[Receipt])
    for attempt in range(2):
        conn = db.connect()
        try:
            with txi.transaction(conn, key, payload={"amount": 7}) as tx:
                if not tx.replayed:
                    db.insert(conn, key, 7)
                    tx.set_result({"receipt": Receipt("o2", 7)})
        finally:
            conn.close()
        assert tx.replayed is (attempt == 1)
        assert tx.result == {"receipt": Receipt("o2", 7)}  # rebuilt on the replay
    assert db.count(key) == 1


def test_the_decorator_refuses_an_undeclared_class_and_honours_replay_types(db: DB) -> None:
    from idempotence import UnencodableError

    @transactional(db.connect, table=RECORDS_TABLE, key="id")
    def undeclared(conn: Any, msg: dict[str, Any]) -> dict[str, Any]:
        db.insert(conn, msg["id"], 1)
        return {"receipt": Receipt(msg["id"], 1)}

    msg = {"id": uuid.uuid4().hex}
    with pytest.raises(UnencodableError, match="replay_types"):
        undeclared(msg)
    assert db.count(msg["id"]) == 0
    assert db.store.get(undeclared.key_for(msg)) is None  # type: ignore[attr-defined]

    calls: list[str] = []

    @transactional(db.connect, table=RECORDS_TABLE, key="id", replay_types=[Receipt])
    def declared(conn: Any, msg: dict[str, Any]) -> dict[str, Any]:
        calls.append(msg["id"])
        db.insert(conn, msg["id"], 1)
        return {"receipt": Receipt(msg["id"], 1)}

    @transactional(db.connect, table=RECORDS_TABLE, key="id")
    def annotated(conn: Any, msg: dict[str, Any]) -> Receipt:
        calls.append(msg["id"])
        db.insert(conn, msg["id"], 2)
        return Receipt(msg["id"], 2)

    for fn, expected in ((declared, {"receipt": Receipt}), (annotated, Receipt)):
        msg = {"id": uuid.uuid4().hex}
        first, second = fn(msg), fn(msg)
        assert first == second
        if isinstance(expected, dict):
            assert isinstance(second["receipt"], Receipt)  # type: ignore[index]
        else:
            assert isinstance(second, Receipt)
        assert calls.count(msg["id"]) == 1
        assert db.count(msg["id"]) == 1
