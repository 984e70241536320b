"""Fixtures of the HTTP tests: every test taking ``store`` runs on each backend.

Memory and SQLite always; Redis (``IDEMPOTENCE_TEST_REDIS_URL``), PostgreSQL
(``IDEMPOTENCE_TEST_POSTGRES_URL``) and MariaDB/MySQL (``IDEMPOTENCE_TEST_MYSQL_URL``) when
reachable (skip locally, fail in CI; see
``tests.conftest.backend_unavailable``).
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from idempotence import Idempotency
from idempotence.stores import MemoryStore, SQLiteStore, Store
from tests.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    backend_unavailable,
    mysql_admin_or_unavailable,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
)

RUN = uuid.uuid4().hex[:12]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Any]:
    try:
        import psycopg  # noqa: F401 - missing fails in CI here, not a plain skip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        backend_unavailable(f"psycopg not installed: {exc}")
    conn = postgres_admin_or_unavailable(POSTGRES_URL)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[Any]:
    try:
        import pymysql  # noqa: F401 - missing fails in CI here, not a plain skip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        backend_unavailable(f"pymysql not installed: {exc}")
    conn = mysql_admin_or_unavailable(MYSQL_URL)
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def redis_ok() -> Iterator[None]:
    try:
        import redis  # noqa: F401 - missing fails in CI here, not a plain skip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        backend_unavailable(f"redis not installed: {exc}")
    client = redis_client_or_unavailable(REDIS_URL)
    yield
    for key in client.scan_iter(match=f"idem-http-{RUN}:*", count=1000):
        client.delete(key)
    client.close()


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A new, empty store of backend ``kind`` (one of :data:`BACKENDS`); the caller closes
    it. Tables and key prefixes are unique to the call (SQL tables are dropped at the end
    of the test)."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(tmp_path / "idem.db")
    if kind == "redis":
        request.getfixturevalue("redis_ok")
        from idempotence.stores import RedisStore

        return RedisStore(REDIS_URL, prefix=f"idem-http-{RUN}:{uuid.uuid4().hex[:8]}:")
    if kind == "postgres":
        admin: Any = request.getfixturevalue("postgres_admin")
        from idempotence.stores import PostgresStore

        table = f"idem_http_{RUN}_{uuid.uuid4().hex[:8]}"
        request.addfinalizer(lambda: admin.execute(f'DROP TABLE IF EXISTS "{table}"'))
        return PostgresStore(POSTGRES_URL, table=table)
    if kind == "mysql":
        mysql: Any = request.getfixturevalue("mysql_admin")
        from idempotence.stores import MySQLStore

        table = f"idem_http_{RUN}_{uuid.uuid4().hex[:8]}"

        def drop() -> None:
            with mysql.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")

        request.addfinalizer(drop)
        return MySQLStore(MYSQL_URL, table=table)
    if kind == "dynamodb":  # needs the ``dynamodb_endpoint`` fixture (tests.moto_server)
        pytest.importorskip("boto3")
        from idempotence.stores import DynamoDBStore

        endpoint = request.getfixturevalue("dynamodb_endpoint")
        made = DynamoDBStore(
            f"idem-{RUN}-{uuid.uuid4().hex[:8]}", region="us-east-1", endpoint_url=endpoint
        )
        made.create_table()
        return made
    raise AssertionError(kind)


#: Every backend ``make_store`` builds.
BACKENDS = ["memory", "sqlite", "redis", "postgres", "mysql", "dynamodb"]


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres", "mysql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store = make_store(request.param, request, tmp_path)
    yield store
    store.close()


@pytest.fixture
def idem(store: Store) -> Idempotency:
    return Idempotency(store, lease=30)


def post_concurrently(base: str, headers: dict[str, str], n: int = 16) -> list[httpx.Response]:
    """``n`` simultaneous ``POST /orders {"item": "book"}`` to the server at ``base``, each
    on a client of its own (duplicates racing through a real server)."""

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=base, timeout=10) as client:
            return client.post("/orders", json={"item": "book"}, headers=headers)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(post, range(n)))
