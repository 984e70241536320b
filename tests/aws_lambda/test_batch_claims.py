"""A Lambda batch in one round trip: ``process_batch`` / ``aprocess_batch`` claim every
record of a batch in one store request (``BatchClaims.claim_many``) and complete them in
one, on every store (memory, SQLite, Redis, Redis Cluster, PostgreSQL, MariaDB, DynamoDB
on moto), with each record's own outcome and the partial batch semantics kept."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.stores import MemoryStore, Store
from idempotence.stores.capabilities import BatchClaims
from tests import moto_server
from tests.aws_lambda.events import load, redeliver, sqs_message
from tests.conftest import MYSQL_URL, mysql_admin_or_unavailable
from tests.http.conftest import RUN, make_store, postgres_admin, redis_ok

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture
__all__ = ["dynamodb_endpoint", "postgres_admin", "redis_ok"]  # fixtures used by name

STORES = ["memory", "sqlite", "redis", "redis-cluster", "postgres", "mysql", "dynamodb"]
#: The store operations a batch may call, each one request (DynamoDB counted on the wire).
OPERATIONS = (
    "claim", "complete", "release", "renew", "get",
    "claim_many", "complete_many", "release_many",
)  # fmt: skip


INSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("inside", default=False)


class Requests:
    """Counts the requests a store sends: its operations (sync and async), or for DynamoDB
    the API calls its boto3 client makes (a batch operation may take more than one)."""

    def __init__(self, store: Store, kind: str) -> None:
        self.n = 0
        self.lock = threading.Lock()
        if kind == "dynamodb":
            client = store._sync_client()  # type: ignore[attr-defined]
            client.meta.events.register("before-call.dynamodb", self.hit)
            return
        for name in OPERATIONS:
            for attr in (name, "a" + name):
                method = getattr(store, attr, None)
                if method is not None:
                    setattr(store, attr, self.counting(method))

    def hit(self, **_: Any) -> None:
        with self.lock:
            self.n += 1

    def counting(self, method: Callable[..., Any]) -> Callable[..., Any]:
        """``method`` counting one request per call, not counting the calls it makes itself
        (an async twin running the sync method; ``claim`` as a batch of one)."""
        if asyncio.iscoroutinefunction(method):

            async def acounted(*args: Any, **kwargs: Any) -> Any:
                if INSIDE.get():
                    return await method(*args, **kwargs)
                self.hit()
                token = INSIDE.set(True)
                try:
                    return await method(*args, **kwargs)
                finally:
                    INSIDE.reset(token)

            return acounted

        def counted(*args: Any, **kwargs: Any) -> Any:
            if INSIDE.get():
                return method(*args, **kwargs)
            self.hit()
            token = INSIDE.set(True)
            try:
                return method(*args, **kwargs)
            finally:
                INSIDE.reset(token)

        return counted

    def take(self) -> int:
        with self.lock:
            n, self.n = self.n, 0
            return n


@pytest.fixture(params=STORES)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    cleanups: list[Callable[[], None]] = []
    if kind == "dynamodb":
        pytest.importorskip("boto3")
        from idempotence.stores import DynamoDBStore

        endpoint = request.getfixturevalue("dynamodb_endpoint")
        table = DynamoDBStore(
            f"idem-batch-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=endpoint
        )
        table.create_table()
        made = table
    elif kind == "mysql":
        admin = mysql_admin_or_unavailable(MYSQL_URL)
        from idempotence.stores import MySQLStore

        name = f"idem_batch_{RUN}_{uuid.uuid4().hex[:8]}"

        def drop() -> None:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{name}`")
            admin.close()

        cleanups.append(drop)
        made = MySQLStore(MYSQL_URL, table=name)
    elif kind == "redis-cluster":
        pytest.importorskip("redis")
        from idempotence.stores import RedisStore
        from tests.conftest import redis_cluster_url_or_unavailable

        url = redis_cluster_url_or_unavailable()
        made = RedisStore.from_url(url)
        made.prefix = f"idem-batch-{uuid.uuid4().hex[:8]}:"  # type: ignore[attr-defined]
    else:
        made = make_store(kind, request, tmp_path)
    yield made
    made.close()
    for cleanup in cleanups:
        cleanup()


def batch(*orders: str) -> dict[str, Any]:
    return {"Records": [sqs_message(order) for order in orders]}


def ids(event: dict[str, Any]) -> list[str]:
    return [r["messageId"] for r in event["Records"]]


def failures(response: dict[str, Any]) -> list[Any]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def order_of(record: dict[str, Any]) -> str:
    return str(json.loads(record["body"])["order_id"])


TEN = [f"ord-{i}" for i in range(10)]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_request_counts_for_a_batch_of_ten(store: Store, kind: str, mode: str) -> None:
    assert isinstance(store, BatchClaims)
    idem = Idempotency(store, lease=30)
    runs: Counter[str] = Counter()

    def handle(record: dict[str, Any]) -> str:
        runs[order_of(record)] += 1
        return "done"

    async def ahandle(record: dict[str, Any]) -> str:
        return handle(record)

    def process(event: dict[str, Any]) -> dict[str, Any]:
        if mode == "sync":
            return idem.process_batch(event, handle, namespace="batch.ten")
        return asyncio.run(idem.aprocess_batch(event, ahandle, namespace="batch.ten"))

    half = batch(*TEN[:5])
    event = {"Records": copy.deepcopy(half["Records"]) + batch(*TEN[5:])["Records"]}
    if kind != "dynamodb" or mode == "sync":
        requests = Requests(store, kind)
    else:  # aiobotocore's client: count the store's operations instead
        requests = Requests(store, "operations")
    requests.take()
    assert failures(process(half)) == []
    assert requests.take() <= 2  # fresh: one claim request, one completion request
    assert failures(process(event)) == []  # mixed: five replays, five to run
    assert requests.take() <= (3 if kind == "dynamodb" else 2)
    assert failures(process(redeliver(event))) == []  # fully redelivered: replays only
    assert requests.take() == 1
    assert runs == dict.fromkeys(TEN, 1)


def test_per_record_requests_stay_an_option(store: Store, kind: str) -> None:
    idem = Idempotency(store, lease=30)
    runs: list[str] = []
    requests = Requests(store, kind)
    event = batch(*TEN)
    requests.take()
    idem.process_batch(event, lambda r: runs.append(order_of(r)), namespace="b", batch_claims=False)
    assert requests.take() == 20  # a claim and a completion per record
    idem.process_batch(redeliver(event), runs.append, namespace="b", batch_claims=False)
    assert requests.take() == 10
    assert runs == TEN


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_each_record_keeps_its_own_outcome(store: Store, mode: str) -> None:
    idem = Idempotency(store, lease=30, key="powertools_json(body).order_id")
    runs: Counter[str] = Counter()
    inner: list[dict[str, Any]] = []
    done, reused = sqs_message("done"), sqs_message("reused", amount=1)
    busy, fresh, boom = sqs_message("busy"), sqs_message("fresh"), sqs_message("boom")
    other = {**copy.deepcopy(sqs_message("reused", amount=2)), "messageId": str(uuid.uuid4())}
    nested = {"Records": [done, busy, other, fresh, boom]}

    def handle(record: dict[str, Any]) -> str:
        order = order_of(record)
        runs[order] += 1
        if order == "boom":
            raise ValueError("declined")
        if order == "busy" and not inner:  # another invocation gets a batch meanwhile
            inner.append(run(nested))
        return f"charged {order}"

    async def ahandle(record: dict[str, Any]) -> str:
        order = order_of(record)
        runs[order] += 1
        if order == "boom":
            raise ValueError("declined")
        if order == "busy" and not inner:
            inner.append(await idem.aprocess_batch(nested, ahandle, namespace="batch.own"))
        return f"charged {order}"

    def run(event: dict[str, Any]) -> dict[str, Any]:
        if mode == "sync":
            return idem.process_batch(event, handle, namespace="batch.own")
        if inner or order_of(event["Records"][0]) != "busy":
            return asyncio.run(idem.aprocess_batch(event, ahandle, namespace="batch.own"))
        return asyncio.run(idem.aprocess_batch(event, ahandle, namespace="batch.own"))

    assert failures(run({"Records": [done, reused]})) == []
    assert failures(run({"Records": [busy]})) == []
    # replayed, in progress elsewhere, key reused with other content, run, raised
    assert failures(inner[0]) == [busy["messageId"], other["messageId"], boom["messageId"]]
    assert runs == {"done": 1, "reused": 1, "busy": 1, "fresh": 1, "boom": 1}
    # the record that raised was released: its redelivery runs it again, the rest replay
    again = run(redeliver(nested))
    assert failures(again) == [other["messageId"], boom["messageId"]]
    assert runs == {"done": 1, "reused": 1, "busy": 1, "fresh": 1, "boom": 2}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_fifo_batch_stops_at_the_first_failure(store: Store, mode: str) -> None:
    idem = Idempotency(store, lease=30)
    fifo = load("sqs_fifo")
    template = fifo["Records"][0]
    records = []
    for order in TEN:
        record = copy.deepcopy(template)
        record["messageId"] = str(uuid.uuid4())
        record["attributes"]["MessageDeduplicationId"] = uuid.uuid4().hex
        record["attributes"]["SequenceNumber"] = str(10**19 + len(records))
        record["body"] = json.dumps({"order_id": order})
        records.append(record)
    event = {"Records": records}
    runs: list[str] = []
    broken = {"ord-3"}

    def handle(record: dict[str, Any]) -> None:
        runs.append(order_of(record))
        if order_of(record) in broken:
            raise RuntimeError("declined")

    async def ahandle(record: dict[str, Any]) -> None:
        handle(record)

    def process(event: dict[str, Any]) -> dict[str, Any]:
        if mode == "sync":
            return idem.process_batch(event, handle, namespace="batch.fifo")
        return asyncio.run(idem.aprocess_batch(event, ahandle, namespace="batch.fifo"))

    assert failures(process(event)) == ids(event)[3:]
    assert runs == TEN[:4]  # nothing after the failure ran
    broken.clear()
    # the failed record and every later one were released: the redelivery runs them
    assert failures(process(redeliver(event))) == []
    assert runs == TEN[:4] + TEN[3:]


def test_two_overlapping_batches_in_parallel_run_each_record_once(store: Store) -> None:
    idem = Idempotency(store, lease=30)
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    orders = [f"ord-{i}" for i in range(15)]
    messages = {order: sqs_message(order) for order in orders}
    first = {"Records": [messages[o] for o in orders[:10]]}
    second = {"Records": [copy.deepcopy(messages[o]) for o in orders[5:]]}
    start = threading.Barrier(2)
    responses: list[dict[str, Any]] = []

    def handle(record: dict[str, Any]) -> None:
        with lock:
            runs[order_of(record)] += 1
        time.sleep(0.005)

    def worker(event: dict[str, Any]) -> None:
        start.wait()
        response = idem.process_batch(event, handle, namespace="batch.race")
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=worker, args=(e,)) for e in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # the records reported (in progress in the other batch) are delivered again
    failed = {f for response in responses for f in failures(response)}
    retry = {"Records": [m for m in messages.values() if m["messageId"] in failed]}
    if retry["Records"]:
        assert failures(idem.process_batch(redeliver(retry), handle, namespace="batch.race")) == []
    assert runs == dict.fromkeys(orders, 1)


def test_a_repeated_key_in_one_batch_replays_the_earlier_record(store: Store) -> None:
    idem = Idempotency(store, lease=30, key="powertools_json(body).order_id")
    runs: list[str] = []
    event = batch("ord-1", "ord-2", "ord-1")
    response = idem.process_batch(event, lambda r: runs.append(order_of(r)), namespace="b.dup")
    assert failures(response) == []
    assert runs == ["ord-1", "ord-2"]  # the third record replays the first's result


def test_a_failed_batch_request_fails_every_record_and_fail_open_runs_them() -> None:
    class Down(MemoryStore):
        def claim_many(self, items: Any) -> Any:
            raise ConnectionError("store unreachable")

    runs: list[str] = []
    event = batch("ord-1", "ord-2")
    closed = Idempotency(Down()).process_batch(event, runs.append, namespace="b.down")
    assert failures(closed) == ids(event)
    assert runs == []
    opened = Idempotency(Down(), fail_open=True)
    assert failures(opened.process_batch(event, runs.append, namespace="b.down")) == []
    assert len(runs) == 2


def test_a_result_over_dynamodbs_item_limit_completes_as_not_stored_in_a_batch(
    dynamodb_endpoint: str,
) -> None:
    pytest.importorskip("boto3")
    from idempotence.stores import DynamoDBStore

    store = DynamoDBStore(
        f"idem-batch-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=dynamodb_endpoint
    )
    store.create_table()
    idem = Idempotency(store, lease=30)
    runs: list[str] = []

    def handle(record: dict[str, Any]) -> str:
        runs.append(order_of(record))
        if order_of(record) == "big":  # ~670 KB of base64 that zlib cannot shrink enough
            return base64.b64encode(os.urandom(500_000)).decode()
        return "ok"

    event = batch("small", "big", "other")
    big = event["Records"][1]["messageId"]
    # the big result cannot be kept: the key completes as "not stored" (never re-run), the
    # record is reported; the others complete in the same transaction
    assert failures(idem.process_batch(event, handle, namespace="b.big")) == [big]
    assert failures(idem.process_batch(redeliver(event), handle, namespace="b.big")) == [big]
    assert runs == ["small", "big", "other"]
    store.close()
