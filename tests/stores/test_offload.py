"""LargeResultStore: compression and S3 offload of large results around every store
(memory, SQLite, Redis, PostgreSQL, MariaDB, DynamoDB; batches on Redis Cluster too),
against S3 and DynamoDB on moto's server."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import secrets
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import (
    CorruptRecordError,
    Idempotency,
    MissingDependencyError,
    ResultNotStoredError,
    ResultTooLargeError,
    StoreError,
)
from idempotence.stores import LargeResultStore, MemoryStore, Store, store_from_url
from idempotence.stores._registry import validate_store_url
from idempotence.testing import ManualClock, StoreContract
from tests import cfn_lint, moto_server
from tests.http.conftest import make_store, mysql_admin, postgres_admin, redis_ok

pytest.importorskip("boto3")

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture
__all__ = ["dynamodb_endpoint", "mysql_admin", "postgres_admin", "redis_ok"]  # fixtures by name

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "large_results"
KINDS = ["memory", "sqlite", "redis", "postgres", "mysql", "dynamodb"]
#: Every store with BatchClaims (every built-in one), Redis Cluster included.
BATCH_KINDS = [*KINDS, "redis-cluster"]
OFFLOAD_OVER = 64 * 1024  # the non-DynamoDB stores keep 64 MiB: offload sooner in tests


class S3Sends:
    """Counts the S3 requests a boto3 client sends (botocore ``before-send``)."""

    def __init__(self) -> None:
        self.operations: list[str] = []

    def __call__(self, request: Any, **kwargs: Any) -> None:
        self.operations.append(request.method)

    def take(self) -> list[str]:
        taken, self.operations = self.operations, []
        return taken


@pytest.fixture(scope="session")
def s3_bucket(dynamodb_endpoint: str) -> str:
    import boto3

    bucket = f"idem-offload-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=dynamodb_endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3(dynamodb_endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=dynamodb_endpoint)


@pytest.fixture
def prefix() -> str:
    return f"results-{uuid.uuid4().hex[:8]}/"


def make_inner(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if kind == "dynamodb":
        from idempotence.stores import DynamoDBStore

        endpoint = request.getfixturevalue("dynamodb_endpoint")
        table = DynamoDBStore(
            f"idem-offload-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=endpoint
        )
        table.create_table()
        return table
    if kind == "redis-cluster":
        pytest.importorskip("redis")
        from idempotence.stores import RedisStore
        from tests.conftest import redis_cluster_url_or_unavailable

        cluster = RedisStore.from_url(redis_cluster_url_or_unavailable())
        cluster.prefix = f"idem-offload-{uuid.uuid4().hex[:8]}:"  # type: ignore[attr-defined]
        return cluster
    return make_store(kind, request, tmp_path)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def inner(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_inner(kind, request, tmp_path)
    yield made
    made.close()


@pytest.fixture
def store(kind: str, inner: Store, s3: Any, s3_bucket: str, prefix: str) -> LargeResultStore:
    # DynamoDB keeps the default offload_over (256 KiB, under its 400 KB item).
    over = None if kind == "dynamodb" else OFFLOAD_OVER
    return LargeResultStore(inner, f"s3://{s3_bucket}/{prefix}", offload_over=over, s3_client=s3)


def objects(s3: Any, bucket: str, prefix: str) -> dict[str, int]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {o["Key"]: o["Size"] for o in listed.get("Contents", [])}


def random_text(n: int) -> str:
    """``n`` characters that compress to about 3/4 of their size (base64 of random bytes)."""
    import base64

    return base64.b64encode(secrets.token_bytes(n * 3 // 4 + 3)).decode()[:n]


# -- round trips ------------------------------------------------------------------------
def test_a_1mb_result_round_trips_through_s3(
    store: LargeResultStore, inner: Store, s3: Any, s3_bucket: str, prefix: str
) -> None:
    idem = Idempotency(store)
    calls: list[str] = []

    @idem
    def report(order: str) -> dict[str, str]:
        calls.append(order)
        return {"order": order, "blob": random_text(1_000_000)}

    first = report("o-1")
    assert report("o-1") == first
    assert calls == ["o-1"]
    key = report.key_for("o-1")
    raw = inner.get(key)
    assert raw is not None
    assert raw.result is not None
    assert raw.result.startswith(b"\x02S")  # a pointer, not the result
    pointer = json.loads(raw.result[2:])
    assert pointer["bucket"] == s3_bucket
    assert pointer["key"] == store.object_key(key, raw.fence)
    assert pointer["key"].startswith(prefix)
    assert objects(s3, s3_bucket, prefix) == {pointer["key"]: pointer["size"]}
    assert 700_000 < pointer["size"] < 1_000_000  # compressed before the upload


@pytest.mark.parametrize("client", ["aiobotocore", "boto3-in-a-thread"])
def test_a_1mb_result_round_trips_async(
    client: str,
    inner: Store,
    s3: Any,
    s3_bucket: str,
    prefix: str,
    dynamodb_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if client == "aiobotocore":
        pytest.importorskip("aiobotocore")
        store = LargeResultStore(
            inner, f"s3://{s3_bucket}/{prefix}", offload_over=OFFLOAD_OVER,
            endpoint_url=dynamodb_endpoint, region="us-east-1",
        )  # fmt: skip
    else:
        monkeypatch.setattr("idempotence.stores._offload._HAS_AIOBOTOCORE", False)
        store = LargeResultStore(
            inner, f"s3://{s3_bucket}/{prefix}", offload_over=OFFLOAD_OVER,
            endpoint_url=dynamodb_endpoint, region="us-east-1",
        )  # fmt: skip
    from idempotence.stores._base import _to_thread as to_thread

    threaded: list[str] = []

    async def spy(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        threaded.append(fn.__name__)
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr("idempotence.stores._offload._to_thread", spy)
    idem = Idempotency(store)
    calls: list[str] = []

    @idem
    async def report(order: str) -> dict[str, str]:
        calls.append(order)
        return {"order": order, "blob": random_text(1_000_000)}

    async def main() -> None:
        first = await report("o-2")
        assert await report("o-2") == first
        assert calls == ["o-2"]
        assert len(objects(s3, s3_bucket, prefix)) == 1
        assert await store.adelete(report.key_for("o-2"))
        assert objects(s3, s3_bucket, prefix) == {}
        await store.aclose()

    asyncio.run(main())
    # aiobotocore: no S3 request ran in a worker thread; otherwise all three did.
    s3_threaded = [name for name in threaded if name in {"_put", "_fetch", "_remove"}]
    assert s3_threaded == ([] if client == "aiobotocore" else ["_put", "_fetch", "_remove"])
    store.close()
    assert objects(s3, s3_bucket, prefix) == {}


def test_a_compressible_20kb_result_is_compressed_not_offloaded(
    store: LargeResultStore, inner: Store, s3: Any, s3_bucket: str, prefix: str
) -> None:
    idem = Idempotency(store)
    calls: list[int] = []

    @idem
    def rows(n: int) -> list[dict[str, object]]:
        calls.append(n)
        return [{"row": i, "label": "item"} for i in range(n)]

    result = rows(800)
    assert 20_000 < len(json.dumps(result)) < 40_000
    assert rows(800) == result
    assert calls == [800]
    raw = inner.get(rows.key_for(800))
    assert raw is not None
    assert raw.result is not None
    assert raw.result.startswith(b"\x02Z")
    assert len(raw.result) < 10_000
    assert zlib.decompress(raw.result[2:]) == store.get(rows.key_for(800)).result  # type: ignore[union-attr]
    assert objects(s3, s3_bucket, prefix) == {}


def test_small_results_and_old_records_are_kept_as_they_are(
    store: LargeResultStore, inner: Store
) -> None:
    key = f"plain-{uuid.uuid4().hex}"
    claim = store.claim(key, "fp", lease=30, ttl=60)
    assert store.complete(key, claim.record.fence, b"\x01Vsmall", ttl=60)
    assert inner.get(key).result == b"\x01Vsmall"  # type: ignore[union-attr]
    # A record written without the wrapper (before it was configured) reads unchanged.
    old = f"old-{uuid.uuid4().hex}"
    fence = inner.claim(old, "fp", lease=30, ttl=60).record.fence
    body = b"\x01V" + b'"x"' * 10_000
    assert inner.complete(old, fence, body, ttl=60)
    assert store.get(old).result == body  # type: ignore[union-attr]
    again = store.claim(old, "fp", lease=30, ttl=60)
    assert not again.acquired
    assert again.record.result == body


@pytest.mark.parametrize("head", [b"\x02Z", b"\x02S", b"\x02R", b"\x02"])
def test_results_stay_opaque_bytes(store: LargeResultStore, inner: Store, head: bytes) -> None:
    """A caller's result that starts like a frame is escaped, not misread."""
    for body in (head + b"{}", head + bytes(range(256)) * 400):  # small; large (offloaded)
        key = f"opaque-{uuid.uuid4().hex}"
        fence = store.claim(key, "fp", lease=30, ttl=60).record.fence
        assert store.complete(key, fence, body, ttl=60)
        assert store.get(key).result == body  # type: ignore[union-attr]
        replay = store.claim(key, "fp", lease=30, ttl=60)
        assert replay.record.result == body


class TestContractOverMemory(StoreContract):
    """The conformance suite through the wrapper, results over 1 KiB offloaded as they are
    (no compression)."""

    test_concurrent_claims_processes = None  # one process by design

    @pytest.fixture
    def store(self, clock: ManualClock, s3: Any, s3_bucket: str) -> LargeResultStore:
        return LargeResultStore(
            MemoryStore(clock=clock),
            f"s3://{s3_bucket}/contract-memory/",
            compress_over=2**30,
            offload_over=1024,
            s3_client=s3,
        )


class TestContractOverSQLite(StoreContract):
    """The conformance suite through the wrapper built from a store URL (processes too),
    results over 64 bytes compressed."""

    @pytest.fixture
    def store_url(
        self, tmp_path: Path, s3_bucket: str, dynamodb_endpoint: str, monkeypatch: Any
    ) -> str:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dynamodb_endpoint)  # inherited by children
        return (
            f"sqlite:///{tmp_path}/contract.db?offload=s3://{s3_bucket}/contract-sqlite/"
            "&compress_over=64&offload_over=1024"
        )

    @pytest.fixture
    def store(self, clock: ManualClock, store_url: str) -> LargeResultStore:
        from idempotence.stores import SQLiteStore

        made = store_from_url(store_url)
        assert isinstance(made, LargeResultStore)
        assert isinstance(made.store, SQLiteStore)
        made.store.clock = clock
        return made


# -- requests ---------------------------------------------------------------------------
def test_replay_of_an_offloaded_result_is_one_store_request_and_one_get(
    kind: str, store: LargeResultStore, inner: Store, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = f"count-{uuid.uuid4().hex}"
    fence = store.claim(key, "fp", lease=30, ttl=60).record.fence
    result = b"\x01V" + random_text(1_000_000).encode()
    s3_sends = S3Sends()
    s3.meta.events.register("before-send.s3", s3_sends)
    store_calls: list[str] = []
    for name in ("claim", "complete", "get", "delete", "release", "renew"):
        method = getattr(inner, name)

        def spy(*args: Any, _name: str = name, _m: Any = method, **kwargs: Any) -> Any:
            store_calls.append(_name)
            return _m(*args, **kwargs)

        monkeypatch.setattr(inner, name, spy)
    sent: list[str] = []
    if kind == "dynamodb":  # the requests the DynamoDB client actually sends
        client = inner._sync_client()  # type: ignore[attr-defined]
        client.meta.events.register(
            "before-send.dynamodb",
            lambda request, **kw: sent.append(request.headers["X-Amz-Target"].decode()),
        )
    assert store.complete(key, fence, result, ttl=60)
    assert (store_calls, s3_sends.take()) == (["complete"], ["PUT"])
    store_calls.clear()
    sent.clear()

    replay = store.claim(key, "fp", lease=30, ttl=60)
    assert not replay.acquired
    assert replay.record.result == result
    assert (store_calls, s3_sends.take()) == (["claim"], ["GET"])
    if kind == "dynamodb":
        assert [s.rsplit(".", 1)[-1] for s in sent] == ["UpdateItem"]
    store_calls.clear()

    # A small result costs no S3 request at all.
    small = f"small-{uuid.uuid4().hex}"
    fence = store.claim(small, "fp", lease=30, ttl=60).record.fence
    assert store.complete(small, fence, b"\x01V" + b"1" * 20_000, ttl=60)
    assert not store.claim(small, "fp", lease=30, ttl=60).acquired
    assert s3_sends.take() == []


# -- forget / delete ------------------------------------------------------------------------
def test_forget_deletes_the_object(
    store: LargeResultStore, s3: Any, s3_bucket: str, prefix: str
) -> None:
    idem = Idempotency(store)
    calls: list[str] = []

    @idem
    def report(order: str) -> str:
        calls.append(order)
        return random_text(500_000)

    report("o-3")
    assert len(objects(s3, s3_bucket, prefix)) == 1
    assert report.forget("o-3")
    assert objects(s3, s3_bucket, prefix) == {}
    report("o-3")  # runs again after forget
    assert calls == ["o-3", "o-3"]
    assert len(objects(s3, s3_bucket, prefix)) == 1
    assert store.delete(report.key_for("o-3"))
    assert objects(s3, s3_bucket, prefix) == {}
    assert not store.delete(report.key_for("o-3"))


def test_a_purge_can_delete_the_object_of_a_raw_record(
    store: LargeResultStore, inner: Store, s3: Any, s3_bucket: str, prefix: str
) -> None:
    """What a purge of expired records (which bypasses ``delete``) calls per record."""
    key = f"purge-{uuid.uuid4().hex}"
    fence = store.claim(key, "fp", lease=30, ttl=60).record.fence
    assert store.complete(key, fence, b"\x01V" + random_text(400_000).encode(), ttl=60)
    raw = inner.get(key)
    assert raw is not None
    assert store.offloaded_object(raw) == (s3_bucket, store.object_key(key, fence))
    assert store.offloaded_object(store.get(key)) is None  # type: ignore[arg-type]
    assert store.delete_offloaded(raw)
    assert objects(s3, s3_bucket, prefix) == {}
    assert store.delete_offloaded(raw)  # already gone: not an error
    assert inner.delete(key)
    small = f"small-{uuid.uuid4().hex}"
    fence = store.claim(small, "fp", lease=30, ttl=60).record.fence
    assert store.complete(small, fence, b"\x01V" + b"1" * 20_000, ttl=60)
    assert not store.delete_offloaded(inner.get(small))  # type: ignore[arg-type]


def test_delete_never_removes_an_object_the_record_does_not_own(
    store: LargeResultStore, inner: Store, s3: Any, s3_bucket: str, prefix: str
) -> None:
    """A pointer to another key's object (a tampered or copied record) is not followed by
    delete: only the object named after the record's own key and fence is removed."""
    victim = f"{prefix}precious"
    s3.put_object(Bucket=s3_bucket, Key=victim, Body=b"keep me")
    key = f"tamper-{uuid.uuid4().hex}"
    fence = inner.claim(key, "fp", lease=30, ttl=60).record.fence
    pointer = {"bucket": s3_bucket, "key": victim, "sha256": "0" * 64, "size": 7}
    assert inner.complete(key, fence, b"\x02S" + json.dumps(pointer).encode(), ttl=60)
    raw = inner.get(key)
    assert raw is not None
    assert store.offloaded_object(raw) is None
    assert not store.delete_offloaded(raw)
    assert store.delete(key)
    assert objects(s3, s3_bucket, prefix) == {victim: 7}


def test_a_fenced_out_complete_removes_only_its_own_object(
    store: LargeResultStore, s3: Any, s3_bucket: str, prefix: str
) -> None:
    key = f"fence-{uuid.uuid4().hex}"
    first = store.claim(key, "fp", lease=0.2, ttl=60).record.fence
    time.sleep(0.4)
    second = store.claim(key, "fp", lease=30, ttl=60)
    assert second.acquired
    assert second.record.fence == first + 1
    big = b"\x01V" + random_text(400_000).encode()
    assert store.complete(key, second.record.fence, big, ttl=60)
    assert not store.complete(key, first, b"\x01V" + random_text(400_000).encode(), ttl=60)
    assert list(objects(s3, s3_bucket, prefix)) == [store.object_key(key, second.record.fence)]
    assert store.get(key).result == big  # type: ignore[union-attr]


# -- damage ---------------------------------------------------------------------------------
def test_a_checksum_mismatch_or_a_missing_object_is_corrupt(
    store: LargeResultStore, s3: Any, s3_bucket: str, prefix: str
) -> None:
    idem = Idempotency(store)
    calls: list[str] = []

    @idem
    def report(order: str) -> str:
        calls.append(order)
        return random_text(500_000)

    report("o-4")
    (name,) = objects(s3, s3_bucket, prefix)
    body = s3.get_object(Bucket=s3_bucket, Key=name)["Body"].read()
    s3.put_object(Bucket=s3_bucket, Key=name, Body=body[:-1] + bytes([body[-1] ^ 1]))
    with pytest.raises(CorruptRecordError, match="checksum") as caught:
        report("o-4")
    assert "forget the key" in str(caught.value)
    s3.delete_object(Bucket=s3_bucket, Key=name)
    with pytest.raises(CorruptRecordError, match="missing from S3") as caught:
        report("o-4")
    assert "forget the key" in str(caught.value)
    assert calls == ["o-4"]  # never run again
    assert report.forget("o-4")  # the way out the message names
    report("o-4")
    assert calls == ["o-4", "o-4"]


def test_a_corrupt_compressed_record_is_corrupt(store: LargeResultStore, inner: Store) -> None:
    key = f"zbad-{uuid.uuid4().hex}"
    fence = inner.claim(key, "fp", lease=30, ttl=60).record.fence
    assert inner.complete(key, fence, b"\x02Z" + b"not zlib" * 10, ttl=60)
    with pytest.raises(CorruptRecordError, match="compressed"):
        store.get(key)


def test_a_stream_inflating_beyond_the_limit_is_corrupt(s3: Any, s3_bucket: str) -> None:
    inner = MemoryStore()
    store = LargeResultStore(inner, f"s3://{s3_bucket}/bomb/", max_offload_bytes=2**20)
    key = "bomb"
    fence = inner.claim(key, "fp", lease=30, ttl=60).record.fence
    # 5 MiB of zeros: more than 4 x max_offload_bytes, a stream the store never wrote.
    assert inner.complete(key, fence, b"\x02Z" + zlib.compress(bytes(5 * 2**20)), ttl=60)
    with pytest.raises(CorruptRecordError, match="inflates beyond 4194304 bytes"):
        store.get(key)


# -- too large ------------------------------------------------------------------------------
def test_a_result_over_max_offload_bytes_is_not_stored_and_never_runs_twice(
    kind: str, inner: Store, s3: Any, s3_bucket: str, prefix: str
) -> None:
    store = LargeResultStore(
        inner,
        f"s3://{s3_bucket}/{prefix}",
        offload_over=OFFLOAD_OVER,
        max_offload_bytes=300_000,
        s3_client=s3,
    )
    assert store.max_result_bytes == 300_000
    idem = Idempotency(store)
    calls: list[str] = []

    @idem
    def report(order: str) -> str:
        calls.append(order)
        return random_text(400_000)

    with pytest.raises(ResultNotStoredError, match="300000 bytes") as caught:
        report("o-5")
    assert isinstance(caught.value.result, str)
    assert len(caught.value.result) == 400_000
    with pytest.raises(ResultNotStoredError, match="not run again"):
        report("o-5")
    assert calls == ["o-5"]
    assert objects(s3, s3_bucket, prefix) == {}
    # Straight to the store: refused before anything is written or uploaded.
    key = f"big-{uuid.uuid4().hex}"
    fence = store.claim(key, "fp", lease=30, ttl=60).record.fence
    with pytest.raises(ResultTooLargeError, match="max_offload_bytes"):
        store.complete(key, fence, b"\x01V" + b"x" * 300_000, ttl=60)
    assert store.get(key).status.value == "IN_PROGRESS"  # type: ignore[union-attr]
    assert objects(s3, s3_bucket, prefix) == {}


def test_without_offload_a_result_the_store_refuses_is_not_stored(
    dynamodb_endpoint: str, s3: Any
) -> None:
    from idempotence.stores import DynamoDBStore

    inner = DynamoDBStore(
        f"idem-offload-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=dynamodb_endpoint
    )
    inner.create_table()
    store = LargeResultStore(inner)  # compression only
    idem = Idempotency(store)
    calls: list[int] = []

    @idem
    def report(n: int) -> str:
        calls.append(n)
        return random_text(n)

    with pytest.raises(ResultNotStoredError):
        report(600_000)  # over DynamoDB's 400 KB item even compressed
    with pytest.raises(ResultNotStoredError):
        report(600_000)
    assert calls == [600_000]
    inner.close()


def test_a_result_the_store_refuses_is_offloaded(
    dynamodb_endpoint: str, s3: Any, s3_bucket: str, prefix: str
) -> None:
    """A result under offload_over that the store still refuses (DynamoDB item limit) goes
    to S3 instead of being lost."""
    from idempotence.stores import DynamoDBStore

    inner = DynamoDBStore(
        f"idem-offload-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=dynamodb_endpoint
    )
    inner.create_table()
    store = LargeResultStore(
        inner, f"s3://{s3_bucket}/{prefix}", offload_over=10 * 2**20, s3_client=s3
    )
    key = f"refused-{uuid.uuid4().hex}"
    fence = store.claim(key, "fp", lease=30, ttl=60).record.fence
    result = b"\x01V" + random_text(600_000).encode()
    assert store.complete(key, fence, result, ttl=60)
    assert store.get(key).result == result  # type: ignore[union-attr]
    assert len(objects(s3, s3_bucket, prefix)) == 1
    inner.close()


# -- configuration --------------------------------------------------------------------------
def test_store_url_options_wrap_the_store(
    tmp_path: Path, s3_bucket: str, dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dynamodb_endpoint)  # the SDK's own variable
    url = (
        f"sqlite:///{tmp_path}/idem.db?offload=s3://{s3_bucket}/url/&compress_over=1024"
        "&offload_over=65536&max_offload_bytes=5000000"
    )
    validate_store_url(url)
    store = store_from_url(url)
    assert isinstance(store, LargeResultStore)
    assert (store.bucket, store.offload_prefix, store.compress_over) == (s3_bucket, "url/", 1024)
    assert (store.offload_over, store.max_result_bytes) == (65536, 5_000_000)
    idem = Idempotency(url)
    calls: list[int] = []

    @idem
    def report(n: int) -> str:
        calls.append(n)
        return random_text(n)

    assert report(300_000) == report(300_000)
    assert calls == [300_000]
    raw = store.store.get(report.key_for(300_000))
    assert raw is not None
    assert raw.result is not None
    assert raw.result.startswith(b"\x02S")
    idem.store.close()
    store.close()
    plain = store_from_url(f"sqlite:///{tmp_path}/idem.db?timeout=5")
    assert not isinstance(plain, LargeResultStore)
    compress_only = store_from_url("memory://?compress_over=100")
    assert isinstance(compress_only, LargeResultStore)
    assert compress_only.bucket is None


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://?offload=https://bucket/p", "s3://bucket/prefix"),
        ("memory://?offload=s3://", "s3://bucket/prefix"),
        ("memory://?compress_over=lots", "whole number"),
        ("memory://?max_offload_bytes=-1", "whole number"),
        ("memory://?offload=s3://b/p&nope=1", "unknown option 'nope'"),
    ],
)
def test_bad_store_url_options_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_store_url(url)
    with pytest.raises(ValueError, match=message):
        store_from_url(url)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="must be a Store"):
        LargeResultStore("memory://")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compress_over"):
        LargeResultStore(MemoryStore(), compress_over=-1)
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        LargeResultStore(MemoryStore(), "s3://bucket/p?x=1")


def test_without_boto3_the_error_names_the_extra(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError
    store = LargeResultStore(MemoryStore(), f"s3://{s3_bucket}/x/", offload_over=10)
    key = "k"
    fence = store.claim(key, "fp", lease=30, ttl=60).record.fence
    with pytest.raises(MissingDependencyError, match=r"idempotence\[s3\]"):
        store.complete(key, fence, b"\x01V" + b"y" * 100, ttl=60)


# -- docs: the example and the lifecycle rule -----------------------------------------------
def test_the_example_app_runs(
    dynamodb_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/large_results/app.py, as docs/stores.md shows it, on moto."""
    from idempotence.stores import DynamoDBStore

    table = f"idem-offload-{uuid.uuid4().hex[:10]}"
    DynamoDBStore(table, region="us-east-1", endpoint_url=dynamodb_endpoint).create_table()
    monkeypatch.setenv("AWS_ENDPOINT_URL", dynamodb_endpoint)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", table)
    monkeypatch.setenv("IDEMPOTENCY_OFFLOAD", f"s3://{s3_bucket}/example/")
    namespace: dict[str, Any] = {"__name__": "large_results_app"}
    exec(
        compile((EXAMPLE / "app.py").read_text(), "examples/large_results/app.py", "exec"),
        namespace,
    )
    report = namespace["build_report"]
    rows = report("r-1", 30_000)  # ~1.5 MB of JSON: compressed, then offloaded
    assert report("r-1", 30_000) == rows
    import boto3

    s3 = boto3.client("s3", endpoint_url=dynamodb_endpoint)
    assert len(objects(s3, s3_bucket, "example/")) == 1
    namespace["store"].close()


def test_the_lifecycle_rule_is_accepted_by_s3(s3: Any, s3_bucket: str) -> None:
    """examples/large_results/lifecycle.json, as docs/stores.md shows it."""
    rules = json.loads((EXAMPLE / "lifecycle.json").read_text())
    s3.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration=rules)
    got = s3.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    assert got[0]["Expiration"] == {"Days": 2}
    assert got[0]["Filter"] == {"Prefix": "results/"}
    assert got[0]["Status"] == "Enabled"


cfn_lint.register("large_results/template.yaml", EXAMPLE / "template.yaml")


def test_the_bucket_template_passes_cfn_lint() -> None:
    """examples/large_results/template.yaml, as docs/stores.md shows it."""
    cfn_lint.assert_passes("large_results/template.yaml")
    text = (EXAMPLE / "template.yaml").read_text()
    assert "ExpirationInDays: 2" in text
    assert "Default: results/" in text


# -- through HTTP, behind a real server -----------------------------------------------------
def test_a_large_http_response_replays_from_s3_behind_waitress(
    store: LargeResultStore, s3: Any, s3_bucket: str, prefix: str
) -> None:
    """WSGI middleware on the wrapped store, behind waitress, with httpx: a 900 KB response
    is kept in S3 and a retry gets it back byte for byte without running the app again."""
    import httpx
    import waitress.server
    from waitress import wasyncore

    from idempotence.http import WSGIIdempotencyMiddleware

    runs: list[int] = []
    body = random_text(900_000).encode()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        runs.append(1)
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [body]

    wrapped = WSGIIdempotencyMiddleware(app, Idempotency(store, lease=30))
    server: Any = waitress.server.create_server(wrapped, host="127.0.0.1", port=0, threads=4)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            wasyncore.loop(timeout=0.05, map=server._map, count=1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.effective_port}"
        headers = {"Idempotency-Key": f'"{uuid.uuid4().hex}"'}
        with httpx.Client(base_url=base, timeout=30) as client:
            first = client.post("/report", headers=headers)
            second = client.post("/report", headers=headers)
    finally:
        stopping.set()
        thread.join(10)
        server.task_dispatcher.shutdown()
        wasyncore.close_all(server._map)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.content == body
    assert second.content == body
    assert second.headers["idempotent-replayed"] == "true"
    assert runs == [1]
    assert len(objects(s3, s3_bucket, prefix)) == 1


def test_one_event_loop_per_invocation_needs_no_aclose(
    s3: Any, s3_bucket: str, prefix: str, dynamodb_endpoint: str
) -> None:
    """Lambda style: ``asyncio.run`` per invocation, never ``aclose``: each loop's
    aiobotocore client closes with its loop and the next loop opens its own."""
    pytest.importorskip("aiobotocore")
    store = LargeResultStore(
        MemoryStore(), f"s3://{s3_bucket}/{prefix}", offload_over=1024,
        endpoint_url=dynamodb_endpoint, region="us-east-1",
    )  # fmt: skip
    key = f"loops-{uuid.uuid4().hex}"
    body = b"\x01V" + random_text(100_000).encode()

    async def first() -> None:
        fence = (await store.aclaim(key, "fp", lease=30, ttl=60)).record.fence
        assert await store.acomplete(key, fence, body, ttl=60)

    async def second() -> bytes | None:
        replay = await store.aclaim(key, "fp", lease=30, ttl=60)
        return replay.record.result

    asyncio.run(first())
    assert asyncio.run(second()) == body
    assert asyncio.run(second()) == body
    assert len(store._async_clients) <= 1  # closed loops are forgotten
    store.close()
    assert len(store._async_clients) == 0
    assert len(objects(s3, s3_bucket, prefix)) == 1


def test_the_cli_inspects_and_forgets_an_offloaded_result(
    tmp_path: Path,
    s3: Any,
    s3_bucket: str,
    prefix: str,
    dynamodb_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``idempotence inspect`` reads the result back from S3; ``idempotence forget``
    deletes the record and its object (the store URL carries ?offload=)."""
    from idempotence.__main__ import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dynamodb_endpoint)
    url = f"sqlite:///{tmp_path}/cli.db?offload=s3://{s3_bucket}/{prefix}&offload_over=1024"
    idem = Idempotency(url)

    @idem
    def report(order: str) -> dict[str, str]:
        return {"status": "created", "blob": random_text(50_000)}

    report("o-cli")
    key = report.key_for("o-cli")
    assert len(objects(s3, s3_bucket, prefix)) == 1
    assert main(["inspect", "--store", url, key]) == 0
    assert '"status": "created"' in capsys.readouterr().out
    assert main(["forget", "--store", url, key]) == 0
    assert objects(s3, s3_bucket, prefix) == {}
    idem.store.close()


# -- capabilities: exactly the wrapped store's ----------------------------------------------
def test_the_wrapper_offers_exactly_the_capabilities_of_the_store_it_wraps(
    store: LargeResultStore, inner: Store
) -> None:
    from idempotence.stores.capabilities import (
        AtomicScripts,
        BatchClaims,
        DynamoDBRecords,
        Maintainable,
        SQLConnections,
    )

    for capability in (Maintainable, SQLConnections, AtomicScripts, DynamoDBRecords, BatchClaims):
        assert isinstance(store, capability) == isinstance(inner, capability), capability
    assert isinstance(store, BatchClaims)  # every built-in store has it

    class Opaque(Store):
        """A store with no capability: its wrapper has none either."""

        claim = complete = release = renew = get = delete = MemoryStore.claim  # type: ignore[assignment]

    assert not isinstance(LargeResultStore(Opaque()), BatchClaims)
    assert isinstance(store, LargeResultStore)
    assert hasattr(store, "auto_create") == hasattr(inner, "auto_create")
    if isinstance(inner, AtomicScripts):
        assert isinstance(store, AtomicScripts)
        assert store.prefix == inner.prefix  # the key prefix, not the S3 one
    assert not isinstance(LargeResultStore(MemoryStore()), SQLConnections)


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    from idempotence.__main__ import main

    capsys.readouterr()
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out)


def test_the_cli_lists_counts_and_purges_through_the_wrapper(
    tmp_path: Path,
    s3: Any,
    s3_bucket: str,
    prefix: str,
    dynamodb_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``idempotence list/stats/purge`` on a store URL with ``offload=``; a purge deletes
    the S3 objects of the records it deletes and only those."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dynamodb_endpoint)
    url = f"sqlite:///{tmp_path}/idem.db?offload=s3://{s3_bucket}/{prefix}&offload_over=1024"
    store = store_from_url(url)
    big = b"\x01V" + random_text(50_000).encode()
    store.s3_client()  # made before the short leases start
    for name, ttl in (("b#live", 600.0), ("a#old-1", 1.0), ("a#old-2", 1.0)):
        fence = store.claim(name, "fp", lease=2, ttl=ttl).record.fence
        assert store.complete(name, fence, big, ttl=ttl)
    store.claim("a#small", "fp", lease=1, ttl=1)  # in progress, nothing offloaded
    store.close()
    assert len(objects(s3, s3_bucket, prefix)) == 3
    live_object = LargeResultStore(MemoryStore(), f"s3://{s3_bucket}/{prefix}").object_key(
        "b#live",
        store.get("b#live").fence,  # type: ignore[union-attr]
    )
    time.sleep(2.2)  # retention and leases over

    listed = _cli(["list", "--store", url], capsys)
    keys = sorted(r["key"] for r in listed["records"])
    assert keys == ["a#old-1", "a#old-2", "a#small", "b#live"]
    stats = _cli(["stats", "--store", url], capsys)
    assert (stats["total"], stats["expired"]) == (4, 3)
    assert _cli(["purge", "--store", url, "--expired", "--dry-run"], capsys) == {
        "dry_run": True,
        "would_delete": 3,
    }
    assert len(objects(s3, s3_bucket, prefix)) == 3
    assert _cli(["purge", "--store", url, "--expired"], capsys) == {"dry_run": False, "deleted": 3}
    assert list(objects(s3, s3_bucket, prefix)) == [live_object]
    assert _cli(["stats", "--store", url], capsys)["total"] == 1
    assert _cli(["purge", "--store", url, "--namespace", "b", "--yes"], capsys)["deleted"] == 1
    assert objects(s3, s3_bucket, prefix) == {}


# Redis expires its records itself: a purge never sees them (the lifecycle rule applies).
@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres", "dynamodb"])
def test_a_purge_through_the_wrapper_deletes_only_objects_of_purged_records(
    store: LargeResultStore, inner: Store, s3: Any, s3_bucket: str, prefix: str
) -> None:
    """Every store that keeps expired records until purged: an expired record's object
    goes with it; a live record's stays and still replays."""
    from idempotence.stores.capabilities import Maintainable

    assert isinstance(store, Maintainable)
    ns = f"p{uuid.uuid4().hex[:8]}"
    big = b"\x01V" + random_text(400_000).encode()
    for name, ttl in ((f"{ns}#gone", 1.0), (f"{ns}#kept", 600.0)):
        fence = store.claim(name, "fp", lease=2, ttl=ttl).record.fence
        assert store.complete(name, fence, big, ttl=ttl)
    assert len(objects(s3, s3_bucket, prefix)) == 2
    time.sleep(2.2)
    assert store.count(namespace=ns, expired=True) == 1
    deleted = store.purge(namespace=ns)
    # DynamoDB's own TTL may have removed the item already; the object goes either way.
    assert deleted in ((0, 1) if store.store.__class__.__name__ == "DynamoDBStore" else (1,))
    kept = store.get(f"{ns}#kept")
    assert kept is not None
    assert kept.result == big
    left = objects(s3, s3_bucket, prefix)
    assert len(left) == 1
    assert next(iter(left)).startswith(store.object_key(f"{ns}#kept", kept.fence))
    assert store.delete(f"{ns}#kept")
    assert objects(s3, s3_bucket, prefix) == {}


def test_read_commands_do_not_create_the_table_through_the_wrapper(
    tmp_path: Path,
    s3_bucket: str,
    dynamodb_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from idempotence.__main__ import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dynamodb_endpoint)
    db = tmp_path / "never.db"
    url = f"sqlite:///{db}?offload=s3://{s3_bucket}/ro/"
    wrapped = store_from_url(url)
    assert isinstance(wrapped, LargeResultStore)
    assert wrapped.auto_create is True  # type: ignore[attr-defined]
    wrapped.auto_create = False  # type: ignore[attr-defined]
    assert wrapped.store.auto_create is False  # type: ignore[attr-defined]
    for argv in (["list"], ["stats"], ["inspect", "k"], ["purge", "--expired"], ["doctor"]):
        main([*argv, "--store", url])
        assert not db.exists(), argv
    capsys.readouterr()
    assert main(["create-table", "--store", url]) == 0
    assert "SQLiteStore" not in capsys.readouterr().err
    assert db.exists()
    assert main(["doctor", "--store", url]) == 0, capsys.readouterr().out


def test_state_guard_works_through_the_wrapper_on_sqlite(tmp_path: Path, s3_bucket: str) -> None:
    from idempotence.effects import StateGuard
    from idempotence.stores import SQLiteStore

    inner = SQLiteStore(str(tmp_path / "states.db"))
    wrapped = LargeResultStore(inner, f"s3://{s3_bucket}/guard/")
    guard: StateGuard[str] = StateGuard(wrapped)
    assert guard.transition("order-1", None, "paid")
    assert not guard.transition("order-1", None, "paid")
    assert guard.get("order-1") == "paid"
    assert StateGuard(inner).get("order-1") == "paid"  # the same table as the plain store
    inner.close()


# -- batches: BatchClaims through the wrapper -----------------------------------------------
#: The wrapped store's operations (and their async twins) that are one request each.
STORE_OPERATIONS = (
    "claim", "complete", "release", "renew", "get", "delete",
    "claim_many", "complete_many", "release_many",
)  # fmt: skip
_NESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("nested", default=False)


class StoreCalls:
    """The operations the wrapper calls on the wrapped store, by name (``aclaim_many``...),
    not counting those a store's operation calls on itself (an async twin running the sync
    one). For DynamoDB, ``wire`` also counts the API requests its clients send."""

    def __init__(self, inner: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.names: list[str] = []
        self.wire: list[str] = []
        for name in STORE_OPERATIONS:
            for attr in (name, "a" + name):
                monkeypatch.setattr(inner, attr, self._spy(attr, getattr(inner, attr)))

    def _spy(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        if asyncio.iscoroutinefunction(method):

            async def aspy(*args: Any, **kwargs: Any) -> Any:
                if not _NESTED.get():
                    self.names.append(name)
                token = _NESTED.set(True)
                try:
                    return await method(*args, **kwargs)
                finally:
                    _NESTED.reset(token)

            return aspy

        def spy(*args: Any, **kwargs: Any) -> Any:
            if not _NESTED.get():
                self.names.append(name)
            token = _NESTED.set(True)
            try:
                return method(*args, **kwargs)
            finally:
                _NESTED.reset(token)

        return spy

    def count_wire(self, client: Any) -> None:
        """Count the DynamoDB requests ``client`` (boto3 or aiobotocore) sends."""
        client.meta.events.register(
            "before-send.dynamodb",
            lambda request, **_: self.wire.append(
                request.headers["X-Amz-Target"].decode().rsplit(".", 1)[-1]
            ),
        )

    def take(self) -> tuple[list[str], list[str]]:
        taken = (self.names, self.wire)
        self.names, self.wire = [], []
        return taken


class S3Calls:
    """The S3 requests a wrapper sends, counted on its clients (``before-send``), and how
    many of its ``PutObject`` / ``GetObject`` requests were in flight at once (async)."""

    def __init__(self, store: LargeResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sent = S3Sends()
        self.in_flight = 0
        self.most = 0
        for action in ("_aput", "_afetch"):
            monkeypatch.setattr(store, action, self._spy(getattr(store, action)))

    def _spy(self, method: Callable[..., Any]) -> Callable[..., Any]:
        async def spy(*args: Any) -> Any:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await method(*args)
            finally:
                self.in_flight -= 1

        return spy

    def count(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self.sent)

    def take(self) -> tuple[list[str], int]:
        taken = (self.sent.take(), self.most)
        self.most = 0
        return taken


def forbid_sync_s3_on_the_loop(store: LargeResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the wrapper's boto3 S3 client fail when it is asked for on a thread running an
    event loop: a blocking S3 request from an async method."""
    get_client = store.s3_client

    def guarded() -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return get_client()
        raise AssertionError("a blocking boto3 S3 request on the event loop's thread")

    monkeypatch.setattr(store, "s3_client", guarded)


class Batch:
    """The wrapper's batch operations, sync or async on one event loop (kept for the whole
    test: its aiobotocore clients are opened once), with the S3 client guard."""

    def __init__(self, store: LargeResultStore, mode: str) -> None:
        self.store, self.mode = store, mode
        self.loop = asyncio.new_event_loop() if mode == "async" else None

    def __call__(self, operation: str, items: list[Any]) -> list[Any]:
        if self.loop is None:
            result: list[Any] = getattr(self.store, operation)(items)
            return result
        return self.loop.run_until_complete(getattr(self.store, "a" + operation)(items))

    def wait(self, coroutine: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.store.aclose())
            self.loop.close()
        self.store.close()


@pytest.fixture
def batch_store(
    kind: str,
    inner: Store,
    s3_bucket: str,
    prefix: str,
    dynamodb_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> LargeResultStore:
    """Small thresholds (over 256 bytes compressed, over 2 KiB offloaded, over 16 KiB
    refused) and the wrapper's own S3 clients (aiobotocore when async)."""
    store = LargeResultStore(
        inner, f"s3://{s3_bucket}/{prefix}", compress_over=256, offload_over=2048,
        max_offload_bytes=16_384, endpoint_url=dynamodb_endpoint, region="us-east-1",
    )  # fmt: skip
    forbid_sync_s3_on_the_loop(store, monkeypatch)
    return store


def batch_results() -> dict[str, bytes]:
    rows = json.dumps([{"row": i, "label": "item"} for i in range(150)]).encode()
    return {
        "small": b'\x01V"ok"',
        "packed": b"\x01V" + rows,  # ~4 KB, compresses under 2 KiB: kept in the record
        "big-1": b"\x01V" + random_text(4000).encode(),  # ~3 KB compressed: offloaded
        "big-2": b"\x01V" + random_text(5000).encode(),
        "huge": b"\x01V" + random_text(20_000).encode(),  # over max_offload_bytes
    }


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_a_batch_is_one_store_request_plus_its_s3_requests(
    kind: str,
    mode: str,
    batch_store: LargeResultStore,
    inner: Store,
    s3: Any,
    s3_bucket: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from idempotence.stores.capabilities import BatchClaims, Maintainable

    store = batch_store
    assert isinstance(store, BatchClaims)
    run = Batch(store, mode)
    a = "a" if mode == "async" else ""
    ns = f"b{uuid.uuid4().hex[:8]}"
    results = batch_results()
    keys = {name: f"{ns}#{name}" for name in [*results, "lost"]}
    calls, s3_calls = StoreCalls(inner, monkeypatch), S3Calls(store, monkeypatch)
    if mode == "sync":
        s3_calls.count(store.s3_client())
    else:
        s3_calls.count(run.wait(store._async_client()))
    if kind == "dynamodb":
        dynamodb: Any = inner
        calls.count_wire(
            dynamodb._sync_client() if mode == "sync" else run.wait(dynamodb._async_client())
        )
    try:
        # Fresh: one claim request, nothing from S3.
        claims = run("claim_many", [(k, "fp", 30.0, 60.0) for k in keys.values()])
        assert [c.acquired for c in claims] == [True] * 6
        wire = ["TransactWriteItems"] if kind == "dynamodb" else []
        assert calls.take() == ([f"{a}claim_many"], wire)
        assert s3_calls.take() == ([], 0)
        fences = {name: claims[i].record.fence for i, name in enumerate(keys)}

        # One completion request; the two large results uploaded (at once when async);
        # "huge" refused in its place; "lost" (a fence it does not hold) refused and its
        # object deleted, as a single complete does.
        items = [(keys[n], fences[n], body, 60.0) for n, body in results.items()]
        items.append((keys["lost"], fences["lost"] + 1, results["big-1"], 60.0))
        done = run("complete_many", items)
        assert done[:4] == [True] * 4
        assert isinstance(done[4], ResultTooLargeError)
        assert "max_offload_bytes" in str(done[4])
        assert done[5] is False
        # (DynamoDB cancels the transaction for the lost fence and writes the rest again)
        assert calls.take() == ([f"{a}complete_many"], wire * 2)
        assert s3_calls.take() == (["PUT", "PUT", "PUT", "DELETE"], 3 if mode == "async" else 0)
        stored = {name: inner.get(key) for name, key in keys.items()}
        calls.take()
        assert stored["small"].result == results["small"]  # type: ignore[union-attr]
        assert stored["packed"].result.startswith(b"\x02Z")  # type: ignore[union-attr]
        for name in ("big-1", "big-2"):
            assert stored[name].result.startswith(b"\x02S")  # type: ignore[union-attr]
        assert stored["huge"].status.value == "IN_PROGRESS"  # type: ignore[union-attr]
        big = {store.object_key(keys[n], fences[n]) for n in ("big-1", "big-2")}
        assert set(objects(s3, s3_bucket, prefix)) == big

        # Replays: one claim request, the two objects read back (at once when async).
        replays = run("claim_many", [(k, "fp", 30.0, 60.0) for k in keys.values()])
        assert not any(c.acquired for c in replays)
        for i, name in enumerate(results):
            if name != "huge":
                assert replays[i].record.result == results[name], name
        assert calls.take() == ([f"{a}claim_many"], wire)
        assert s3_calls.take() == (["GET", "GET"], 2 if mode == "async" else 0)

        # Releases pass through: one request.
        released = run("release_many", [(keys[n], fences[n]) for n in ("huge", "lost")])
        assert released == [True, True]
        assert calls.take() == ([f"{a}release_many"], wire)
        assert s3_calls.take() == ([], 0)

        # forget deletes its object; a purge (sync only: async, forget every key) deletes
        # the objects of the records it deletes.
        if mode == "sync":
            assert store.delete(keys["big-1"])
        else:
            assert run.wait(store.adelete(keys["big-1"]))
        assert set(objects(s3, s3_bucket, prefix)) == big - {
            store.object_key(keys["big-1"], fences["big-1"])
        }
        if mode == "sync":
            assert isinstance(store, Maintainable)
            assert store.purge(namespace=ns, expired=False) == 5
        else:
            for name in ("small", "packed", "big-2", "huge", "lost"):
                assert run.wait(store.adelete(keys[name]))
        assert objects(s3, s3_bucket, prefix) == {}
    finally:
        run.close()


def sqs_batch(n: int) -> dict[str, Any]:
    from tests.aws_lambda.events import sqs_message

    return {"Records": [sqs_message(f"ord-{i}") for i in range(n)]}


def order_result(record: dict[str, Any], runs: list[str]) -> Any:
    """ord-0: ~4 KB of random text (offloaded); ord-1: ~4 KB of rows (compressed); the
    others small."""
    order = json.loads(record["body"])["order_id"]
    runs.append(order)
    if order == "ord-0":
        return random_text(4000)
    if order == "ord-1":
        return [{"row": i, "label": "item"} for i in range(150)]
    return {"order": order}


@pytest.mark.parametrize("kind", BATCH_KINDS)
def test_an_sqs_batch_of_ten_is_two_store_requests(
    kind: str,
    batch_store: LargeResultStore,
    inner: Store,
    s3: Any,
    s3_bucket: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """process_batch on the wrapper: a claim request and a completion request for ten new
    records (plus the upload of the one offloaded result); a redelivery is one request and
    the object's read."""
    from tests.aws_lambda.events import redeliver

    idem = Idempotency(batch_store, lease=30)
    runs: list[str] = []
    event = sqs_batch(10)
    calls, s3_calls = StoreCalls(inner, monkeypatch), S3Calls(batch_store, monkeypatch)
    s3_calls.count(batch_store.s3_client())
    handler = functools.partial(order_result, runs=runs)
    ns = f"sqs{uuid.uuid4().hex[:8]}"
    assert idem.process_batch(event, handler, namespace=ns) == {"batchItemFailures": []}
    assert calls.take()[0] == ["claim_many", "complete_many"]
    assert s3_calls.take() == (["PUT"], 0)
    assert len(objects(s3, s3_bucket, prefix)) == 1
    again = idem.process_batch(redeliver(event), handler, namespace=ns)
    assert again == {"batchItemFailures": []}
    assert calls.take()[0] == ["claim_many"]
    assert s3_calls.take() == (["GET"], 0)
    assert runs == [f"ord-{i}" for i in range(10)]
    batch_store.purge(namespace=ns, expired=False)  # type: ignore[attr-defined]
    assert objects(s3, s3_bucket, prefix) == {}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_an_sqs_batch_on_a_dynamodb_offload_url_is_two_requests(
    mode: str, dynamodb_endpoint: str, s3_bucket: str, prefix: str, monkeypatch: Any
) -> None:
    """``dynamodb://table?offload=s3://...``: ten new records cost two DynamoDB requests
    (``TransactWriteItems`` each), counted on the wire, sync and async (aiobotocore)."""
    from urllib.parse import quote

    from idempotence.stores import DynamoDBStore
    from idempotence.stores.capabilities import BatchClaims
    from tests.aws_lambda.events import redeliver

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", dynamodb_endpoint)
    table = f"idem-offload-{uuid.uuid4().hex[:10]}"
    url = (
        f"dynamodb://{table}?region=us-east-1&endpoint_url={quote(dynamodb_endpoint, safe='')}"
        f"&offload=s3://{s3_bucket}/{prefix}&compress_over=256&offload_over=2048"
    )
    store = store_from_url(url)
    assert isinstance(store, LargeResultStore)
    assert isinstance(store, BatchClaims)
    inner: Any = store.store
    assert isinstance(inner, DynamoDBStore)
    inner.create_table()
    forbid_sync_s3_on_the_loop(store, monkeypatch)
    run = Batch(store, mode)
    calls, s3_calls = StoreCalls(inner, monkeypatch), S3Calls(store, monkeypatch)
    if mode == "sync":
        calls.count_wire(inner._sync_client())
        s3_calls.count(store.s3_client())
    else:
        calls.count_wire(run.wait(inner._async_client()))
        s3_calls.count(run.wait(store._async_client()))
    idem = Idempotency(store, lease=30)
    runs: list[str] = []
    handler = functools.partial(order_result, runs=runs)

    async def ahandler(record: dict[str, Any]) -> Any:
        return handler(record)

    def process(event: dict[str, Any]) -> Any:
        if mode == "sync":
            return idem.process_batch(event, handler, namespace="sqs")
        return run.wait(idem.aprocess_batch(event, ahandler, namespace="sqs"))

    event = sqs_batch(10)
    try:
        assert process(event) == {"batchItemFailures": []}
        assert calls.take()[1] == ["TransactWriteItems", "TransactWriteItems"]
        assert s3_calls.take() == (["PUT"], 1 if mode == "async" else 0)
        assert process(redeliver(event)) == {"batchItemFailures": []}
        assert calls.take()[1] == ["TransactWriteItems"]  # cancelled: the records replayed
        assert s3_calls.take() == (["GET"], 1 if mode == "async" else 0)
        assert runs == [f"ord-{i}" for i in range(10)]
    finally:
        run.close()


def test_a_batch_result_dynamodb_refuses_inline_is_offloaded(
    dynamodb_endpoint: str, s3: Any, s3_bucket: str, prefix: str
) -> None:
    """As a single complete: a result under offload_over that DynamoDB refuses (over its
    item limit) in the batch is uploaded and completed on its own; the rest of the batch
    completes in the one transaction."""
    from idempotence.stores import DynamoDBStore

    inner = DynamoDBStore(
        f"idem-offload-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=dynamodb_endpoint
    )
    inner.create_table()
    store = LargeResultStore(
        inner, f"s3://{s3_bucket}/{prefix}", offload_over=10 * 2**20, s3_client=s3
    )
    keys = [f"refused-{uuid.uuid4().hex}", f"fine-{uuid.uuid4().hex}"]
    claims = store.claim_many([(k, "fp", 30.0, 60.0) for k in keys])  # type: ignore[attr-defined]
    refused = b"\x01V" + random_text(600_000).encode()
    items = [(keys[0], claims[0].record.fence, refused, 60.0)]
    items.append((keys[1], claims[1].record.fence, b"\x01Vsmall", 60.0))
    assert store.complete_many(items) == [True, True]  # type: ignore[attr-defined]
    assert store.get(keys[0]).result == refused  # type: ignore[union-attr]
    assert store.get(keys[1]).result == b"\x01Vsmall"  # type: ignore[union-attr]
    assert list(objects(s3, s3_bucket, prefix)) == [
        store.object_key(keys[0], claims[0].record.fence)
    ]
    for key in keys:
        assert store.delete(key)
    assert objects(s3, s3_bucket, prefix) == {}
    inner.close()


def test_a_failed_upload_fails_only_its_item(s3_bucket: str, prefix: str, s3: Any) -> None:
    """An S3 error on one upload is that item's StoreError; the batch's other items are
    completed in the one request."""
    inner = MemoryStore()
    store = LargeResultStore(inner, f"s3://{s3_bucket}/{prefix}", offload_over=1024, s3_client=s3)
    keys = ["a", "b", "c"]
    claims = store.claim_many([(k, "fp", 30.0, 60.0) for k in keys])  # type: ignore[attr-defined]
    fences = [c.record.fence for c in claims]
    put = store._put

    def flaky(bucket: str, name: str, body: bytes, checksum: str) -> None:
        if name == store.object_key("b", fences[1]):
            raise ConnectionError("S3 unreachable")
        put(bucket, name, body, checksum)

    store._put = flaky  # type: ignore[method-assign]
    big = b"\x01V" + random_text(4000).encode()
    trips = inner.round_trips
    done = store.complete_many(  # type: ignore[attr-defined]
        [(k, f, big, 60.0) for k, f in zip(keys, fences, strict=True)]
    )
    assert inner.round_trips == trips + 1
    assert [done[0], done[2]] == [True, True]
    assert isinstance(done[1], StoreError)
    assert done[1].key == "b"
    assert "ConnectionError: S3 unreachable" in str(done[1])
    assert big.decode() not in str(done[1])
    assert inner.get("b").status.value == "IN_PROGRESS"  # type: ignore[union-attr]
    assert store.get("c").result == big  # type: ignore[union-attr]
    assert sorted(objects(s3, s3_bucket, prefix)) == sorted(
        store.object_key(k, fences[i]) for i, k in ((0, "a"), (2, "c"))
    )
    for key in keys:
        store.delete(key)


def test_a_batch_claim_reports_an_unreadable_record_in_its_place(
    s3: Any, s3_bucket: str, prefix: str
) -> None:
    """A completed record whose object is gone: CorruptRecordError in that item's place (a
    single claim raises it), the other items' claims as usual, in one store request."""
    inner = MemoryStore()
    store = LargeResultStore(inner, f"s3://{s3_bucket}/{prefix}", offload_over=1024, s3_client=s3)
    big = b"\x01V" + random_text(4000).encode()
    keys = ["gone", "kept"]
    claims = store.claim_many([(k, "fp", 30.0, 60.0) for k in keys])  # type: ignore[attr-defined]
    fences = [c.record.fence for c in claims]
    items = [(k, f, big, 60.0) for k, f in zip(keys, fences, strict=True)]
    assert store.complete_many(items) == [True, True]  # type: ignore[attr-defined]
    s3.delete_object(Bucket=s3_bucket, Key=store.object_key("gone", fences[0]))
    trips = inner.round_trips
    replays = store.claim_many([(k, "fp", 30.0, 60.0) for k in [*keys, "new"]])  # type: ignore[attr-defined]
    assert inner.round_trips == trips + 1
    assert isinstance(replays[0], CorruptRecordError)
    assert "forget the key" in str(replays[0])
    assert replays[1].record.result == big
    assert replays[2].acquired
    with pytest.raises(CorruptRecordError, match="missing from S3"):
        store.claim("gone", "fp", lease=30, ttl=60)
    for key in keys:
        store.delete(key)


@pytest.mark.parametrize("client", ["aiobotocore", "boto3-in-a-thread"])
def test_async_replays_on_dynamodb_never_block_the_event_loop(
    client: str,
    dynamodb_endpoint: str,
    s3: Any,
    s3_bucket: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every async read of an offloaded result - aclaim, aget, aclaim_many and the replay
    of adynamodb_transaction (the record in a cancellation reason) - reads the object on
    aiobotocore, or with boto3 in a worker thread: the boto3 client fails if it is asked
    for on the event loop's thread."""
    from idempotence.effects import adynamodb_transaction, dynamodb_transaction
    from idempotence.stores import DynamoDBStore
    from idempotence.stores._base import _to_thread as to_thread

    inner = DynamoDBStore(
        f"idem-offload-{uuid.uuid4().hex[:10]}", region="us-east-1", endpoint_url=dynamodb_endpoint
    )
    inner.create_table()
    where = f"s3://{s3_bucket}/{prefix}"
    writer = LargeResultStore(inner, where, offload_over=1024, s3_client=s3)  # sync, set-up
    if client == "aiobotocore":
        store = LargeResultStore(
            inner, where, offload_over=1024, endpoint_url=dynamodb_endpoint, region="us-east-1"
        )
    else:  # a given boto3 client: its requests run in a worker thread
        store = LargeResultStore(inner, where, offload_over=1024, s3_client=s3)
    forbid_sync_s3_on_the_loop(store, monkeypatch)
    threaded: list[str] = []

    async def spy(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        threaded.append(fn.__name__)
        return await to_thread(fn, *args, **kwargs)

    monkeypatch.setattr("idempotence.stores._offload._to_thread", spy)
    # An encoded result as a transaction writes it (compressed in the item), then written
    # again offloaded under the key the async calls replay.
    value = {"report": random_text(5000)}
    first = f"txn-{uuid.uuid4().hex}"
    assert not dynamodb_transaction(writer, first, [], result=value).replayed  # type: ignore[arg-type]
    encoded = writer.get(first).result  # type: ignore[union-attr]
    assert encoded is not None
    key = f"txn-{uuid.uuid4().hex}"
    fence = writer.claim(key, "-", lease=30, ttl=60).record.fence
    assert writer.complete(key, fence, encoded, ttl=60)
    assert inner.get(key).result.startswith(b"\x02S")  # type: ignore[union-attr]

    async def main() -> None:
        outcome = await adynamodb_transaction(store, key, [], result={"report": "other"})  # type: ignore[arg-type]
        assert outcome.replayed
        assert outcome.result == value
        assert (await store.aclaim(key, "-", lease=30, ttl=60)).record.result == encoded
        assert (await store.aget(key)).result == encoded  # type: ignore[union-attr]
        (claim,) = await store.aclaim_many([(key, "-", 30.0, 60.0)])  # type: ignore[attr-defined]
        assert claim.record.result == encoded
        await store.aclose()

    asyncio.run(main())
    assert threaded == ([] if client == "aiobotocore" else ["_fetch"] * 4)
    assert writer.delete(key)
    assert objects(s3, s3_bucket, prefix) == {}
    inner.close()
