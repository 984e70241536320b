"""dynamodb_transaction: business writes and the idempotency record in one
TransactWriteItems (moto server); duplicates replay without writing."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from idempotence import KeyReuseError, Status
from idempotence.effects import (
    adynamodb_transaction,
    dynamodb_transaction,
    dynamodb_transition_update,
)
from tests.effects.conftest import REGION

pytest.importorskip("boto3")
pytest.importorskip("aiobotocore")

N = 32
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(dynamodb_endpoint: str, dynamodb_table: str) -> Iterator[Any]:
    from idempotence.stores._dynamodb import DynamoDBStore

    store = DynamoDBStore(dynamodb_table, region=REGION, endpoint_url=dynamodb_endpoint)
    yield store
    store.close()


@pytest.fixture
def orders(dynamodb_endpoint: str) -> tuple[Any, str]:
    import boto3

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=dynamodb_endpoint)
    table = f"orders-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return client, table


def order_put(table: str, order_id: str, amount: int) -> dict[str, Any]:
    return {
        "Put": {
            "TableName": table,
            "Item": {"id": {"S": order_id}, "amount": {"N": str(amount)}},
        }
    }


def ledger_add(table: str, amount: int) -> dict[str, Any]:
    """A non-idempotent write: adds to a running total each time it commits."""
    return {
        "Update": {
            "TableName": table,
            "Key": {"id": {"S": "ledger"}},
            "UpdateExpression": "ADD amount_total :a",
            "ExpressionAttributeValues": {":a": {"N": str(amount)}},
        }
    }


def total(client: Any, table: str) -> int:
    item = client.get_item(TableName=table, Key={"id": {"S": "ledger"}}).get("Item")
    return int(item["amount_total"]["N"]) if item else 0


def test_writes_once_then_replays(store: Any, orders: tuple[Any, str]) -> None:
    client, table = orders
    key = f"orders.create#{uuid.uuid4().hex}"
    writes = [order_put(table, "o1", 5), ledger_add(table, 5)]
    first = dynamodb_transaction(store, key, writes, result={"order": "o1"}, payload={"a": 5})
    assert (first.replayed, first.result) == (False, {"order": "o1"})
    again = dynamodb_transaction(store, key, writes, result={"other": 0}, payload={"a": 5})
    assert again.replayed
    assert again.result == {"order": "o1"}  # type: ignore[comparison-overlap]
    assert total(client, table) == 5
    record = store.get(key)  # the record DynamoDBStore reads
    assert record is not None
    assert record.status is Status.COMPLETED
    with pytest.raises(KeyReuseError):
        dynamodb_transaction(store, key, writes, payload={"a": 6})


def test_business_condition_failure_propagates(store: Any, orders: tuple[Any, str]) -> None:
    client, table = orders
    key = f"k#{uuid.uuid4().hex}"
    client.put_item(TableName=table, Item={"id": {"S": "o1"}, "status": {"S": "SHIPPED"}})
    move = dynamodb_transition_update(table, {"id": "o1"}, "status", "PENDING", "PROCESSING")
    with pytest.raises(Exception, match="TransactionCanceled") as info:
        dynamodb_transaction(store, key, [move, ledger_add(table, 1)])
    assert "TransactionCanceledException" in type(info.value).__name__
    assert store.get(key) is None  # nothing committed, the key is free
    assert total(client, table) == 0


def test_32_concurrent_duplicates(store: Any, orders: tuple[Any, str]) -> None:
    client, table = orders
    key = f"k#{uuid.uuid4().hex}"
    barrier = threading.Barrier(N)

    def call(_: int) -> bool:
        barrier.wait()
        for _attempt in range(20):  # moto answers overlapping transactions with conflicts
            try:
                return dynamodb_transaction(store, key, [ledger_add(table, 1)], result=1).replayed
            except Exception as exc:
                if "TransactionConflict" not in str(exc):
                    raise
        raise AssertionError("never settled")

    with ThreadPoolExecutor(N) as pool:
        replayed = list(pool.map(call, range(N)))
    assert replayed.count(False) == 1
    assert total(client, table) == 1


async def test_async(store: Any, orders: tuple[Any, str]) -> None:
    client, table = orders
    key = f"k#{uuid.uuid4().hex}"
    outcomes = [
        await adynamodb_transaction(store, key, [ledger_add(table, 2)], result=[1])
        for _ in range(3)
    ]
    assert [o.replayed for o in outcomes] == [False, True, True]
    assert outcomes[-1].result == [1]
    assert total(client, table) == 2
    await store.aclose()


def test_too_many_writes(store: Any) -> None:
    with pytest.raises(ValueError, match="at most 99"):
        dynamodb_transaction(store, "k", [{}] * 100)


WORKER = """
import os, signal, sys
from idempotence.effects import dynamodb_transaction
from idempotence.stores._dynamodb import DynamoDBStore
from tests.effects.test_dynamodb_transaction import ledger_add
endpoint, records, table, key, crash = sys.argv[1:6]
store = DynamoDBStore(records, region="us-east-1", endpoint_url=endpoint)
if crash == "before-send":
    os.kill(os.getpid(), signal.SIGKILL)
outcome = dynamodb_transaction(store, key, [ledger_add(table, 10)], result="charged")
if crash == "after-commit":
    os.kill(os.getpid(), signal.SIGKILL)
print("replayed" if outcome.replayed else "ran", outcome.result)
"""


def test_killed_process(
    store: Any, orders: tuple[Any, str], dynamodb_endpoint: str, dynamodb_table: str
) -> None:
    client, table = orders
    key = f"k#{uuid.uuid4().hex}"

    def run(crash: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", WORKER, dynamodb_endpoint, dynamodb_table, table, key, crash]
        return subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ)
        )

    assert run("before-send").returncode == -signal.SIGKILL
    assert total(client, table) == 0
    assert run("after-commit").returncode == -signal.SIGKILL  # committed, answer lost
    assert total(client, table) == 10
    retry = run("none")
    assert retry.returncode == 0, retry.stderr
    assert retry.stdout.split() == ["replayed", "charged"]
    assert total(client, table) == 10


def test_record_item_reused_after_retention(store: Any, orders: tuple[Any, str]) -> None:
    client, table = orders
    key = f"k#{uuid.uuid4().hex}"
    before = store.clock()
    assert not dynamodb_transaction(store, key, [ledger_add(table, 1)], ttl=0.001).replayed
    item = client.get_item(TableName=store.table, Key=store._key(key), ConsistentRead=True)
    first = int(item["Item"]["fence"]["N"])
    assert int(before * 1000) <= first <= int(store.clock() * 1000)  # a new item: clock ms
    asyncio.run(asyncio.sleep(0.01))
    again = dynamodb_transaction(store, key, [ledger_add(table, 1)], result=None, ttl=60)
    assert not again.replayed  # retention over: a new operation
    record = store.get(key)
    assert record is not None
    assert record.fence == first + 1  # the item was kept: taken over


@dataclasses.dataclass(frozen=True)
class Receipt:
    order_id: str
    amount: int


def test_a_class_result_type_does_not_name_is_refused_before_writing(
    store: Any, orders: tuple[Any, str]
) -> None:
    from idempotence import UnencodableError

    client, table = orders
    key = f"orders.create#{uuid.uuid4().hex}"
    writes = [order_put(table, "o9", 9), ledger_add(table, 9)]
    before = total(client, table)
    with pytest.raises(UnencodableError, match="replay would not rebuild"):
        dynamodb_transaction(store, key, writes, result=Receipt("o9", 9), payload={"a": 9})
    assert total(client, table) == before  # nothing was written
    assert store.get(key) is None
    first = dynamodb_transaction(
        store, key, writes, result=Receipt("o9", 9), payload={"a": 9}, result_type=Receipt
    )
    again = dynamodb_transaction(
        store, key, writes, result=Receipt("x", 0), payload={"a": 9}, result_type=Receipt
    )
    assert (first.replayed, again.replayed) == (False, True)
    assert again.result == Receipt("o9", 9)
    assert total(client, table) == before + 9
