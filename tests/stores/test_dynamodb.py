from __future__ import annotations

import asyncio
import gc
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from idempotence import StoreError
from idempotence.stores import store_from_url
from idempotence.stores._dynamodb import (
    CLOUDFORMATION_TEMPLATE,
    MAX_ITEM_BYTES,
    DynamoDBStore,
    ResultTooLargeError,
)
from idempotence.testing import LEASE, TTL, ManualClock, StoreContract, check_record
from tests import moto_server

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture

pytest.importorskip("boto3")
pytest.importorskip("aiobotocore")

REGION = "us-east-1"


def _table() -> str:
    return f"idem-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def dynamodb_table(dynamodb_endpoint: str) -> str:
    table = _table()
    store = DynamoDBStore(table, region=REGION, endpoint_url=dynamodb_endpoint)
    store.create_table()
    store.close()
    return table


@pytest.fixture(scope="session")
def sort_key_table(dynamodb_endpoint: str) -> str:
    table = _table()
    store = DynamoDBStore(
        table, region=REGION, endpoint_url=dynamodb_endpoint, key_attr="pk", sort_key_attr="sk"
    )
    store.create_table()
    store.close()
    return table


@pytest.fixture
def plain_store(dynamodb_endpoint: str, dynamodb_table: str) -> Iterator[DynamoDBStore]:
    store = DynamoDBStore(dynamodb_table, region=REGION, endpoint_url=dynamodb_endpoint)
    yield store
    store.close()


class TestDynamoDBStore(StoreContract):
    @pytest.fixture
    def store(
        self, clock: ManualClock, dynamodb_endpoint: str, dynamodb_table: str
    ) -> Iterator[DynamoDBStore]:
        store = DynamoDBStore(
            dynamodb_table, region=REGION, endpoint_url=dynamodb_endpoint, clock=clock
        )
        yield store
        store.close()

    @pytest.fixture
    def store_url(self, dynamodb_endpoint: str, dynamodb_table: str) -> str:
        # Spawned processes inherit the fake credentials dynamodb_endpoint put in os.environ.
        return (
            f"dynamodb://{dynamodb_table}?region={REGION}"
            f"&endpoint_url={quote(dynamodb_endpoint, safe='')}"
        )


class TestDynamoDBStoreSortKey(StoreContract):
    """The single-table layout: partition key ``pk`` = the key, sort key ``sk`` = constant."""

    test_concurrent_claims_processes = None  # type: ignore[assignment]

    @pytest.fixture
    def store(
        self, clock: ManualClock, dynamodb_endpoint: str, sort_key_table: str
    ) -> Iterator[DynamoDBStore]:
        store = DynamoDBStore(
            sort_key_table,
            region=REGION,
            endpoint_url=dynamodb_endpoint,
            key_attr="pk",
            sort_key_attr="sk",
            clock=clock,
        )
        yield store
        store.close()


# -- round trips ----------------------------------------------------------------------------
class _SendCounter:
    def __init__(self) -> None:
        self.operations: list[str] = []

    def __call__(self, request: Any, **kwargs: Any) -> None:
        self.operations.append(request.headers["X-Amz-Target"].decode().split(".")[-1])

    def take(self) -> list[str]:
        taken, self.operations = self.operations, []
        return taken


def _check_round_trips(run: Any, store: DynamoDBStore, counter: _SendCounter) -> None:
    key = f"rt-{uuid.uuid4().hex}"
    claim = run(store.aclaim if run.is_async else store.claim, key, "fp", lease=LEASE, ttl=TTL)
    assert claim.acquired
    assert counter.take() == ["UpdateItem"]
    fence = claim.record.fence
    assert run(store.arenew if run.is_async else store.renew, key, fence, lease=LEASE)
    assert counter.take() == ["UpdateItem"]
    assert run(store.arelease if run.is_async else store.release, key, fence)
    assert counter.take() == ["UpdateItem"]
    fence = run(store.aclaim if run.is_async else store.claim, key, "fp", lease=LEASE, ttl=TTL)
    fence = fence.record.fence
    counter.take()
    assert run(store.acomplete if run.is_async else store.complete, key, fence, b"r", ttl=TTL)
    assert counter.take() == ["UpdateItem"]
    record = run(store.aget if run.is_async else store.get, key)
    assert counter.take() == ["GetItem"]
    again = run(store.aclaim if run.is_async else store.claim, key, "fp", lease=LEASE, ttl=TTL)
    assert counter.take() == ["UpdateItem"]  # the existing record comes back with the failure
    assert not again.acquired
    assert again.record == record
    assert again.record.result == b"r"
    assert run(store.adelete if run.is_async else store.delete, key)
    assert counter.take() == ["DeleteItem"]


def test_round_trips_sync(plain_store: DynamoDBStore) -> None:
    counter = _SendCounter()
    plain_store._sync_client().meta.events.register("before-send.dynamodb", counter)

    def run(method: Any, *args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    run.is_async = False  # type: ignore[attr-defined]
    _check_round_trips(run, plain_store, counter)


def test_round_trips_async(plain_store: DynamoDBStore) -> None:
    counter = _SendCounter()

    async def main() -> None:
        (await plain_store._async_client()).meta.events.register("before-send.dynamodb", counter)
        loop = asyncio.get_running_loop()

        def run(method: Any, *args: Any, **kwargs: Any) -> Any:
            # A worker thread drives this loop's coroutines so the check stays written once.
            return asyncio.run_coroutine_threadsafe(method(*args, **kwargs), loop).result(10)

        run.is_async = True  # type: ignore[attr-defined]
        await asyncio.to_thread(_check_round_trips, run, plain_store, counter)
        await plain_store.aclose()

    asyncio.run(main())


def test_retried_claim_recognises_its_own_success(plain_store: DynamoDBStore) -> None:
    """A claim whose response is lost is retried by botocore; the retry fails the condition
    but the returned item carries our claim id, so the claim is still ours."""
    from botocore.exceptions import ReadTimeoutError

    client = plain_store._sync_client()
    sent: list[str] = []

    def lose_first_response(request: Any, **kwargs: Any) -> Any:
        sent.append("UpdateItem")
        if len(sent) == 1:
            client._endpoint.http_session.send(request)  # DynamoDB applies it...
            raise ReadTimeoutError(endpoint_url=request.url)  # ...the client never hears
        return None

    client.meta.events.register("before-send.dynamodb.UpdateItem", lose_first_response)
    key = f"retry-{uuid.uuid4().hex}"
    claim = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL)
    assert len(sent) == 2
    assert claim.acquired
    assert claim.record.fence == int(claim.now * 1000)  # created once, not re-taken by the retry
    client.meta.events.unregister("before-send.dynamodb.UpdateItem", lose_first_response)
    assert not plain_store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired


def test_retried_complete_recognises_its_own_success(plain_store: DynamoDBStore) -> None:
    """A completion whose response is lost is retried by botocore; the retry fails the
    condition (the record is completed already), but the returned item is our own write -
    same fence, same result - so the completion stands (it is not a lost lease)."""
    from botocore.exceptions import ReadTimeoutError

    key = f"retry-complete-{uuid.uuid4().hex}"
    fence = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
    client = plain_store._sync_client()
    sent: list[str] = []

    def lose_first_response(request: Any, **kwargs: Any) -> Any:
        sent.append("UpdateItem")
        if len(sent) == 1:
            client._endpoint.http_session.send(request)  # DynamoDB applies it...
            raise ReadTimeoutError(endpoint_url=request.url)  # ...the client never hears
        return None

    client.meta.events.register("before-send.dynamodb.UpdateItem", lose_first_response)
    try:
        assert plain_store.complete(key, fence, b"result", ttl=TTL)
    finally:
        client.meta.events.unregister("before-send.dynamodb.UpdateItem", lose_first_response)
    assert len(sent) == 2
    assert not plain_store.complete(key, fence, b"another result", ttl=TTL)  # never overwritten
    assert not plain_store.complete(key, fence + 1, b"result", ttl=TTL)  # nor by another fence
    record = plain_store.get(key)
    assert record is not None
    assert record.result == b"result"


# -- item layout ----------------------------------------------------------------------------
def _raw_item(store: DynamoDBStore, key: str) -> dict[str, Any]:
    response = store._sync_client().get_item(
        TableName=store.table, Key={"id": {"S": key}}, ConsistentRead=True
    )
    return response["Item"]  # type: ignore[no-any-return]


def test_release_keeps_fence_and_physical_ttl(plain_store: DynamoDBStore) -> None:
    key = f"rel-{uuid.uuid4().hex}"
    fence = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
    before = _raw_item(plain_store, key)
    assert int(before["expiration"]["N"]) >= float(before["expires_at"]["N"])
    assert plain_store.release(key, fence)
    after = _raw_item(plain_store, key)
    assert after["expiration"] == before["expiration"]
    assert after["fence"] == before["fence"]
    assert plain_store.get(key) is None


def test_physical_ttl_follows_renewals(plain_store: DynamoDBStore) -> None:
    # A lease longer than retention, renewed: the record stays readable while the lease is
    # live, and `expiration` (physical deletion) stays past it and never shrinks.
    clock = ManualClock(time.time())
    store = DynamoDBStore(
        plain_store.table, region=REGION, endpoint_url=plain_store.endpoint_url, clock=clock
    )
    key = f"renew-{uuid.uuid4().hex}"
    fence = store.claim(key, "fp", lease=100, ttl=10).record.fence
    expiration = int(_raw_item(store, key)["expiration"]["N"])
    for _ in range(5):
        clock.advance(90)
        assert store.renew(key, fence, lease=100)
        item = _raw_item(store, key)
        assert int(item["expiration"]["N"]) >= max(expiration, clock() + 100)
        expiration = int(item["expiration"]["N"])
        record = check_record(store.get(key))
        assert record.expires_at == pytest.approx(clock() + 100)
    store.close()


# -- result size ----------------------------------------------------------------------------
def test_oversize_result_raises_and_writes_nothing(plain_store: DynamoDBStore) -> None:
    key = f"big-{uuid.uuid4().hex}"
    fence = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
    incompressible = os.urandom(MAX_ITEM_BYTES)
    with pytest.raises(ResultTooLargeError, match=r"400 KB.*S3") as info:
        plain_store.complete(key, fence, incompressible, ttl=TTL)
    assert info.value.key == key
    # Nothing was written: the caller still owns the key and can complete it otherwise.
    assert check_record(plain_store.get(key)).result is None
    assert plain_store.complete(key, fence, b"result not stored", ttl=TTL)


async def test_oversize_result_raises_async(plain_store: DynamoDBStore) -> None:
    key = f"abig-{uuid.uuid4().hex}"
    fence = (await plain_store.aclaim(key, "fp", lease=LEASE, ttl=TTL)).record.fence
    with pytest.raises(ResultTooLargeError):
        await plain_store.acomplete(key, fence, os.urandom(MAX_ITEM_BYTES), ttl=TTL)
    await plain_store.aclose()


def test_compressible_large_result_fits(plain_store: DynamoDBStore) -> None:
    key = f"zip-{uuid.uuid4().hex}"
    payload = b'{"id": 12345, "status": "shipped", "items": []}\n' * 60_000  # ~2.9 MB
    assert MAX_ITEM_BYTES < len(payload) <= plain_store.max_result_bytes
    fence = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
    assert plain_store.complete(key, fence, payload, ttl=TTL)
    assert _raw_item(plain_store, key)["result_encoding"] == {"S": "zlib"}
    assert check_record(plain_store.get(key)).result == payload
    again = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL)
    assert again.record.result == payload


def test_small_results_are_stored_raw(plain_store: DynamoDBStore) -> None:
    key = f"raw-{uuid.uuid4().hex}"
    fence = plain_store.claim(key, "fp", lease=LEASE, ttl=TTL).record.fence
    assert plain_store.complete(key, fence, b"small", ttl=TTL)
    item = _raw_item(plain_store, key)
    assert "result_encoding" not in item
    assert item["result"] == {"B": b"small"}


def test_dynamodb_size_rejection_becomes_a_clear_error(plain_store: DynamoDBStore) -> None:
    # A huge fingerprint defeats the size estimate; DynamoDB's own refusal is translated.
    key = f"val-{uuid.uuid4().hex}"
    fence = plain_store.claim(key, "f" * 250_000, lease=LEASE, ttl=TTL).record.fence
    with pytest.raises(ResultTooLargeError, match="400 KB item"):
        plain_store.complete(key, fence, os.urandom(200_000), ttl=TTL)


# -- failures -------------------------------------------------------------------------------
def _closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.usefixtures("dynamodb_endpoint")  # fake credentials
def test_endpoint_down_fails_fast_sync() -> None:
    store = DynamoDBStore("some-table", region=REGION, endpoint_url=_closed_port())
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"DynamoDBStore\.claim failed"):
        store.claim("k", "fp", lease=LEASE, ttl=TTL)
    assert time.monotonic() - start < 5
    store.close()


@pytest.mark.usefixtures("dynamodb_endpoint")
async def test_endpoint_down_fails_fast_async() -> None:
    store = DynamoDBStore("some-table", region=REGION, endpoint_url=_closed_port())
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"DynamoDBStore\.aclaim failed"):
        await store.aclaim("k", "fp", lease=LEASE, ttl=TTL)
    assert time.monotonic() - start < 5
    await store.aclose()


def test_missing_table_names_the_fix(dynamodb_endpoint: str) -> None:
    store = DynamoDBStore("no-such-table", region=REGION, endpoint_url=dynamodb_endpoint)
    with pytest.raises(StoreError, match="create_table"):
        store.get("k")
    store.close()


# -- async across event loops ---------------------------------------------------------------
def test_async_across_separate_asyncio_runs(plain_store: DynamoDBStore) -> None:
    key = f"loops-{uuid.uuid4().hex}"

    async def first() -> int:  # like a Lambda invocation: no aclose
        claim = await plain_store.aclaim(key, "fp", lease=LEASE, ttl=TTL)
        assert claim.acquired
        return claim.record.fence

    async def second(fence: int) -> None:
        assert await plain_store.acomplete(key, fence, b"done", ttl=TTL)
        record = await plain_store.aget(key)
        assert record is not None
        assert record.result == b"done"

    fence = asyncio.run(first())
    asyncio.run(second(fence))
    assert asyncio.run(plain_store.aget(key)) is not None  # a third loop
    gc.collect()  # an unclosed aiohttp session would warn here (warnings are errors)
    assert len(plain_store._async_clients) <= 1  # closed loops are pruned


def test_given_client_serves_sync_and_async(plain_store: DynamoDBStore) -> None:
    client = plain_store._sync_client()
    store = DynamoDBStore(plain_store.table, client=client)
    key = f"given-{uuid.uuid4().hex}"
    assert store.claim(key, "fp", lease=LEASE, ttl=TTL).acquired

    async def main() -> None:
        assert not (await store.aclaim(key, "fp", lease=LEASE, ttl=TTL)).acquired
        await store.aclose()

    asyncio.run(main())
    assert store.get(key) is not None  # the given client was not closed


# -- table ----------------------------------------------------------------------------------
def test_create_table_is_idempotent_and_enables_ttl(dynamodb_endpoint: str) -> None:
    store = DynamoDBStore(_table(), region=REGION, endpoint_url=dynamodb_endpoint)
    assert store.create_table()
    assert not store.create_table()
    client = store._sync_client()
    ttl = client.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expiration")
    table = client.describe_table(TableName=store.table)["Table"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert store.claim("k", "fp", lease=LEASE, ttl=TTL).acquired
    mismatched = DynamoDBStore(
        store.table, region=REGION, endpoint_url=dynamodb_endpoint, key_attr="pk"
    )
    with pytest.raises(StoreError, match="key schema"):
        mismatched.create_table()
    store.close()
    mismatched.close()


def test_acreate_table(dynamodb_endpoint: str) -> None:
    store = DynamoDBStore(
        _table(), region=REGION, endpoint_url=dynamodb_endpoint, key_attr="pk", sort_key_attr="sk"
    )

    async def main() -> tuple[bool, bool]:
        created = await store.acreate_table()
        again = await store.acreate_table()
        await store.aclose()
        return created, again

    assert asyncio.run(main()) == (True, False)
    ttl = store._sync_client().describe_time_to_live(TableName=store.table)
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"
    store.close()


def test_cloudformation_template_matches_the_store() -> None:
    for fragment in ("AWS::DynamoDB::Table", "TimeToLiveSpecification", "AttributeName: id"):
        assert fragment in CLOUDFORMATION_TEMPLATE
    assert "AttributeName: expiration" in CLOUDFORMATION_TEMPLATE


# -- construction ---------------------------------------------------------------------------
def test_url_forms() -> None:
    store = store_from_url(
        "dynamodb://my.table-1?region=eu-west-1&endpoint_url=http%3A%2F%2Flocalhost%3A8000"
        "&key_attr=PK&sort_key_attr=SK&sort_key_value=IDEMPOTENCY"
    )
    assert isinstance(store, DynamoDBStore)
    assert (store.table, store.region, store.endpoint_url) == (
        "my.table-1",
        "eu-west-1",
        "http://localhost:8000",
    )
    assert (store.key_attr, store.sort_key_attr, store.sort_key_value) == (
        "PK",
        "SK",
        "IDEMPOTENCY",
    )
    with pytest.raises(ValueError, match="unknown option"):
        store_from_url("dynamodb://tbl?regoin=x")
    with pytest.raises(ValueError, match="table name"):
        store_from_url("dynamodb://")
    with pytest.raises(ValueError, match="clashes"):
        DynamoDBStore("tbl", key_attr="status")


def test_boto_config_is_merged_over_fail_fast_defaults() -> None:
    from botocore.config import Config

    store = DynamoDBStore("tbl", boto_config=Config(read_timeout=30))
    config: Any = store._config()
    assert (config.connect_timeout, config.read_timeout) == (2, 30)
    assert config.retries == {"total_max_attempts": 2, "mode": "standard"}  # 2 attempts in all
    aio_config = store._config(aio=True)
    assert type(aio_config).__name__ == "AioConfig"
    assert aio_config.read_timeout == 30


def test_importing_the_module_does_not_import_boto() -> None:
    code = (
        "import sys, idempotence.stores._dynamodb as m; "
        "assert not {'boto3', 'botocore', 'aiobotocore'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
