"""Shared test helpers.

Backends (Redis, PostgreSQL, DynamoDB via moto server) are real services. On a machine
without one, its tests skip with the reason; with ``CI=true`` a missing backend fails the
run instead, so CI can never pass by skipping a backend.
"""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any, NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
REDIS_URL = os.environ.get("IDEMPOTENCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "IDEMPOTENCE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("IDEMPOTENCE_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")


class Counter:
    """Counts calls of a test app or function, thread-safe: ``hit()`` returns the new count."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def hit(self) -> int:
        with self.lock:
            self.n += 1
            return self.n


def backend_unavailable(reason: str) -> NoReturn:
    """Skip (developer machine) or fail (CI) because a backend service is not reachable."""
    if IN_CI:
        pytest.fail(f"backend unavailable in CI (a skip would hide it): {reason}", pytrace=False)
    pytest.skip(reason)


def redis_client_or_unavailable(url: str) -> Any:
    """A ``redis.Redis`` client on ``url`` that answered a ping (the caller closes it);
    :func:`backend_unavailable` when the server does not answer. Skips without the
    ``redis`` package (a caller that must fail instead imports it first)."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        backend_unavailable(f"Redis not reachable at {url}: {exc}")
    return client


def redis_cluster_url_or_unavailable() -> str:
    """The store URL (``redis+cluster://``) of the loopback test cluster of
    ``tests/redis_cluster.py`` (3 masters + 3 replicas), started if it is not running;
    :func:`backend_unavailable` when it cannot be started (e.g. no ``redis-server``)."""
    from tests import redis_cluster

    try:
        return redis_cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        backend_unavailable(f"Redis Cluster (tests/redis_cluster.py) cannot start: {exc}")


def postgres_admin_or_unavailable(url: str) -> Any:
    """An autocommit ``psycopg`` connection to ``url`` (the caller closes it);
    :func:`backend_unavailable` when the server does not answer. Skips without the
    ``psycopg`` package (a caller that must fail instead imports it first)."""
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        backend_unavailable(f"PostgreSQL not reachable at {url}: {exc}")


def mysql_admin_or_unavailable(url: str) -> Any:
    """An autocommit PyMySQL connection to the MariaDB/MySQL server of a ``mysql://`` store
    URL (the caller closes it); :func:`backend_unavailable` when the server does not answer.
    Skips without the ``pymysql`` package."""
    pymysql = pytest.importorskip("pymysql")
    from idempotence.stores._mysql import MySQLStore

    options = MySQLStore.parse_url(url)["connect"]
    try:
        return pymysql.connect(**options, autocommit=True, connect_timeout=3)
    except pymysql.OperationalError as exc:
        backend_unavailable(f"MariaDB/MySQL not reachable at {url}: {exc}")
