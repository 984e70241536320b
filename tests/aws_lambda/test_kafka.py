"""Kafka event sources (Amazon MSK ``aws:kafka`` and self-managed ``SelfManagedKafka``):
detection, stable ids, fingerprints, handler mode and batch mode with partial batch
responses (``{"partition": "<topic>-<n>", "offset": n}``), on every store."""

from __future__ import annotations

import base64
import copy
import json
from collections import Counter
from typing import Any

import pytest

from idempotence import Idempotency, InvalidKeyError, KeyReuseError, MissingKeyError
from idempotence.aws_lambda import (
    BATCH_SOURCES,
    RECORD_SOURCES,
    Source,
    detect,
    item_identifier,
    record_content,
    record_id,
    records_of,
)
from idempotence.stores import Store
from tests.aws_lambda.events import FakeContext, load
from tests.aws_lambda.test_lambda_stores import (  # the store fixture and what it uses
    dynamodb_endpoint,
    mysql_admin,
    postgres_admin,
    redis_ok,
    store,
)

__all__ = ["dynamodb_endpoint", "mysql_admin", "postgres_admin", "redis_ok", "store"]

KAFKA = {"msk": Source.MSK, "self_managed_kafka": Source.SELF_MANAGED_KAFKA}


def order_of(record: dict[str, Any]) -> str:
    """The order id in a Kafka record's base64 JSON value."""
    return str(json.loads(base64.b64decode(record["value"]))["order_id"])


def failures(response: dict[str, Any]) -> list[Any]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


@pytest.mark.parametrize(("name", "source"), KAFKA.items())
def test_detected_flattened_in_order_and_batch_capable(name: str, source: Source) -> None:
    event = load(name)
    assert detect(event) is source
    assert source in RECORD_SOURCES
    assert source in BATCH_SOURCES
    assert [order_of(r) for r in records_of(source, event)] == ["o-1", "o-2", "o-3"]


def test_self_managed_with_the_aws_prefix_is_detected() -> None:
    event = load("self_managed_kafka")
    event["eventSource"] = "aws:SelfManagedKafka"
    assert detect(event) is Source.SELF_MANAGED_KAFKA


@pytest.mark.parametrize(
    "event",
    [
        {"eventSource": "aws:kafka"},  # no records
        {"eventSource": "aws:kafka", "records": []},  # not grouped by topic-partition
        {"eventSource": "aws:other", "records": {}},
    ],
)
def test_kafka_lookalikes_are_unknown(event: dict[str, Any]) -> None:
    assert detect(event) is Source.UNKNOWN


@pytest.mark.parametrize(("name", "source"), KAFKA.items())
def test_id_is_topic_partition_offset_and_content_leaves_delivery_fields_out(
    name: str, source: Source
) -> None:
    first = records_of(source, load(name))[0]
    assert record_id(source, first) == [source.value, "mytopic", 0, 15]
    assert item_identifier(source, first) == {"partition": "mytopic-0", "offset": 15}
    later = copy.deepcopy(first)
    later["timestamp"] += 60_000  # fields outside the content: same fingerprint
    later["timestampType"] = "LOG_APPEND_TIME"
    assert record_content(source, later) == record_content(source, first)
    changed = copy.deepcopy(first)
    changed["value"] = base64.b64encode(b'{"order_id":"o-1","amount":99}').decode()
    assert record_content(source, changed) != record_content(source, first)
    # the same offset of another partition or topic is another record
    other = copy.deepcopy(first)
    other["partition"] = 1
    assert record_id(source, other) != record_id(source, first)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("offset", None, MissingKeyError),
        ("offset", "15", InvalidKeyError),
        ("partition", True, InvalidKeyError),
        ("topic", "", MissingKeyError),
    ],
)
def test_malformed_records_name_the_field_never_the_value(
    field: str, value: Any, error: type[Exception]
) -> None:
    record = records_of(Source.MSK, load("msk"))[0]
    record[field] = value
    with pytest.raises(error, match=field) as caught:
        record_id(Source.MSK, record)
    assert "order" not in str(caught.value)
    assert "mytopic" not in str(caught.value)


@pytest.mark.parametrize("name", KAFKA)
def test_batch_reports_failed_offsets_and_redelivery_runs_only_them(
    name: str, store: Store
) -> None:
    idem = Idempotency(store)
    runs: Counter[str] = Counter()
    broken = {"o-2"}

    def charge(record: dict[str, Any]) -> str:
        order = order_of(record)
        runs[order] += 1
        if order in broken:
            raise RuntimeError("payment gateway timeout")
        return order

    event = load(name)
    response = idem.process_batch(event, charge, context=FakeContext())
    assert failures(response) == [{"partition": "mytopic-0", "offset": 16}]
    assert runs == {"o-1": 1, "o-2": 1, "o-3": 1}  # not FIFO: later records still run
    broken.clear()
    # Lambda resumes mytopic-0 from offset 16: the batch comes again, only o-2 runs
    assert idem.process_batch(load(name), charge) == {"batchItemFailures": []}
    assert runs == {"o-1": 1, "o-2": 2, "o-3": 1}


def test_batch_with_another_value_at_a_done_offset_is_reported(store: Store) -> None:
    idem = Idempotency(store)
    seen: list[str] = []

    def charge(record: dict[str, Any]) -> None:
        seen.append(order_of(record))

    idem.process_batch(load("msk"), charge)
    reused = load("msk")
    reused["records"]["mytopic-1"][0]["value"] = base64.b64encode(b'{"order_id":"o-9"}').decode()
    seen.clear()
    response = idem.process_batch(reused, charge)
    assert failures(response) == [{"partition": "mytopic-1", "offset": 15}]
    assert seen == []  # the others replay, the reused offset is refused (KeyReuseError)


def test_async_batch_and_stop_on_failure() -> None:
    idem = Idempotency("memory://")
    runs: list[str] = []

    async def charge(record: dict[str, Any]) -> None:
        runs.append(order_of(record))
        if order_of(record) == "o-1":
            raise RuntimeError("down")

    response = asyncio_run(idem.aprocess_batch(load("msk"), charge, stop_on_failure=True))
    assert failures(response) == [
        {"partition": "mytopic-0", "offset": 15},
        {"partition": "mytopic-0", "offset": 16},
        {"partition": "mytopic-1", "offset": 15},
    ]
    assert runs == ["o-1"]


def test_handler_mode_keys_the_whole_batch(store: Store) -> None:
    idem = Idempotency(store)
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> int:
        calls.append(1)
        return len(calls)

    assert handler(load("self_managed_kafka"), FakeContext()) == 1
    assert handler(load("self_managed_kafka"), FakeContext()) == 1  # replayed
    regrouped = load("self_managed_kafka")
    regrouped["records"] = dict(reversed(list(regrouped["records"].items())))
    assert handler(regrouped, FakeContext()) == 2  # another batch (other order of records)
    changed = load("self_managed_kafka")
    changed["records"]["mytopic-0"][0]["value"] = base64.b64encode(b"{}").decode()
    with pytest.raises(KeyReuseError):
        handler(changed, FakeContext())


def asyncio_run(awaitable: Any) -> Any:
    import asyncio

    return asyncio.run(awaitable)
