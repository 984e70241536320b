"""Backends for the effects tests: every store kind, each on a real service (PostgreSQL,
MariaDB/MySQL, Redis db 14, DynamoDB via moto) with names of its own per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence.stores import MemoryStore, SQLiteStore, Store
from tests.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    mysql_admin_or_unavailable,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
)
from tests.moto_server import dynamodb_endpoint  # noqa: F401

PG_URL = POSTGRES_URL
REDIS_URL = os.environ.get("IDEMPOTENCE_TEST_REDIS_URL_EFFECTS", "redis://127.0.0.1:6379/14")
SESSION = uuid.uuid4().hex[:10]
RECORDS_TABLE = f"effects_records_{SESSION}"
STATES_TABLE = f"effects_states_{SESSION}"
REDIS_PREFIX = f"effects-test:{SESSION}:"
REGION = "us-east-1"
STORE_KINDS = ["memory", "sqlite", "postgres", "mysql", "redis", "dynamodb"]


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Any]:
    """An autocommit psycopg connection; drops this session's tables at the end."""
    conn = postgres_admin_or_unavailable(PG_URL)
    yield conn
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (f"%{SESSION}%",)
    ).fetchall()
    for (name,) in rows:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')
    conn.close()


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[Any]:
    """An autocommit PyMySQL connection to MariaDB/MySQL; drops this session's tables at
    the end."""
    conn = mysql_admin_or_unavailable(MYSQL_URL)
    yield conn
    with conn.cursor() as cur:
        cur.execute("SHOW TABLES LIKE %s", (f"%{SESSION}%",))
        for (name,) in cur.fetchall():
            cur.execute(f"DROP TABLE IF EXISTS `{name}`")
    conn.close()


@pytest.fixture(scope="session")
def redis_admin() -> Iterator[Any]:
    client = redis_client_or_unavailable(REDIS_URL)
    yield client
    for key in client.scan_iter(match=REDIS_PREFIX + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="session")
def dynamodb_table(dynamodb_endpoint: str) -> str:  # noqa: F811
    from idempotence.stores._dynamodb import DynamoDBStore

    table = f"effects-{SESSION}"
    store = DynamoDBStore(table, region=REGION, endpoint_url=dynamodb_endpoint)
    store.create_table()
    store.close()
    return table


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "effects.db", table=RECORDS_TABLE)
    if kind == "postgres":
        request.getfixturevalue("pg_admin")
        from idempotence.stores._postgres import PostgresStore

        return PostgresStore(PG_URL, table=RECORDS_TABLE, pool_size=40)
    if kind == "mysql":
        request.getfixturevalue("mysql_admin")
        from idempotence.stores._mysql import MySQLStore

        return MySQLStore(MYSQL_URL, table=RECORDS_TABLE, pool_size=40)
    if kind == "redis":
        request.getfixturevalue("redis_admin")
        from idempotence.stores._redis import RedisStore

        return RedisStore(REDIS_URL, prefix=REDIS_PREFIX, max_connections=64)
    from idempotence.stores._dynamodb import DynamoDBStore

    endpoint = request.getfixturevalue("dynamodb_endpoint")
    table = request.getfixturevalue("dynamodb_table")
    return DynamoDBStore(table, region=REGION, endpoint_url=endpoint)


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each kind of store, fresh per test (shared tables/prefixes, unique entity names)."""
    store = make_store(request.param, request, tmp_path)
    yield store
    store.close()


@pytest.fixture
def entity() -> str:
    return f"order-{uuid.uuid4().hex}"
