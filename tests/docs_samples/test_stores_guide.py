"""The samples of docs/stores.md. The page includes this file's sections (and
docs/snippets/postgres/migration.sql), so they run here as written. Samples that name a
server's address are built as written (a store connects on first use), then the same
construction runs against the test servers (Redis db 15, PostgreSQL ``test``, DynamoDB on
the moto server)."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import moto_server
from tests.conftest import (
    POSTGRES_URL,
    REDIS_URL,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
)

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "docs" / "snippets" / "postgres" / "migration.sql"

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture


def ledger_store() -> type:
    """The capability sample (a class of the page's module, here of a function)."""
    # fmt: off
    # --8<-- [start:capability]
    import sqlite3
    from contextlib import contextmanager

    from idempotence.stores import Store


    class LedgerStore(Store):
        ...                                         # the six operations

        @contextmanager
        def sql_connection(self):
            conn = sqlite3.connect(self.path, isolation_level=None)   # autocommit
            try:
                yield conn
            finally:
                conn.close()

        def asql_connection(self):
            return None                             # no async driver: a worker thread is used
    # --8<-- [end:capability]
    # fmt: on
    return LedgerStore


def sqlite_ledger(path: Path) -> Any:
    """The sample's store with its six operations: those of a SQLite store on ``path``."""
    from idempotence.stores import SQLiteStore

    records = SQLiteStore(path)

    class SQLiteLedger(ledger_store()):  # type: ignore[misc]
        def __init__(self) -> None:
            self.path = str(path)

        def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
            return records.claim(key, fingerprint, lease=lease, ttl=ttl)

        def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
            return records.complete(key, fence, result, ttl=ttl)

        def release(self, key: str, fence: int) -> bool:
            return records.release(key, fence)

        def renew(self, key: str, fence: int, *, lease: float) -> bool:
            return records.renew(key, fence, lease=lease)

        def get(self, key: str) -> Any:
            return records.get(key)

        def delete(self, key: str) -> bool:
            return records.delete(key)

    return SQLiteLedger()


def test_capability(tmp_path: Path) -> None:
    from idempotence.effects import StateGuard
    from idempotence.stores.capabilities import SQLConnections

    store = sqlite_ledger(tmp_path / "ledger.db")
    assert isinstance(store, SQLConnections)
    orders = StateGuard(store)
    orders.set("o-1", "PENDING")
    assert orders.transition("o-1", "PENDING", "PROCESSING")
    assert not orders.transition("o-1", "PENDING", "PROCESSING")  # a duplicate: nothing
    with sqlite3.connect(tmp_path / "ledger.db") as conn:  # the states live in its database
        assert conn.execute("SELECT state FROM idempotence_states").fetchall() == [("PROCESSING",)]


def test_dynamodb(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    # fmt: off
    # --8<-- [start:dynamodb]
    from idempotence import Idempotency
    from idempotence.stores import DynamoDBStore

    idem = Idempotency(DynamoDBStore("idempotency", region="eu-west-1"))
    # or Idempotency("dynamodb://idempotency?region=eu-west-1")
    # --8<-- [end:dynamodb]
    # fmt: on
    store = idem.store
    assert isinstance(store, DynamoDBStore)
    assert (store.table, store.region) == ("idempotency", "eu-west-1")
    by_url = Idempotency("dynamodb://idempotency?region=eu-west-1").store
    assert isinstance(by_url, DynamoDBStore)
    assert (by_url.table, by_url.region) == ("idempotency", "eu-west-1")
    store.create_table()
    calls: list[int] = []

    @idem(key="order_id")
    def create_order(order: dict) -> dict:  # type: ignore[type-arg]
        calls.append(1)
        return {"id": order["order_id"]}

    order = {"order_id": str(uuid.uuid4())}
    assert create_order(order) == create_order(order)
    assert calls == [1]


def test_redis() -> None:
    pytest.importorskip("redis")
    # fmt: off
    # --8<-- [start:redis]
    from idempotence.stores import RedisStore

    store = RedisStore("redis://localhost:6379/0", prefix="idempotence:")
    # --8<-- [end:redis]
    # fmt: on
    assert store.prefix == "idempotence:"
    store.close()
    redis_client_or_unavailable(REDIS_URL).close()
    store = RedisStore(REDIS_URL, prefix="idempotence:")  # the test server's db 15
    key = f"docs#{uuid.uuid4()}"
    claim = store.claim(key, "f", lease=30, ttl=60)
    assert store.complete(key, claim.record.fence, b"r", ttl=60)
    record = store.get(key)
    assert record is not None
    assert record.result == b"r"
    assert store.delete(key)
    store.close()


def test_postgres() -> None:
    pytest.importorskip("psycopg")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        # fmt: off
        # --8<-- [start:postgres]
        from idempotence.stores import PostgresStore

        store = PostgresStore("postgresql://app@db/app?table=idempotency")
        print(store.migration_sql())   # the DDL, for migration tools (then auto_create=False)
        # --8<-- [end:postgres]
        # fmt: on
    assert store.table == "idempotency"
    # the page shows the DDL it prints (docs/snippets/postgres/migration.sql)
    assert out.getvalue().strip() == MIGRATION.read_text().strip()
    # and the DDL creates a table the store works with (on the test server)
    postgres_admin_or_unavailable(POSTGRES_URL).close()
    table = f"docs_{uuid.uuid4().hex[:12]}"
    ddl = PostgresStore(f"{POSTGRES_URL}?table={table}").migration_sql()
    store = PostgresStore(f"{POSTGRES_URL}?table={table}", auto_create=False)
    try:
        with store.sql_connection() as conn:
            conn.execute(ddl)
        claim = store.claim("k", "f", lease=30, ttl=60)
        assert store.complete("k", claim.record.fence, b"r", ttl=60)
    finally:
        with store.sql_connection() as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        store.close()
