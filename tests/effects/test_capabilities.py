"""Stores expose capabilities (``idempotence.stores.capabilities``); the effects use only
those. Every built-in store offers its own; a third-party store gets state guards and
transactional idempotency by implementing one (here: the SQL capability over ``sqlite3``)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from idempotence import Status
from idempotence.effects import (
    StateConflictError,
    StateGuard,
    TransactionalIdempotency,
    dynamodb_transaction,
)
from idempotence.stores import MemoryStore, Store
from idempotence.stores.capabilities import (
    AtomicScripts,
    DynamoDBRecords,
    SQLConnections,
    quoted_table,
    record_from_row,
    records_ddl,
)
from tests.effects.conftest import REDIS_PREFIX, REDIS_URL, STORE_KINDS, make_store

CAPABILITY = {
    "memory": None,
    "sqlite": SQLConnections,
    "postgres": SQLConnections,
    "mysql": SQLConnections,
    "redis": AtomicScripts,
    "dynamodb": DynamoDBRecords,
}
ALL = (SQLConnections, AtomicScripts, DynamoDBRecords)


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_each_store_offers_exactly_its_capability(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = make_store(kind, request, tmp_path)
    try:
        offered = [cap for cap in ALL if isinstance(store, cap)]
        assert offered == ([CAPABILITY[kind]] if CAPABILITY[kind] else [])
    finally:
        store.close()


# -- the capability methods of the built-in stores --------------------------------------------
def test_sql_connection_of_sqlite_and_postgres(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sqlite_store = make_store("sqlite", request, tmp_path)
    pg_store = make_store("postgres", request, tmp_path)
    try:
        with sqlite_store.sql_connection() as conn:  # type: ignore[attr-defined]
            assert isinstance(conn, sqlite3.Connection)
            assert conn.isolation_level is None  # autocommit
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert sqlite_store.asql_connection() is None  # type: ignore[attr-defined]
        with pg_store.sql_connection() as conn:  # type: ignore[attr-defined]
            assert conn.autocommit
            assert conn.execute("SELECT 1").fetchone() == (1,)

        async def main() -> Any:
            source = pg_store.asql_connection()  # type: ignore[attr-defined]
            assert source is not None
            async with source as aconn:
                cur = await aconn.execute("SELECT 2")
                return await cur.fetchone()

        assert asyncio.run(main()) == (2,)
    finally:
        sqlite_store.close()
        pg_store.close()


def test_run_script_of_redis(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    store = make_store("redis", request, tmp_path)
    assert isinstance(store, AtomicScripts)
    key = store.prefix + f"cap:{uuid.uuid4().hex}"
    script = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"
    try:
        assert store.run_script(script, key, ["v1"]) == b"v1"
        assert asyncio.run(store.arun_script(script, key, [b"v2"])) == b"v2"
        assert store.run_script("return redis.call('DEL', KEYS[1])", key, []) == 1
    finally:
        store.close()


def test_dynamodb_records_codec_and_completion_write(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = make_store("dynamodb", request, tmp_path)
    assert isinstance(store, DynamoDBRecords)
    key = f"cap-{uuid.uuid4().hex}"
    try:
        now = store.clock()
        write = store.completion_write(key, "fp", b"result", ttl=60.0, now=now)
        store.call("transact_write_items", {"TransactItems": [write]})
        record = store.get(key)
        assert record is not None
        assert record.status is Status.COMPLETED
        assert record.result == b"result"
        assert record.fingerprint == "fp"
        item = store.call(
            "get_item",
            {"TableName": store.table, "Key": store.item_key(key), "ConsistentRead": True},
        )["Item"]
        assert store.record_from_item(item) == record
        # The condition refuses a second completion of a live record.
        with pytest.raises(Exception, match="ConditionalCheckFailed"):
            store.call("transact_write_items", {"TransactItems": [write]})
        response = asyncio.run(
            store.acall("get_item", {"TableName": store.table, "Key": store.item_key(key)})
        )
        assert store.record_from_item(response["Item"]).fence == record.fence
    finally:
        store.close()


def test_sql_records_table_helpers() -> None:
    assert quoted_table("app.records", "postgres") == '"app"."records"'
    assert quoted_table('we"ird', "sqlite") == '"we""ird"'
    with pytest.raises(ValueError, match="invalid table name"):
        quoted_table("bad name;", "postgres")
    conn = sqlite3.connect(":memory:")
    conn.execute(records_ddl("recs", "sqlite"))
    conn.execute("INSERT INTO recs VALUES ('k', 'COMPLETED', 'fp', 3, 1.0, 2.0, x'6869')")
    row = conn.execute("SELECT *, 99 FROM recs").fetchone()
    record = record_from_row(row)
    assert (record.key, record.status, record.fence, record.result) == (
        "k",
        Status.COMPLETED,
        3,
        b"hi",
    )
    assert "CREATE TABLE IF NOT EXISTS" in records_ddl("recs", "postgres")


# -- a third-party store -------------------------------------------------------------------------
class LedgerStore(Store):
    """A store written outside the library: records in memory (delegated), and the SQL
    capability over its own ``sqlite3`` database file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = MemoryStore()
        self._local = threading.local()

    @contextmanager
    def sql_connection(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._local.conn = conn
        yield conn

    def asql_connection(self) -> None:
        """No async driver: the effects use sql_connection in a thread."""

    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        return self.records.claim(key, fingerprint, lease=lease, ttl=ttl)

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        return self.records.complete(key, fence, result, ttl=ttl)

    def release(self, key: str, fence: int) -> bool:
        return self.records.release(key, fence)

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        return self.records.renew(key, fence, lease=lease)

    def get(self, key: str) -> Any:
        return self.records.get(key)

    def delete(self, key: str) -> bool:
        return self.records.delete(key)


class Opaque(Store):
    """A store with no capability."""

    claim = complete = release = renew = get = delete = MemoryStore.claim  # type: ignore[assignment]


def test_third_party_store_gets_state_guards(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.db")
    assert isinstance(store, SQLConnections)
    guard = StateGuard(store)
    entity = f"order-{uuid.uuid4().hex}"
    assert guard.transition(entity, None, "PENDING")
    assert not guard.transition(entity, None, "PENDING")
    with pytest.raises(StateConflictError), guard.guard(entity, "NEW", "PROCESSING"):
        pytest.fail("the body of a refused guard ran")
    with guard.guard(entity, "PENDING", "PROCESSING"):
        pass
    assert guard.get(entity) == "PROCESSING"
    # The states are rows of a table in the store's own database.
    with sqlite3.connect(tmp_path / "ledger.db") as check:
        rows = check.execute("SELECT state FROM idempotence_states WHERE entity = ?", (entity,))
        assert rows.fetchall() == [("PROCESSING",)]
    # 16 concurrent duplicates: exactly one moves it.
    with ThreadPoolExecutor(16) as pool:
        moved = list(
            pool.map(lambda _: guard.transition(entity, "PROCESSING", "SHIPPED"), range(16))
        )
    assert moved.count(True) == 1
    assert asyncio.run(guard.aget(entity)) == "SHIPPED"
    assert asyncio.run(guard.atransition(entity, "SHIPPED", None))
    assert guard.get(entity) is None


def test_third_party_store_gets_transactional_idempotency(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path / "ledger.db")
    with store.sql_connection() as conn:
        conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")
    runs = []
    txi = TransactionalIdempotency(store)

    @txi(key="order_id")
    def charge(conn: sqlite3.Connection, order_id: str, amount: int) -> dict[str, int]:
        runs.append(order_id)
        conn.execute("INSERT INTO charges VALUES (?, ?)", (order_id, amount))
        return {"charged": amount}

    assert charge("o-1", 5) == {"charged": 5}
    assert charge("o-1", 5) == {"charged": 5}  # replayed from the record, in the same db
    assert runs == ["o-1"]
    with store.sql_connection() as conn:
        assert conn.execute("SELECT count(*) FROM charges").fetchone() == (1,)
        status = conn.execute("SELECT status FROM idempotency").fetchall()
        assert status == [("COMPLETED",)]

    @txi(key="order_id")
    async def acharge(conn: Any, order_id: str, amount: int) -> None:
        raise AssertionError("never runs")

    with pytest.raises(TypeError, match="no async connections"):
        asyncio.run(acharge("o-2", 1))


def test_a_store_without_capability_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="capabilit"):
        StateGuard(Opaque())
    with pytest.raises(TypeError, match="DynamoDBRecords"):
        dynamodb_transaction(MemoryStore(), "k", [])  # type: ignore[arg-type]


def test_a_subclass_of_a_builtin_store_keeps_its_backend(request: pytest.FixtureRequest) -> None:
    """Backends used to be picked by ``type(store).__module__``: a ``RedisStore`` subclass
    defined elsewhere got ``TypeError``. Capabilities are inherited."""
    request.getfixturevalue("redis_admin")
    from idempotence.stores import RedisStore

    class MyRedis(RedisStore):
        pass

    store = MyRedis(REDIS_URL, prefix=REDIS_PREFIX)
    entity = f"sub-{uuid.uuid4().hex}"
    try:
        guard = StateGuard(store)
        assert guard.transition(entity, None, "A")
        assert guard.get(entity) == "A"
        assert guard.delete(entity)
    finally:
        store.close()
