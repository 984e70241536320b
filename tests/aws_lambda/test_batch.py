"""process_batch / aprocess_batch: one execution per record, partial batch responses."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import Counter
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock
from tests.aws_lambda.events import FakeContext, load, redeliver, sqs_message


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


@pytest.fixture
def idem(store: MemoryStore) -> Idempotency:
    return Idempotency(store)


def failures(response: dict[str, Any]) -> list[str]:
    return [f["itemIdentifier"] for f in response["batchItemFailures"]]


def test_partial_failure_and_redelivery_run_each_record_once(idem: Idempotency) -> None:
    runs: Counter[str] = Counter()
    broken = {"ord-1002"}

    def charge(record: dict[str, Any]) -> str:
        order = json.loads(record["body"])["order_id"]
        runs[order] += 1
        if order in broken:
            raise RuntimeError("payment gateway timeout")
        return order

    event = load("sqs")
    response = idem.process_batch(event, charge, context=FakeContext())
    assert failures(response) == ["2e1424d4-f796-459a-8184-9c92662be6da"]
    assert runs == {"ord-1001": 1, "ord-1002": 1}
    # SQS redelivers the whole batch (new receipt handles): only the failed record runs
    broken.clear()
    assert idem.process_batch(redeliver(event), charge) == {"batchItemFailures": []}
    assert runs == {"ord-1001": 1, "ord-1002": 2}
    assert idem.process_batch(redeliver(event, 3), charge) == {"batchItemFailures": []}
    assert runs == {"ord-1001": 1, "ord-1002": 2}


def test_fifo_stops_at_first_failure(idem: Idempotency) -> None:
    runs: list[str] = []

    def charge(record: dict[str, Any]) -> None:
        order = json.loads(record["body"])["order_id"]
        runs.append(order)
        if order == "ord-2002":
            raise RuntimeError("declined")

    event = load("sqs_fifo")
    ids = [r["messageId"] for r in event["Records"]]
    response = idem.process_batch(event, charge)
    assert failures(response) == ids[1:]
    assert runs == ["ord-2001", "ord-2002"]  # ord-2003 not attempted


def test_stop_on_failure_can_be_chosen(idem: Idempotency) -> None:
    def fail(record: dict[str, Any]) -> None:
        raise RuntimeError

    event = load("sqs")
    assert len(failures(idem.process_batch(event, fail, stop_on_failure=True))) == 2
    event = load("sqs_fifo")
    assert len(failures(idem.process_batch(event, fail, stop_on_failure=False))) == 3


@pytest.mark.parametrize("batch_claims", [True, False])
def test_record_in_progress_elsewhere_is_reported_not_run(
    idem: Idempotency, batch_claims: bool
) -> None:
    runs: Counter[str] = Counter()
    inner: list[dict[str, Any]] = []
    started: list[bool] = []
    event = load("sqs")

    def charge(record: dict[str, Any]) -> None:
        runs[record["messageId"]] += 1
        if not started:  # a concurrent invocation receives the same batch meanwhile
            started.append(True)
            inner.append(idem.process_batch(redeliver(event), charge, batch_claims=batch_claims))

    outer = idem.process_batch(event, charge, batch_claims=batch_claims)
    first, second = (r["messageId"] for r in event["Records"])
    assert failures(outer) == []
    if batch_claims:  # the outer invocation claimed its whole batch before running any
        assert failures(inner[0]) == [first, second]
        assert runs == {first: 1, second: 1}  # both ran in the outer invocation only
    else:
        assert failures(inner[0]) == [first]  # in progress in the outer invocation
        assert runs == {first: 1, second: 1}  # the second ran in the inner one, replayed here


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("kinesis", ("kinesis", "sequenceNumber")),
        ("dynamodb_stream", ("dynamodb", "SequenceNumber")),
    ],
)
def test_streams_report_sequence_numbers(
    idem: Idempotency, name: str, field: tuple[str, str]
) -> None:
    event = load(name)
    runs: list[str] = []

    def handle(record: dict[str, Any]) -> None:
        runs.append(record["eventID"])
        if record is event["Records"][0]:
            raise ValueError("bad record")

    response = idem.process_batch(event, handle)
    first = event["Records"][0]
    assert failures(response) == [first[field[0]][field[1]]]
    assert len(runs) == 2  # streams keep going unless stop_on_failure=True
    idem.process_batch(copy.deepcopy(event), handle)
    assert runs[2:] == [first["eventID"]]  # only the failed one again


def test_async_batch(idem: Idempotency) -> None:
    runs: Counter[str] = Counter()

    async def charge(record: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        runs[record["messageId"]] += 1
        if json.loads(record["body"])["order_id"] == "ord-2002" and runs[record["messageId"]] == 1:
            raise RuntimeError("declined once")
        return "ok"

    event = load("sqs_fifo")
    ids = [r["messageId"] for r in event["Records"]]
    first = asyncio.run(idem.aprocess_batch(event, charge, context=FakeContext()))
    assert failures(first) == ids[1:]
    second = asyncio.run(idem.aprocess_batch(redeliver(event), charge, context=FakeContext()))
    assert failures(second) == []
    assert runs == {ids[0]: 1, ids[1]: 2, ids[2]: 1}


def test_user_key_deduplicates_distinct_messages(idem: Idempotency) -> None:
    runs: list[str] = []

    def charge(record: dict[str, Any]) -> None:
        runs.append(record["messageId"])

    # the producer sent the same order twice (two messageIds): charge once
    event = {"Records": [sqs_message("ord-7"), sqs_message("ord-7"), sqs_message("ord-8")]}
    response = idem.process_batch(event, charge, key="powertools_json(body).order_id")
    assert failures(response) == []
    assert len(runs) == 2


def test_record_without_key_material_fails_alone(idem: Idempotency) -> None:
    runs: list[str] = []
    event = {"Records": [sqs_message("ord-1"), sqs_message("ord-2")]}
    event["Records"][0]["body"] = "{}"

    def charge(record: dict[str, Any]) -> None:
        runs.append(record["messageId"])

    response = idem.process_batch(event, charge, key="powertools_json(body).order_id")
    assert failures(response) == [event["Records"][0]["messageId"]]
    assert runs == [event["Records"][1]["messageId"]]


def test_lease_from_context(store: MemoryStore, idem: Idempotency) -> None:
    leases: list[float] = []

    def handle(record: dict[str, Any]) -> None:
        live = [r for r in store._records.values() if r.status.value == "IN_PROGRESS"]
        leases.extend(r.lease_expires_at - store.clock() for r in live)

    idem.process_batch(load("sqs"), handle, context=FakeContext(remaining_ms=9_000))
    # both records are claimed before the first runs and completed after the last (one
    # claim and one completion request for the batch): each handler sees both in progress
    assert leases == [pytest.approx(14.0)] * 4


def test_empty_batch_and_unsupported_sources(idem: Idempotency) -> None:
    assert idem.process_batch({"Records": []}, print) == {"batchItemFailures": []}
    with pytest.raises(ValueError, match="SQS, Kinesis, DynamoDB Streams and Kafka"):
        idem.process_batch(load("sns"), print)


@pytest.mark.parametrize("batch_claims", [True, False])
def test_a_failed_record_is_one_warning_line_without_its_content_or_traceback(
    idem: Idempotency, caplog: pytest.LogCaptureFixture, batch_claims: bool
) -> None:
    def charge(record: dict[str, Any]) -> None:
        raise RuntimeError(f"card {record['body']} declined")  # the text quotes the record

    event = load("sqs")
    with caplog.at_level("WARNING", logger="idempotence"):
        idem.process_batch(event, charge, context=FakeContext(), batch_claims=batch_claims)
    lines = [r for r in caplog.records if r.name == "idempotence"]
    assert len(lines) == len(event["Records"])
    for line in lines:
        assert line.exc_info is None
        assert "RuntimeError" in line.getMessage()
        assert line.idempotence_outcome == "record_failed"  # type: ignore[attr-defined]
        for record in event["Records"]:
            assert record["body"] not in line.getMessage()
