"""StateGuard on every store, and the helpers on user rows/items: one atomic
compare-and-set per transition, exactly one winner among concurrent duplicates."""

from __future__ import annotations

import asyncio
import enum
import sqlite3
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from idempotence import StoreError
from idempotence.effects import (
    StateConflictError,
    StateGuard,
    adynamodb_transition,
    asql_transition,
    dynamodb_transition,
    dynamodb_transition_update,
    sql_transition,
)
from idempotence.stores import MemoryStore, SQLiteStore, Store
from tests.effects.conftest import PG_URL, REGION, STATES_TABLE

N = 32


class Order(str, enum.Enum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SHIPPED = "SHIPPED"


def table_for(store: Store) -> str | None:
    """The session's states table on SQL stores (DynamoDB: the store's own table)."""
    return (
        STATES_TABLE
        if type(store).__name__ in {"SQLiteStore", "PostgresStore", "MySQLStore"}
        else None
    )


def guard_for(store: Store) -> StateGuard[str]:
    return StateGuard(store, table=table_for(store))


def race(n: int, fn: Callable[[], bool]) -> list[bool]:
    """Run ``fn`` in ``n`` threads released at once."""
    barrier = threading.Barrier(n)

    def go() -> bool:
        barrier.wait()
        return fn()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: go(), range(n)))


# -- StateGuard, every store -----------------------------------------------------------------
def test_transition_moves_only_from_the_expected_state(store: Store, entity: str) -> None:
    guard = guard_for(store)
    assert guard.get(entity) is None
    assert guard.transition(entity, "PENDING", "PROCESSING") is False  # no state yet
    guard.set(entity, "PENDING")
    assert guard.get(entity) == "PENDING"
    assert guard.transition(entity, "PENDING", "PROCESSING") is True
    assert guard.transition(entity, "PENDING", "PROCESSING") is False  # the duplicate
    assert guard.get(entity) == "PROCESSING"
    assert guard.transition(entity, "PROCESSING", "SHIPPED") is True
    assert guard.get(entity) == "SHIPPED"


def test_none_means_no_state(store: Store, entity: str) -> None:
    guard = guard_for(store)
    assert guard.transition(entity, None, "NEW") is True  # create if absent
    assert guard.transition(entity, None, "NEW") is False
    assert guard.transition(entity, "OTHER", None) is False
    assert guard.transition(entity, "NEW", None) is True  # delete if still NEW
    assert guard.get(entity) is None
    guard.set(entity, "X")
    assert guard.delete(entity) is True
    assert guard.delete(entity) is False
    with pytest.raises(ValueError, match="at least one side"):
        guard.transition(entity, None, None)


def test_states_are_apart_from_records(store: Store, entity: str) -> None:
    guard = guard_for(store)
    guard.set(entity, "PENDING")
    assert store.get(entity) is None
    claim = store.claim(entity, "fp", lease=60, ttl=60)
    assert claim.acquired
    assert guard.get(entity) == "PENDING"
    store.delete(entity)


def test_enum_states(store: Store, entity: str) -> None:
    guard = StateGuard(store, states=Order, table=table_for(store))
    guard.set(entity, Order.PENDING)
    assert guard.transition(entity, Order.PENDING, Order.PROCESSING)
    state = guard.get(entity)
    assert state is Order.PROCESSING


class Other(str, enum.Enum):
    PENDING = "PENDING"


def test_enum_guard_refuses_undeclared_states(store: Store, entity: str) -> None:
    guard = StateGuard(store, states=Order, table=table_for(store))
    guard.set(entity, Order.PENDING)
    for bad in ("BOGUS", "pending", Other.PENDING):
        with pytest.raises(ValueError, match="not a state of Order"):
            guard.transition(entity, Order.PENDING, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a state of Order"):
            guard.transition(entity, bad, Order.SHIPPED)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a state of Order"):
            guard.set(entity, bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not a state of Order"):
            guard.guard(entity, Order.PENDING, bad)  # type: ignore[arg-type]
    assert guard.get(entity) is Order.PENDING  # nothing was written
    # Declared states, as members or as their values, still move.
    assert guard.transition(entity, "PENDING", Order.PROCESSING)  # type: ignore[arg-type]
    assert guard.get(entity) is Order.PROCESSING
    guard.delete(entity)


async def test_enum_guard_refuses_undeclared_states_async(store: Store, entity: str) -> None:
    guard = StateGuard(store, states=Order, table=table_for(store))
    with pytest.raises(ValueError, match="not a state of Order"):
        await guard.atransition(entity, None, "BOGUS")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a state of Order"):
        await guard.aset(entity, "BOGUS")  # type: ignore[arg-type]
    assert await guard.aget(entity) is None
    await store.aclose()


def test_exactly_one_of_32_threads_moves(store: Store, entity: str) -> None:
    guard = guard_for(store)
    guard.set(entity, "PENDING")
    results = race(N, lambda: guard.transition(entity, "PENDING", "PROCESSING"))
    assert results.count(True) == 1
    assert guard.get(entity) == "PROCESSING"


def test_exactly_one_of_32_threads_creates(store: Store, entity: str) -> None:
    guard = guard_for(store)
    results = race(N, lambda: guard.transition(entity, None, "NEW"))
    assert results.count(True) == 1


async def test_exactly_one_of_32_tasks_moves(store: Store, entity: str) -> None:
    guard = guard_for(store)
    await guard.aset(entity, "PENDING")
    results = await asyncio.gather(
        *(guard.atransition(entity, "PENDING", "PROCESSING") for _ in range(N))
    )
    assert results.count(True) == 1
    assert await guard.aget(entity) == "PROCESSING"
    assert await guard.adelete(entity) is True
    await store.aclose()


def test_guard_moves_and_rolls_back(store: Store, entity: str) -> None:
    guard = guard_for(store)
    guard.set(entity, "PENDING")

    def failing() -> None:
        with guard.guard(entity, "PENDING", "PROCESSING"):
            assert guard.get(entity) == "PROCESSING"
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing()
    assert guard.get(entity) == "PENDING"  # rolled back: a retry can run
    with guard.guard(entity, "PENDING", "PROCESSING"):
        pass
    assert guard.get(entity) == "PROCESSING"
    with pytest.raises(StateConflictError) as info, guard.guard(entity, "PENDING", "PROCESSING"):
        pytest.fail("a duplicate must not run the body")
    assert info.value.current == "PROCESSING"
    assert info.value.entity == entity


def test_guard_rollback_is_conditional(store: Store, entity: str) -> None:
    guard = guard_for(store)
    guard.set(entity, "PENDING")

    def overtaken() -> None:
        with guard.guard(entity, "PENDING", "PROCESSING"):
            guard.set(entity, "CANCELLED")  # someone else moved it meanwhile
            raise RuntimeError

    with pytest.raises(RuntimeError):
        overtaken()
    assert guard.get(entity) == "CANCELLED"  # never overwritten by the rollback


async def test_async_guard(store: Store, entity: str) -> None:
    guard = guard_for(store)
    await guard.aset(entity, "PENDING")
    with pytest.raises(KeyError):
        async with guard.guard(entity, "PENDING", "PROCESSING"):
            raise KeyError("x")
    assert await guard.aget(entity) == "PENDING"
    async with guard.guard(entity, "PENDING", "PROCESSING"):
        pass
    with pytest.raises(StateConflictError):
        async with guard.guard(entity, "PENDING", "PROCESSING"):
            pytest.fail("must not run")
    await store.aclose()


def test_guard_from_url(tmp_path: Path, entity: str) -> None:
    guard: StateGuard[str] = StateGuard(f"sqlite:///{tmp_path}/x.db")
    assert guard.transition(entity, None, "A")
    assert isinstance(guard.store, SQLiteStore)


def test_memory_guards_share_the_store_states(entity: str) -> None:
    store = MemoryStore()
    StateGuard(store).set(entity, "A")
    assert StateGuard(store).get(entity) == "A"
    assert StateGuard(MemoryStore()).get(entity) is None


def test_invalid_arguments(entity: str) -> None:
    guard: StateGuard[str] = StateGuard(MemoryStore())
    with pytest.raises(ValueError, match="entity"):
        guard.get("")
    with pytest.raises(TypeError, match="state"):
        guard.set(entity, "")
    with pytest.raises(TypeError, match="Store or a URL"):
        StateGuard(object())  # type: ignore[call-overload]


def test_backend_failure_is_a_store_error(tmp_path: Path, entity: str) -> None:
    from idempotence.stores._redis import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    # Either StateGuard's wrapper or the store's own connection error (a StoreError naming
    # the cause, which StateGuard passes through); never the client's raw exception.
    failed = r"StateGuard on RedisStore failed|cannot connect to Redis"
    with pytest.raises(StoreError, match=failed):
        StateGuard(store).transition(entity, "A", "B")


# -- sql_transition on the user's own rows -----------------------------------------------------
WEIRD_TABLE = 'my "orders"; DROP TABLE x; --'
WEIRD_SQL = '"' + WEIRD_TABLE.replace('"', '""') + '"'


def _sqlite_orders(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f'CREATE TABLE {WEIRD_SQL} (id TEXT PRIMARY KEY, "order state" TEXT)')
    conn.executemany(
        f"INSERT INTO {WEIRD_SQL} VALUES (?, ?)",
        [("o1", "PENDING"), ("o2", None)],
    )
    conn.close()


def test_sql_transition_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _sqlite_orders(db)
    conn = sqlite3.connect(db, isolation_level=None)

    def move(i: str, f: str | Order | None, t: str | Order) -> bool:
        return sql_transition(conn, WEIRD_TABLE, "id", i, "order state", f, t)

    assert move("o1", "PENDING", "PROCESSING") is True
    assert move("o1", "PENDING", "PROCESSING") is False
    assert move("o2", None, Order.PENDING) is True  # NULL -> PENDING
    assert move("nope", "PENDING", "X") is False
    rows = dict(conn.execute(f"SELECT * FROM {WEIRD_SQL}"))
    assert rows == {"o1": "PROCESSING", "o2": "PENDING"}


def test_sql_transition_sqlite_32_connections(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _sqlite_orders(db)

    def attempt() -> bool:
        conn = sqlite3.connect(db, timeout=30, isolation_level=None)
        try:
            return sql_transition(conn, WEIRD_TABLE, "id", "o1", "order state", "PENDING", "P2")
        finally:
            conn.close()

    assert race(N, attempt).count(True) == 1


@pytest.fixture
def pg_orders(pg_admin: Any) -> str:
    table = f"effects_orders_{uuid.uuid4().hex[:8]}_{STATES_TABLE[-10:]}"
    pg_admin.execute(f'CREATE TABLE "{table}" (id int PRIMARY KEY, state text)')
    pg_admin.execute(f"INSERT INTO \"{table}\" VALUES (1, 'PENDING'), (2, NULL)")
    return table


def test_sql_transition_postgres_32_connections(pg_orders: str, pg_admin: Any) -> None:
    import psycopg

    def attempt() -> bool:
        # Not autocommit: the UPDATE is part of a transaction that commits after a pause,
        # so the duplicates wait on the row lock and then find it moved.
        with psycopg.connect(PG_URL) as conn:
            moved = sql_transition(conn, pg_orders, "id", 1, "state", "PENDING", "PROCESSING")
            conn.execute("SELECT pg_sleep(0.05)")
            return moved

    assert race(N, attempt).count(True) == 1
    assert pg_admin.execute(f'SELECT state FROM "{pg_orders}" WHERE id = 1').fetchone() == (
        "PROCESSING",
    )


def test_sql_transition_postgres_rolls_back_with_the_transaction(
    pg_orders: str, pg_admin: Any
) -> None:
    import psycopg

    with psycopg.connect(PG_URL) as conn:

        def fails_later() -> None:
            with conn.transaction():
                assert sql_transition(conn, ("public", pg_orders), "id", 1, "state", "PENDING", "X")
                _ = 1 / 0

        with pytest.raises(ZeroDivisionError):
            fails_later()
        assert sql_transition(conn, pg_orders, "id", 2, "state", None, "PENDING")
    assert dict(pg_admin.execute(f'SELECT id, state FROM "{pg_orders}"').fetchall()) == {
        1: "PENDING",
        2: "PENDING",
    }


async def test_asql_transition_32_tasks(pg_orders: str) -> None:
    import psycopg

    async def attempt() -> bool:
        async with await psycopg.AsyncConnection.connect(PG_URL, autocommit=True) as conn:
            return await asql_transition(conn, pg_orders, "id", 1, "state", "PENDING", "DONE")

    results = await asyncio.gather(*(attempt() for _ in range(N)))
    assert results.count(True) == 1


def test_sql_transition_rejects_other_connections() -> None:
    with pytest.raises(TypeError, match="sqlite3, psycopg 3, PyMySQL or aiomysql"):
        sql_transition(object(), "t", "id", 1, "s", "A", "B")


# -- dynamodb_transition on the user's own items ------------------------------------------------
@pytest.fixture
def orders_table(dynamodb_endpoint: str) -> tuple[Any, str]:
    import boto3

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint)
    table = f"orders-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table,
        KeySchema=[
            {"AttributeName": "tenant", "KeyType": "HASH"},
            {"AttributeName": "order_id", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "tenant", "AttributeType": "S"},
            {"AttributeName": "order_id", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.put_item(
        TableName=table,
        Item={"tenant": {"S": "t1"}, "order_id": {"N": "1"}, "status": {"S": "PENDING"}},
    )
    return client, table


def test_dynamodb_transition(orders_table: tuple[Any, str]) -> None:
    client, table = orders_table
    key = {"tenant": "t1", "order_id": 1}
    assert dynamodb_transition(client, table, key, "status", "PENDING", "PROCESSING") is True
    assert dynamodb_transition(client, table, key, "status", "PENDING", "PROCESSING") is False
    typed = {"tenant": {"S": "t1"}, "order_id": {"N": "1"}}
    assert dynamodb_transition(client, table, typed, "status", Order.PROCESSING, Order.SHIPPED)
    item = client.get_item(TableName=table, Key=typed)["Item"]
    assert item["status"] == {"S": "SHIPPED"}
    # An item that does not exist is never created by a transition from a state.
    other = {"tenant": "t1", "order_id": 2}
    assert dynamodb_transition(client, table, other, "status", "PENDING", "X") is False
    assert "Item" not in client.get_item(
        TableName=table, Key={"tenant": {"S": "t1"}, "order_id": {"N": "2"}}
    )
    entry = dynamodb_transition_update(table, key, "status", "SHIPPED", "DONE")
    assert entry["Update"]["ConditionExpression"] == "#state = :expected"
    client.transact_write_items(TransactItems=[entry])
    assert client.get_item(TableName=table, Key=typed)["Item"]["status"] == {"S": "DONE"}


def test_dynamodb_transition_32_threads(orders_table: tuple[Any, str]) -> None:
    client, table = orders_table
    key = {"tenant": "t1", "order_id": 1}
    results = race(N, lambda: dynamodb_transition(client, table, key, "status", "PENDING", "P"))
    assert results.count(True) == 1


async def test_adynamodb_transition_32_tasks(
    orders_table: tuple[Any, str], dynamodb_endpoint: str
) -> None:
    from aiobotocore.session import get_session

    _, table = orders_table
    key = {"tenant": "t1", "order_id": 1}
    async with get_session().create_client(
        "dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint
    ) as client:
        results = await asyncio.gather(
            *(adynamodb_transition(client, table, key, "status", "PENDING", "P") for _ in range(N))
        )
    assert results.count(True) == 1
