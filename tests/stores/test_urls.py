"""Store URLs: one parser per store, shared by ``Store(url)``, ``Store.from_url``,
``store_from_url`` and ``Idempotency(url)``; checked without I/O; unknown options refused."""

from __future__ import annotations

import socket
import time
import uuid
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.stores import store_from_url
from idempotence.stores._dynamodb import DynamoDBStore
from idempotence.stores._postgres import PostgresStore
from idempotence.stores._redis import RedisStore
from idempotence.stores._sqlite import SQLiteStore
from tests.conftest import POSTGRES_URL, REDIS_URL


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _claim(store: Any, mode: str) -> None:
    import asyncio

    if mode == "sync":
        store.claim("k", "fp", lease=10, ttl=60)
    else:
        asyncio.run(store.aclaim("k", "fp", lease=10, ttl=60))


# -- 1. a store's own constructor reads its URL like store_from_url ------------------------
def test_postgres_constructor_honours_url_options() -> None:
    url = f"{POSTGRES_URL}?table=idem_ctor_x&pool_size=3&operation_timeout=none&sslmode=disable"
    for store in (PostgresStore(url), PostgresStore.from_url(url), store_from_url(url)):
        assert isinstance(store, PostgresStore)
        assert store.table == "idem_ctor_x"
        assert store.pool_size == 3
        assert store.operation_timeout is None
        assert store.url is not None
        assert "table" not in store.url
        assert "pool_size" not in store.url
        assert "sslmode=disable" in store.url  # libpq's own stays


def test_postgres_constructor_url_table_works_against_the_server() -> None:
    """Before: ``table=`` went to libpq, which refused it, and each call waited 5 s for
    PoolTimeout."""
    pytest.importorskip("psycopg")
    from tests.conftest import postgres_admin_or_unavailable

    admin = postgres_admin_or_unavailable(POSTGRES_URL)
    table = f"idem_url_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(f"{POSTGRES_URL}?table={table}")
    try:
        started = time.monotonic()
        claim = store.claim("k", "fp", lease=10, ttl=60)
        assert claim.acquired
        assert time.monotonic() - started < 3
        assert admin.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] == 1
    finally:
        store.close()
        admin.execute(f'DROP TABLE IF EXISTS "{table}"')
        admin.close()


def test_option_given_twice_differently_is_refused() -> None:
    with pytest.raises(ValueError, match="'table' is given both"):
        PostgresStore(f"{POSTGRES_URL}?table=a", table="b")
    assert PostgresStore(f"{POSTGRES_URL}?table=a", table="a").table == "a"
    assert PostgresStore(POSTGRES_URL, table="b").table == "b"
    with pytest.raises(ValueError, match="'prefix' is given both"):
        RedisStore(f"{REDIS_URL}?prefix=a:", prefix="b:")


def test_redis_constructor_honours_prefix() -> None:
    url = f"{REDIS_URL}?prefix=p1:&socket_timeout=2"
    for store in (RedisStore(url), RedisStore.from_url(url), store_from_url(url)):
        assert isinstance(store, RedisStore)
        assert store.prefix == "p1:"
        assert store.url is not None
        assert "prefix" not in store.url
        assert "socket_timeout=2" in store.url


def test_sqlite_constructor_accepts_its_url(tmp_path: Any) -> None:
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}?table=t1&timeout=2"
    for store in (SQLiteStore(url), SQLiteStore.from_url(url), store_from_url(url)):
        assert isinstance(store, SQLiteStore)
        assert (store.path, store.table, store.timeout) == (str(path), "t1", 2.0)


# -- 3. URLs are validated when Idempotency is built, without I/O ---------------------------
BAD_URLS = [
    ("nope://x", "unknown store URL scheme 'nope'"),
    ("memory://?table=x", "unknown option 'table'.*known options: \\(none\\)"),
    ("sqlite:///x.db?tabel=x", "option .tabel..*known options: sweep_every, table, timeout"),
    ("sqlite:///x.db?table=a-b", "invalid table name"),
    ("sqlite:///x.db?timeout=soon", "'timeout' must be a positive number"),
    ("sqlite://:memory:", "needs a file path"),
    (f"{POSTGRES_URL}?tabel=x", "unknown option 'tabel'.*auto_create.*table"),
    (f"{POSTGRES_URL}?table=x;drop", "invalid table name"),
    (f"{POSTGRES_URL}?pool_size=many", "'pool_size' must be a positive"),
    (f"{POSTGRES_URL}?auto_create=maybe", "'auto_create' must be true or false"),
    (f"{REDIS_URL}?prefx=a", "unknown option 'prefx'.*prefix"),
    ("dynamodb://my-table?regoin=x", "unknown option 'regoin'.*region"),
    ("dynamodb://ab", "invalid DynamoDB table name"),
    ("dynamodb://my-table?key_attr=fence", "clashes with a record field"),
]


@pytest.mark.parametrize(("url", "message"), BAD_URLS)
def test_bad_url_is_refused_by_idempotency_without_io(
    url: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validating a store URL must not open a connection")

    monkeypatch.setattr(socket, "create_connection", no_io)
    monkeypatch.setattr(socket, "getaddrinfo", no_io)
    with pytest.raises(ValueError, match=message):
        Idempotency(url)
    with pytest.raises(ValueError, match=message):
        store_from_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite:///x.db?table=t&timeout=3",
        f"{POSTGRES_URL}?table=s.t&pool_size=2&operation_timeout=none&sslmode=prefer",
        f"{REDIS_URL}?prefix=a:&socket_timeout=2&health_check_interval=10",
        "rediss://h:6380/0?ssl_cert_reqs=none",
        "dynamodb://my-table?region=eu-west-1&endpoint_url=http%3A%2F%2Flocalhost%3A8000",
        "dynamodb:///my-table?region=eu-west-1",
    ],
)
def test_good_url_is_accepted_without_io(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_io(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("validating a store URL must not open a connection")

    monkeypatch.setattr(socket, "create_connection", no_io)
    monkeypatch.setattr(socket, "getaddrinfo", no_io)
    Idempotency(url)


def test_unknown_option_message_does_not_echo_values() -> None:
    with pytest.raises(ValueError, match="unknown option 'secretopt'") as info:
        Idempotency(f"{POSTGRES_URL}?secretopt=s3cr3t-value")
    assert "s3cr3t-value" not in str(info.value)


@pytest.mark.parametrize("url", ["dynamodb://my-table", "dynamodb:///my-table"])
def test_dynamodb_url_both_forms_name_the_table(url: str) -> None:
    full = f"{url}?region=eu-west-1&key_attr=pk"
    for store in (store_from_url(full), DynamoDBStore.from_url(full), DynamoDBStore(full)):
        assert isinstance(store, DynamoDBStore)
        assert (store.table, store.region, store.key_attr) == ("my-table", "eu-west-1", "pk")


# -- 2. connection failures name their cause, fast ------------------------------------------
POSTGRES_FAILURES = [
    (lambda: f"postgresql://postgres@127.0.0.1:{_closed_port()}/test", "connection refused"),
    (lambda: "postgresql://postgres@nonexistent.invalid/test", "unknown host"),
    (
        lambda: POSTGRES_URL.rsplit("/", 1)[0] + f"/no_such_db_{uuid.uuid4().hex[:8]}",
        "the database does not exist",
    ),
    (
        lambda: POSTGRES_URL.replace("postgres@", f"no_such_role_{uuid.uuid4().hex[:8]}@", 1),
        "authentication failed: the user \\(role\\) does not exist",
    ),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("make_url", "cause"), POSTGRES_FAILURES)
def test_postgres_connection_failure_names_its_cause_fast(
    make_url: Any, cause: str, mode: str
) -> None:
    from idempotence import StoreError

    pytest.importorskip("psycopg")
    store = PostgresStore(make_url())
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"cannot connect to PostgreSQL: {cause}"):
        _claim(store, mode)
    assert time.monotonic() - started < 2.5, "must not wait for the 5 s PoolTimeout"
    store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("make_url", "cause"),
    [
        (lambda: f"redis://127.0.0.1:{_closed_port()}/0", "connection refused"),
        (lambda: "redis://nonexistent.invalid:6379/0", "unknown host"),
        (
            lambda: REDIS_URL.replace("://", f"://no_such_user_{uuid.uuid4().hex[:8]}:pw@", 1),
            "authentication failed",
        ),
    ],
)
def test_redis_connection_failure_names_its_cause_fast(
    make_url: Any, cause: str, mode: str
) -> None:
    from idempotence import StoreError

    pytest.importorskip("redis")
    store = RedisStore(make_url())
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"cannot connect to Redis: {cause}"):
        _claim(store, mode)
    assert time.monotonic() - started < 2.5
    store.close()


@pytest.mark.parametrize(
    ("make_url", "cause"),
    [
        (
            lambda: (
                f"dynamodb://tbl-x?region=us-east-1&endpoint_url=http://127.0.0.1:{_closed_port()}"
            ),
            "cause: ConnectionRefusedError",
        ),
        (
            lambda: (
                "dynamodb://tbl-x?region=us-east-1&endpoint_url=http://nonexistent.invalid:8000"
            ),
            "cause: gaierror: .*(not known|name resolution)",
        ),
    ],
)
def test_dynamodb_connection_failure_names_its_cause(
    make_url: Any, cause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's ``EndpointConnectionError`` says only "could not connect": the message
    adds the socket error behind it."""
    from idempotence import StoreError

    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    store = store_from_url(make_url())
    started = time.monotonic()
    with pytest.raises(StoreError, match=cause):
        store.claim("k", "fp", lease=10, ttl=60)
    assert time.monotonic() - started < 5  # 2 attempts, no 5 s read timeout
    store.close()
