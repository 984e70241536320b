"""Store faults, on every networked store.

(a) Server down and back: a throwaway server of our own (Redis with an fsync'd
append-only file, a PostgreSQL cluster from ``initdb``, a moto server) is killed mid-run and
restarted. While it is down every call fails closed with ``StoreError`` and runs no body;
the records written before the crash are intact afterwards; calls succeed again.

(b) Network faults: a :class:`~tests.reliability.proxy.FaultProxy` in front of the shared
server refuses connections, stalls them (3 s, longer than the client timeout), or cuts
them mid-request / mid-response. Each fault yields ``StoreError`` within the store's
timeouts, runs no body when the claim failed, leaves every record readable, and the store
recovers when the proxy passes traffic again. A cut while ``complete`` is on the wire (the
body already ran) surfaces as ``StoreError`` with the result attached as ``.result``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from idempotence import AlreadyInProgressError, Idempotency, StoreError
from idempotence._record import Status
from idempotence.stores import Store
from tests.reliability import report
from tests.reliability.conftest import (
    MYSQL_URL,
    NETWORKED,
    POSTGRES_URL,
    REDIS_URL,
    REGION,
    MotoServer,
    PostgresServer,
    RedisServer,
    _mysql_table,
    _postgres_table,
    _redis_ready,
)
from tests.reliability.proxy import FaultProxy

LEASE = 1.5  # a claim whose reply was lost holds its key this long
DELAY = 3.0  # the stall of the "delay" fault: longer than every client timeout below
# Client timeouts of the stores under test (seconds): redis socket timeouts, PostgreSQL
# connect/pool/operation timeouts, DynamoDB connect/read timeouts with a single attempt.
CLIENT_TIMEOUT = 1.0
LIMIT = 2.5  # a fault must surface as StoreError within this long


@dataclass
class Counted:
    """An idempotent function that counts executions of its body per key."""

    idem: Idempotency
    runs: Counter[str] = field(default_factory=Counter)
    before_return: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        @self.idem(namespace=f"reliability.faults.{uuid.uuid4().hex[:8]}")
        def op(key: str) -> str:
            self.runs[key] += 1
            if self.before_return is not None:
                self.before_return(key)
            return f"value of {key}"

        self.op = op

    @property
    def store(self) -> Store:
        return self.idem.store

    def record(self, key: str) -> Any:
        return self.store.get(self.op.key_for(key))

    def fails_closed(self, key: str) -> float:
        """Call, expect StoreError with the body not run; return how long it took."""
        before = self.runs[key]
        began = time.monotonic()
        with pytest.raises(StoreError) as info:
            self.op(key)
        took = time.monotonic() - began
        assert info.value.result is None, "StoreError.result is set only after the body ran"
        assert self.runs[key] == before, "the body ran although the claim failed"
        return took


def _with_netloc(url: str, netloc: str, query: str) -> str:
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{netloc}" if user else netloc
    both = "&".join(q for q in (parts.query, query) if q)
    return urlunsplit(parts._replace(netloc=netloc, query=both))


# -- (a) server down and restarted ----------------------------------------------------------------
def _outage(
    name: str, counted: Counted, stop: Callable[[], None], start: Callable[[], None]
) -> None:
    op = counted.op
    assert op("before") == "value of before"
    kept = counted.record("before")
    assert kept is not None
    assert kept.status is Status.COMPLETED

    stop()
    took = [counted.fails_closed("during"), counted.fails_closed("before")]
    assert max(took) < LIMIT + 3, took

    began = time.monotonic()
    start()
    restart = time.monotonic() - began
    assert op("during") == "value of during"  # the first call after the restart succeeds
    assert op("before") == "value of before"  # replayed: the record survived
    assert counted.runs == Counter({"before": 1, "during": 1})
    assert counted.record("before") == kept
    counted.store.close()
    report.emit(
        f"server_restart[{name}]",
        store_error_seconds=f"{max(took):.2f}",
        restart_seconds=f"{restart:.1f}",
        executions=sum(counted.runs.values()),
    )


def test_redis_server_killed_and_restarted(redis_server: RedisServer) -> None:
    timeouts = f"socket_timeout={CLIENT_TIMEOUT}&socket_connect_timeout={CLIENT_TIMEOUT}"
    url = f"{redis_server.url}?{timeouts}"
    counted = Counted(Idempotency(url, lease=LEASE, ttl=600))
    _outage("redis", counted, redis_server.kill, redis_server.start)


def test_postgres_server_killed_and_restarted(postgres_server: PostgresServer) -> None:
    url = f"{postgres_server.url}?connect_timeout=1&pool_timeout=2"
    counted = Counted(Idempotency(url, lease=LEASE, ttl=600))
    _outage("postgres", counted, postgres_server.kill, postgres_server.start)


def test_dynamodb_server_stopped_and_restarted(moto: MotoServer) -> None:
    store = _dynamodb_store(moto.endpoint)
    counted = Counted(Idempotency(store, lease=LEASE, ttl=600))
    _outage("dynamodb", counted, moto.stop, moto.start)


def _dynamodb_store(endpoint: str) -> Any:
    from botocore.config import Config

    from idempotence.stores import DynamoDBStore

    table = f"rel-faults-{uuid.uuid4().hex[:8]}"
    DynamoDBStore(table, region=REGION, endpoint_url=endpoint).create_table()
    return DynamoDBStore(
        table,
        region=REGION,
        endpoint_url=endpoint,
        boto_config=Config(
            connect_timeout=CLIENT_TIMEOUT,
            read_timeout=CLIENT_TIMEOUT,
            retries={"total_max_attempts": 1, "mode": "standard"},
        ),
    )


# -- (b) network faults through a proxy ---------------------------------------------------------
@pytest.fixture(params=NETWORKED)
def faulty(request: pytest.FixtureRequest) -> Iterator[tuple[str, Counted, FaultProxy]]:
    """A store of kind ``request.param`` reaching the shared server through a proxy."""
    kind: str = request.param
    if kind == "redis":
        _redis_ready()
        parts = urlsplit(REDIS_URL)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
        url = _with_netloc(
            REDIS_URL,
            proxy.address,
            f"prefix=rel-faults-{uuid.uuid4().hex[:8]}:&socket_timeout={CLIENT_TIMEOUT}"
            f"&socket_connect_timeout={CLIENT_TIMEOUT}",
        )
        idem = Idempotency(url, lease=LEASE, ttl=600)
        cleanup: Callable[[], None] = lambda: None  # noqa: E731 - keys expire (ttl)
    elif kind == "postgres":
        tables = _postgres_table()
        table = tables.__enter__()
        parts = urlsplit(POSTGRES_URL)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        url = _with_netloc(
            POSTGRES_URL,
            proxy.address,
            f"table={table}&connect_timeout=1&pool_timeout=2&operation_timeout={CLIENT_TIMEOUT}",
        )
        idem = Idempotency(url, lease=LEASE, ttl=600)
        cleanup = lambda: tables.__exit__(None, None, None)  # noqa: E731
    elif kind == "mysql":
        tables = _mysql_table()
        table = tables.__enter__()
        parts = urlsplit(MYSQL_URL)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 3306)
        url = _with_netloc(
            MYSQL_URL,
            proxy.address,
            f"table={table}&connect_timeout=1&operation_timeout={CLIENT_TIMEOUT}",
        )
        idem = Idempotency(url, lease=LEASE, ttl=600)
        cleanup = lambda: tables.__exit__(None, None, None)  # noqa: E731
    else:
        endpoint = urlsplit(request.getfixturevalue("dynamodb_endpoint"))
        proxy = FaultProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
        idem = Idempotency(_dynamodb_store(f"http://{proxy.address}"), lease=LEASE, ttl=600)
        cleanup = lambda: None  # noqa: E731
    counted = Counted(idem)
    try:
        assert counted.op("warm") == "value of warm"  # a pooled, established connection
        yield kind, counted, proxy
    finally:
        proxy.set("pass")
        counted.store.close()
        proxy.close()
        cleanup()


def _readable(counted: Counted, *keys: str) -> dict[str, str]:
    """Every record reads back whole (or is absent); key -> status."""
    states = {}
    for key in keys:
        record = counted.record(key)
        if record is None:
            states[key] = "absent"
            continue
        assert record.status in (Status.IN_PROGRESS, Status.COMPLETED)
        assert record.fingerprint == counted.op.fingerprint_for(key)
        assert record.fence >= 1
        assert record.expires_at > record.lease_expires_at - 1
        if record.status is Status.COMPLETED:
            assert counted.op(key) == f"value of {key}"  # the stored result decodes
        states[key] = record.status.value
    return states


def _after_lease(counted: Counted, key: str) -> str:
    """Call ``key`` until its (possibly orphaned) claim's lease lapses; return the value."""
    deadline = time.monotonic() + LEASE + 5
    while True:
        try:
            return counted.op(key)
        except AlreadyInProgressError as exc:
            retry_after = exc.retry_after
        assert retry_after <= LEASE + 0.5
        assert time.monotonic() < deadline
        time.sleep(min(retry_after, 0.5) + 0.05)


def test_refused_connections_fail_closed_and_recover(
    faulty: tuple[str, Counted, FaultProxy],
) -> None:
    kind, counted, proxy = faulty
    proxy.set("refuse")  # also drops the pooled connection
    took = [counted.fails_closed("k"), counted.fails_closed("warm")]
    assert max(took) < LIMIT, took
    proxy.set("pass")
    assert counted.op("k") == "value of k"  # the first call after the fault succeeds
    assert counted.op("warm") == "value of warm"  # replay
    assert counted.runs == Counter({"warm": 1, "k": 1})
    assert _readable(counted, "k", "warm") == {"k": "COMPLETED", "warm": "COMPLETED"}
    report.emit(f"proxy_refuse[{kind}]", store_error_seconds=f"{max(took):.2f}")


def test_stalled_connections_time_out_and_recover(
    faulty: tuple[str, Counted, FaultProxy],
) -> None:
    kind, counted, proxy = faulty
    proxy.set("delay", delay=DELAY)
    took = counted.fails_closed("k")
    assert took < LIMIT, f"{kind}: a stalled store held the caller {took:.1f}s"
    proxy.set("pass")
    assert counted.op("fresh") == "value of fresh"
    # The timed-out request may still reach the server once the stall ends: then its claim
    # holds "k" until the lease lapses. Either way the body runs once and records read back.
    assert _after_lease(counted, "k") == "value of k"
    assert counted.runs == Counter({"warm": 1, "fresh": 1, "k": 1})
    _readable(counted, "k", "fresh", "warm")
    report.emit(f"proxy_delay[{kind}]", store_error_seconds=f"{took:.2f}")


def test_dynamodb_default_config_makes_two_attempts(dynamodb_endpoint: str) -> None:
    """botocore's ``max_attempts`` counts retries; the default config asks for 2 attempts in
    all (``total_max_attempts``), as the docstring promises, sync and async."""
    from idempotence.stores import DynamoDBStore

    endpoint = urlsplit(dynamodb_endpoint)
    proxy = FaultProxy(endpoint.hostname or "127.0.0.1", endpoint.port or 80)
    store = DynamoDBStore("rel-attempts", region=REGION, endpoint_url=f"http://{proxy.address}")
    try:
        proxy.set("refuse")  # every attempt is one refused connection
        with pytest.raises(StoreError):
            store.get("k")
        attempts = proxy.connections
        proxy.connections = 0

        async def aget() -> None:
            try:
                await store.aget("k")
            finally:
                await store.aclose()

        with pytest.raises(StoreError):
            asyncio.run(aget())
        async_attempts = proxy.connections
    finally:
        store.close()
        proxy.close()
    assert (attempts, async_attempts) == (2, 2)


def test_postgres_stalled_connect_times_out() -> None:
    """What does time out on PostgreSQL: opening a connection through a stalled network
    (``connect_timeout``)."""
    with _postgres_table() as table:
        parts = urlsplit(POSTGRES_URL)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        proxy.set("delay", delay=DELAY)
        url = _with_netloc(
            POSTGRES_URL, proxy.address, f"table={table}&connect_timeout=1&pool_timeout=2"
        )
        counted = Counted(Idempotency(url, lease=LEASE, ttl=600))
        try:
            took = counted.fails_closed("k")
            assert took < LIMIT + 0.5, took
            proxy.set("pass")
            assert counted.op("k") == "value of k"
        finally:
            counted.store.close()
            proxy.close()
    report.emit("proxy_delay_connect[postgres]", store_error_seconds=f"{took:.2f}")


def test_postgres_stalled_async_operation_times_out() -> None:
    """The async side of ``operation_timeout``: an event-loop timer cuts the stalled
    connection (no thread), ``StoreError`` comes within the timeout, the pool discards the
    connection and the store recovers."""
    from idempotence.stores import PostgresStore

    with _postgres_table() as table:
        parts = urlsplit(POSTGRES_URL)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        url = _with_netloc(POSTGRES_URL, proxy.address, "")
        store = PostgresStore(
            url, table=table, connect_timeout=1, pool_timeout=2, operation_timeout=CLIENT_TIMEOUT
        )

        async def main() -> float:
            try:
                assert (await store.aclaim("warm", "fp", lease=LEASE, ttl=600)).acquired
                proxy.set("delay", delay=DELAY)
                began = time.monotonic()
                with pytest.raises(StoreError, match="operation_timeout"):
                    await store.aclaim("k", "fp", lease=LEASE, ttl=600)
                took = time.monotonic() - began
                proxy.set("pass")
                assert (await store.aclaim("fresh", "fp", lease=LEASE, ttl=600)).acquired
                assert (await store.aget("warm")) is not None
                return took
            finally:
                await store.aclose()

        try:
            took = asyncio.run(main())
        finally:
            proxy.set("pass")
            store.close()
            proxy.close()
    assert took < LIMIT, took
    report.emit("proxy_delay_async[postgres]", store_error_seconds=f"{took:.2f}")


def test_cut_mid_request_fails_closed_and_recovers(
    faulty: tuple[str, Counted, FaultProxy],
) -> None:
    kind, counted, proxy = faulty
    proxy.set("cut_request", cut_after=10)
    took = counted.fails_closed("k")
    assert took < LIMIT, took
    proxy.set("pass")
    assert _readable(counted, "k") == {"k": "absent"}  # the truncated claim never ran
    assert counted.op("k") == "value of k"
    assert counted.runs == Counter({"warm": 1, "k": 1})
    report.emit(f"proxy_cut_request[{kind}]", store_error_seconds=f"{took:.2f}")


def test_cut_mid_response_fails_closed_and_recovers(
    faulty: tuple[str, Counted, FaultProxy],
) -> None:
    kind, counted, proxy = faulty
    proxy.set("cut_response", cut_after=5)
    took = counted.fails_closed("k")
    assert took < LIMIT, took
    proxy.set("pass")
    # The server ran the claim but its answer was lost: the key is held (readable, in
    # progress) until the lease lapses, then a retry runs the body, once.
    assert _readable(counted, "k") == {"k": "IN_PROGRESS"}
    with pytest.raises(AlreadyInProgressError):
        counted.op("k")
    assert _after_lease(counted, "k") == "value of k"
    assert counted.runs == Counter({"warm": 1, "k": 1})
    report.emit(f"proxy_cut_response[{kind}]", store_error_seconds=f"{took:.2f}")


@pytest.mark.parametrize("cut", ["cut_request", "cut_response"])
def test_cut_during_complete_reports_the_result(
    faulty: tuple[str, Counted, FaultProxy], cut: Any
) -> None:
    """The body ran; the connection is cut while ``complete`` travels: ``StoreError`` with
    the result attached. Cut on the way in, the record stays in progress (and a retry
    after the lease runs the body again: the documented "do not retry blindly"); cut on
    the way back, the server completed it and replays return the result."""
    kind, counted, proxy = faulty
    # 2 bytes: less than the shortest reply (Redis's ":1\r\n").
    counted.before_return = lambda key: proxy.set(cut, cut_after=10 if cut == "cut_request" else 2)
    with pytest.raises(StoreError) as info:
        counted.op("k")
    counted.before_return = None
    proxy.set("pass")
    assert info.value.result == "value of k"
    assert counted.runs["k"] == 1
    if cut == "cut_request":
        assert _readable(counted, "k") == {"k": "IN_PROGRESS"}
        assert _after_lease(counted, "k") == "value of k"
        assert counted.runs["k"] == 2  # the unsaved result's key ran again after the lease
    else:
        assert _readable(counted, "k") == {"k": "COMPLETED"}
        assert counted.op("k") == "value of k"
        assert counted.runs["k"] == 1
    report.emit(f"proxy_{cut}_during_complete[{kind}]", executions=counted.runs["k"])
