"""The ``Maintainable`` capability (scan / count / purge / stats) on every store, the
"do not create" read mode, and the opt-in sweep of expired records."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import Status, StoreError
from idempotence.stores import MemoryStore, SQLiteStore, Store
from idempotence.stores.capabilities import Maintainable, namespace_of
from idempotence.testing import ManualClock
from tests import moto_server
from tests.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    mysql_admin_or_unavailable,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
)

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture

BACKENDS = ["memory", "sqlite", "redis", "postgres", "mysql", "dynamodb"]

#: A store under test and a counter of its round trips (requests to the backend).
Made = tuple[Any, Callable[[], int]]


def _sqlite(tmp_path: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Made:
    store = SQLiteStore(tmp_path / "m.db", clock=clock)
    statements: list[str] = []
    with store.sql_connection() as conn:
        conn.set_trace_callback(statements.append)
    return store, lambda: len(statements)


def _redis(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Made:
    redis = pytest.importorskip("redis")
    from idempotence.stores import RedisStore

    redis_client_or_unavailable(REDIS_URL).close()
    store = RedisStore(REDIS_URL, prefix=f"maint-{uuid.uuid4().hex[:8]}:", clock=clock)
    calls = [0]
    command, pipeline = redis.Redis.execute_command, redis.client.Pipeline.execute

    def counted_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1  # a command sent on its own (a pipeline's are queued, not sent)
        return command(self, *args, **kwargs)

    def counted_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1  # one round trip for the whole pipeline
        return pipeline(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "execute_command", counted_command)
    monkeypatch.setattr(redis.client.Pipeline, "execute", counted_pipeline)
    return store, lambda: calls[0]


def _postgres(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Made:
    psycopg = pytest.importorskip("psycopg")
    from idempotence.stores import PostgresStore

    postgres_admin_or_unavailable(POSTGRES_URL).close()
    store = PostgresStore(POSTGRES_URL, table=f"maint_{uuid.uuid4().hex[:10]}", clock=clock)
    store.create_table()
    calls = [0]
    original = psycopg.Connection.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", counted)
    return store, lambda: calls[0]


def _mysql(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Made:
    pymysql = pytest.importorskip("pymysql")
    from idempotence.stores import MySQLStore

    mysql_admin_or_unavailable(MYSQL_URL).close()
    store = MySQLStore(MYSQL_URL, table=f"maint_{uuid.uuid4().hex[:10]}", clock=clock)
    store.create_table()
    calls = [0]
    original = pymysql.cursors.Cursor.execute

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pymysql.cursors.Cursor, "execute", counted)
    return store, lambda: calls[0]


def _dynamodb(endpoint: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> Made:
    from idempotence.stores import DynamoDBStore

    store = DynamoDBStore(
        f"maint-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=endpoint, clock=clock
    )
    store.create_table()
    calls = [0]
    client = store.call.__func__  # type: ignore[attr-defined]

    def counted(self: Any, method: str, request: Any) -> Any:
        calls[0] += 1
        return client(self, method, request)

    monkeypatch.setattr(DynamoDBStore, "call", counted)
    return store, lambda: calls[0]


@pytest.fixture(params=BACKENDS)
def made(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Any, Callable[[], int], ManualClock]]:
    clock = ManualClock()
    name = request.param
    if name == "memory":
        memory = MemoryStore(clock=clock)
        result: Made = (memory, lambda: memory.round_trips)
    elif name == "sqlite":
        result = _sqlite(tmp_path, clock, monkeypatch)
    elif name == "redis":
        result = _redis(clock, monkeypatch)
    elif name == "postgres":
        result = _postgres(clock, monkeypatch)
    elif name == "mysql":
        result = _mysql(clock, monkeypatch)
    else:
        result = _dynamodb(request.getfixturevalue("dynamodb_endpoint"), clock, monkeypatch)
    store = result[0]
    yield store, result[1], clock
    monkeypatch.undo()
    try:
        store.purge(expired=False)
        if name == "postgres":
            with store.sql_connection() as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{store.table}"')
        if name == "mysql":
            with store.sql_connection() as conn, conn.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{store.table}`")
        if name == "dynamodb":
            store.call("delete_table", {"TableName": store.table})
    finally:
        store.close()


def _seed(store: Store, clock: ManualClock) -> None:
    """a#1 completed; a#2 in progress; b#1 in progress, released (expired); c#x#1 in
    namespace 'c#x'; a#3 created 100 s after the others."""
    for key in ("a#1", "a#2", "b#1", "c#x#1"):
        claim = store.claim(key, "fp", lease=30.0, ttl=3600.0)
        assert claim.acquired
        if key == "a#1":
            assert store.complete(key, claim.record.fence, b"\x01V1", ttl=3600.0)
        if key == "b#1":
            assert store.release(key, claim.record.fence)
    clock.advance(100)
    assert store.claim("a#3", "fp", lease=30.0, ttl=3600.0).acquired


def test_every_store_is_maintainable(made: Any) -> None:
    assert isinstance(made[0], Maintainable)


def test_scan_filters(made: Any) -> None:
    store, _calls, clock = made
    _seed(store, clock)

    def keys(**filters: Any) -> set[str]:
        return {r.key for r in store.scan(**filters)}

    assert keys() == {"a#1", "a#2", "b#1", "c#x#1", "a#3"}
    assert keys(namespace="a") == {"a#1", "a#2", "a#3"}
    assert keys(namespace="c#x") == {"c#x#1"}
    assert keys(namespace="c") == set()
    assert keys(status=Status.COMPLETED) == {"a#1"}
    assert keys(namespace="a", status=Status.IN_PROGRESS) == {"a#2", "a#3"}
    assert keys(older_than=50) == {"a#1", "a#2", "b#1", "c#x#1"}
    assert keys(older_than=500) == set()
    assert keys(expired=True) == {"b#1"}  # released: retention over, and 100 s > lease
    assert len(list(store.scan(limit=2, batch_size=1))) == 2
    assert len(list(store.scan(namespace="a", limit=10, batch_size=2))) == 3
    assert store.count() == 5
    assert store.count(namespace="a", status=Status.IN_PROGRESS) == 2
    assert store.count(expired=True) == 1


def test_stats(made: Any) -> None:
    store, _calls, clock = made
    _seed(store, clock)
    stats = store.stats()
    assert stats.total == 5
    assert stats.by_status == {"COMPLETED": 1, "IN_PROGRESS": 4}
    assert stats.by_namespace == {"a": 3, "b": 1, "c#x": 1}
    assert stats.expired == 1
    # a#2 and c#x#1 are the oldest live in-progress records (their leases lapsed, but
    # they are still retained); the clock started at 1_700_000_000.
    assert stats.oldest_in_progress == pytest.approx(1_700_000_000.0)
    assert stats.oldest_in_progress_key in {"a#2", "c#x#1"}


def test_purge_expired_keeps_live_records_and_a_live_lease(made: Any) -> None:
    store, _calls, clock = made
    _seed(store, clock)
    # Retention over but lease live: kept (it still fences a paused owner).
    # (DynamoDB's release ends the lease too, so there the released record goes.)
    claim = store.claim("d#1", "fp", lease=1000.0, ttl=1000.0)
    assert store.release("d#1", claim.record.fence)
    (d,) = [r for r in store.scan() if r.key == "d#1"]
    lease_live = d.lease_expires_at > clock()
    assert lease_live or type(store).__name__ == "DynamoDBStore"
    assert store.count(expired=True) == (1 if lease_live else 2)
    # ``stats`` (the CLI's ``stats``) counts what ``purge`` (``purge --expired``) deletes.
    assert store.stats().expired == (1 if lease_live else 2)
    assert store.purge() == (1 if lease_live else 2)
    kept = {"a#1", "a#2", "c#x#1", "a#3"} | ({"d#1"} if lease_live else set())
    assert {r.key for r in store.scan()} == kept


def test_purge_namespace(made: Any) -> None:
    store, _calls, clock = made
    _seed(store, clock)
    progress: list[int] = []
    assert store.purge(namespace="a", expired=False, progress=progress.append) == 3
    assert sum(progress) == 3
    assert {r.key for r in store.scan()} == {"b#1", "c#x#1"}
    assert store.get("a#1") is None
    # The exact namespace only: 'c' does not take 'c#x'.
    assert store.purge(namespace="c", expired=False) == 0
    assert store.purge(namespace="c#x", expired=False) == 1


#: (records, page size) of test_purge_in_batches: three pages on every store (two full ones
#: and a short one that ends the loop), the default page of 1000 where seeding is cheap. Where
#: every record costs a request to a server (PostgreSQL, MariaDB, moto) a tenth of the
#: records in pages of 100 makes the same three pages. Redis keeps the default: its SCAN
#: walks the whole shared test database, whose other keys count against the trip bound.
PURGE_BATCHES = {"postgres": (250, 100), "mysql": (250, 100), "dynamodb": (250, 100)}


def test_purge_in_batches(made: Any, request: pytest.FixtureRequest) -> None:
    """Records purged in pages (three of them) with far fewer round trips than records."""
    store, calls, _clock = made
    n, batch_size = PURGE_BATCHES.get(request.node.callspec.params["made"], (2500, 1000))
    if type(store).__name__ == "DynamoDBStore":  # moto is slow: clone one item, 25 a request
        store.claim("bulk#0", "fp", lease=30.0, ttl=3600.0)
        item = store.call("get_item", {"TableName": store.table, "Key": store.item_key("bulk#0")})
        clones = [{**item["Item"], "id": {"S": f"bulk#{i}"}} for i in range(1, n)]
        for start in range(0, len(clones), 25):
            puts = [{"PutRequest": {"Item": c}} for c in clones[start : start + 25]]
            store.call("batch_write_item", {"RequestItems": {store.table: puts}})
    else:
        for i in range(n):
            store.claim(f"bulk#{i}", "fp", lease=30.0, ttl=3600.0)
    store.claim("keep#1", "fp", lease=30.0, ttl=3600.0)
    before = calls()
    batches: list[int] = []
    purged = store.purge(
        namespace="bulk", expired=False, batch_size=batch_size, progress=batches.append
    )
    assert purged == n
    trips = calls() - before
    assert sum(batches) == n
    assert trips < n / 10, trips
    if not isinstance(store, MemoryStore):
        assert len(batches) > 1  # in batches: batch_size per statement / scan, 25 on DynamoDB
    assert [r.key for r in store.scan()] == ["keep#1"]


def test_sqlite_read_mode_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    store = SQLiteStore(path)
    store.auto_create = False
    for read in (lambda: store.get("k#1"), lambda: list(store.scan()), store.count):
        with pytest.raises(StoreError, match="does not exist"):
            read()
    assert not path.exists()
    # A file without the table: still nothing created.
    import sqlite3

    sqlite3.connect(path).close()
    with pytest.raises(StoreError, match="records table does not exist"):
        store.count()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    store.create_table()
    assert store.count() == 0
    store.close()


def test_postgres_maintenance_does_not_create_the_table() -> None:
    pytest.importorskip("psycopg")
    from idempotence.stores import PostgresStore

    admin = postgres_admin_or_unavailable(POSTGRES_URL)
    table = f"absent_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(POSTGRES_URL, table=table)
    store.auto_create = False
    try:
        with pytest.raises(StoreError, match="does not exist"):
            store.count()
        with pytest.raises(StoreError, match="does not exist"):
            store.purge()
        with pytest.raises(StoreError):
            store.get("k#1")
        found = admin.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        assert found == (None,)
    finally:
        store.close()
        admin.close()


def test_dynamodb_scan_of_a_missing_table_is_a_store_error(dynamodb_endpoint: str) -> None:
    from idempotence.stores import DynamoDBStore

    store = DynamoDBStore("absent-table", region="us-east-1", endpoint_url=dynamodb_endpoint)
    with pytest.raises(StoreError, match="not found"):
        list(store.scan())
    with pytest.raises(StoreError, match=r"not found|ResourceNotFound"):  # not created either
        store.call("describe_table", {"TableName": "absent-table"})


def test_scan_skips_items_that_are_not_records(dynamodb_endpoint: str) -> None:
    from idempotence.stores import DynamoDBStore

    store = DynamoDBStore(
        f"maint-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=dynamodb_endpoint
    )
    store.create_table()
    store.call("put_item", {"TableName": store.table, "Item": {"id": {"S": "state#x"}}})
    store.claim("a#1", "fp", lease=30.0, ttl=60.0)
    assert [r.key for r in store.scan()] == ["a#1"]
    assert store.purge(expired=False) == 1
    store.call("delete_table", {"TableName": store.table})


def test_mysql_maintenance_does_not_create_the_table() -> None:
    pytest.importorskip("pymysql")
    from idempotence.stores import MySQLStore

    admin = mysql_admin_or_unavailable(MYSQL_URL)
    table = f"absent_{uuid.uuid4().hex[:10]}"
    store = MySQLStore(MYSQL_URL, table=table, auto_create=False)
    try:
        with pytest.raises(StoreError, match="does not exist"):
            store.count()
        with pytest.raises(StoreError, match="does not exist"):
            list(store.scan())
        with admin.cursor() as cursor:
            cursor.execute("SHOW TABLES LIKE %s", (table,))
            assert cursor.fetchall() == ()
    finally:
        store.close()
        admin.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_sweep_removes_expired_records_on_claim(backend: str, tmp_path: Path) -> None:
    clock = ManualClock()
    if backend == "sqlite":
        store: Any = SQLiteStore(tmp_path / "s.db", clock=clock)
    elif backend == "mysql":
        pytest.importorskip("pymysql")
        from idempotence.stores import MySQLStore

        mysql_admin_or_unavailable(MYSQL_URL).close()
        store = MySQLStore(MYSQL_URL, table=f"sweep_{uuid.uuid4().hex[:10]}", clock=clock)
    else:
        pytest.importorskip("psycopg")
        from idempotence.stores import PostgresStore

        postgres_admin_or_unavailable(POSTGRES_URL).close()
        store = PostgresStore(POSTGRES_URL, table=f"sweep_{uuid.uuid4().hex[:10]}", clock=clock)
    try:
        sweeper = store.start_sweep(3600)
        for i in range(5):
            store.claim(f"old#{i}", "fp", lease=1.0, ttl=10.0)
        assert sweeper.runs == 0  # not due yet
        clock.advance(3600)
        thread = sweeper.maybe()
        assert thread is not None
        thread.join(10)
        assert sweeper.runs == 1
        assert sweeper.deleted == 5
        assert store.count() == 0
        # Not due again until another interval passed; a claim triggers the next one.
        assert sweeper.maybe() is None
        store.claim("old#x", "fp", lease=1.0, ttl=1.0)
        clock.advance(3601)
        store.claim("new#1", "fp", lease=30.0, ttl=60.0)
        deadline = time.monotonic() + 10
        while sweeper.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sweeper.runs == 2
        assert [r.key for r in store.scan()] == ["new#1"]
    finally:
        if backend == "postgres":
            with store.sql_connection() as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{store.table}"')
        if backend == "mysql":
            with store.sql_connection() as conn, conn.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{store.table}`")
        store.close()


def test_sweep_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        SQLiteStore(tmp_path / "x.db").start_sweep(0)


def test_namespace_of() -> None:
    assert namespace_of("orders.charge#abc") == "orders.charge"
    assert namespace_of("a#b#c") == "a#b"
    assert namespace_of("plain") == "plain"


def test_namespace_filters_are_literal(made: Any) -> None:
    """Glob (Redis MATCH) and LIKE characters in a namespace match only themselves."""
    store, _calls, _clock = made
    for key in ("a*#1", "ab#1", "a%#1", "a_#1", "a?#1", "[a]#1", "a\\#1"):
        assert store.claim(key, "fp", lease=30.0, ttl=60.0).acquired
    for namespace in ("a*", "a%", "a_", "a?", "[a]", "a\\"):
        assert [r.key for r in store.scan(namespace=namespace)] == [f"{namespace}#1"]
        assert store.count(namespace=namespace) == 1
    assert store.purge(namespace="a*", expired=False) == 1
    assert store.get("ab#1") is not None


# -- sweep_every: the sweep as a store URL / constructor option ------------------------------
def _sweep_url(backend: str, tmp_path: Path, table: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/sweep.db?table={table}"
    if backend == "mysql":
        pytest.importorskip("pymysql")
        mysql_admin_or_unavailable(MYSQL_URL).close()
        return f"{MYSQL_URL}?table={table}"
    pytest.importorskip("psycopg")
    postgres_admin_or_unavailable(POSTGRES_URL).close()
    return f"{POSTGRES_URL}?table={table}"


def _drop_table(backend: str, store: Any) -> None:
    if backend == "postgres":
        with store.sql_connection() as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{store.table}"')
    if backend == "mysql":
        with store.sql_connection() as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS `{store.table}`")


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_sweep_every_in_the_store_url_sweeps_expired_records(backend: str, tmp_path: Path) -> None:
    from idempotence.stores import store_from_url
    from idempotence.stores._registry import validate_store_url

    url = _sweep_url(backend, tmp_path, f"sweep_{uuid.uuid4().hex[:10]}") + "&sweep_every=0.5"
    validate_store_url(url)
    store: Any = store_from_url(url)
    try:
        for i in range(3):
            store.claim(f"old#{i}", "fp", lease=0.1, ttl=0.2)
        assert store.count() == 3
        time.sleep(0.7)  # the records expired and a sweep is due
        store.claim("new#1", "fp", lease=30.0, ttl=60.0)  # starts the sweep
        deadline = time.monotonic() + 10
        while store.count() > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [r.key for r in store.scan()] == ["new#1"]
    finally:
        _drop_table(backend, store)
        store.close()
    plain: Any = store_from_url(url.replace("&sweep_every=0.5", ""))
    try:
        assert plain._sweeper is None  # off unless asked for
    finally:
        plain.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_sweep_every_as_a_constructor_option(backend: str, tmp_path: Path) -> None:
    clock = ManualClock()
    table = f"sweep_{uuid.uuid4().hex[:10]}"
    url = _sweep_url(backend, tmp_path, table)
    store: Any
    if backend == "sqlite":
        store = SQLiteStore(tmp_path / "sweep.db", table=table, clock=clock, sweep_every=60)
    elif backend == "mysql":
        from idempotence.stores import MySQLStore

        store = MySQLStore(url, clock=clock, sweep_every=60)
    else:
        from idempotence.stores import PostgresStore

        store = PostgresStore(url, clock=clock, sweep_every=60)
    try:
        assert store._sweeper is not None
        assert store._sweeper.every == 60.0
        store.claim("old#1", "fp", lease=1.0, ttl=1.0)
        clock.advance(61)
        store.claim("new#1", "fp", lease=30.0, ttl=3600.0)
        deadline = time.monotonic() + 10
        while store._sweeper.runs < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store._sweeper.deleted == 1
        assert [r.key for r in store.scan()] == ["new#1"]
    finally:
        _drop_table(backend, store)
        store.close()


@pytest.mark.parametrize("scheme", ["sqlite", "postgres", "mysql"])
@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "soon", "", "1e999"])
def test_a_bad_sweep_every_is_refused_when_the_url_is_parsed(
    scheme: str, value: str, tmp_path: Path
) -> None:
    from idempotence.stores import store_from_url
    from idempotence.stores._registry import validate_store_url

    base = {
        "sqlite": f"sqlite:///{tmp_path}/never.db?table=t",
        "postgres": "postgresql://127.0.0.1:1/test?table=t",
        "mysql": "mysql://root@127.0.0.1:1/test?table=t",
    }[scheme]
    url = f"{base}&sweep_every={value}"
    with pytest.raises(ValueError, match="'sweep_every' must be a positive number") as info:
        validate_store_url(url)
    assert value not in str(info.value) or value in {"", "0"}  # the value is not echoed
    with pytest.raises(ValueError, match="sweep_every"):
        store_from_url(url)
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("value", [0, -1.0, float("inf"), float("nan"), True, "60"])
def test_a_bad_sweep_every_argument_is_refused(value: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sweep_every must be a positive, finite number"):
        SQLiteStore(tmp_path / "x.db", sweep_every=value)


def test_sweep_every_given_twice_differently_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="given both"):
        SQLiteStore(f"sqlite:///{tmp_path}/x.db?sweep_every=30", sweep_every=60)
    store = SQLiteStore(f"sqlite:///{tmp_path}/x.db?sweep_every=30", sweep_every=30)
    assert store._sweeper is not None
    assert store._sweeper.every == 30.0
    store.close()
