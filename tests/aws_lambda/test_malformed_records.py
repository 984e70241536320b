"""Batch and record-source rules: async record handlers, awaitables returned by sync ones,
malformed records raising documented errors whose messages never quote the record."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest

from idempotence import Idempotency, IdempotencyError, InvalidKeyError, MissingKeyError
from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock
from tests.aws_lambda.events import FakeContext, load

SECRET = "card-4111-1111-1111-1111"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=ManualClock())


@pytest.fixture
def idem(store: MemoryStore) -> Idempotency:
    return Idempotency(store)


class NoClaims(MemoryStore):
    def claim(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("nothing may be claimed")


# -- 4. the async rule --------------------------------------------------------------------
def test_process_batch_refuses_an_async_record_handler_before_claiming() -> None:
    idem = Idempotency(NoClaims())

    async def handle(record: dict[str, Any]) -> None: ...

    class Callable:
        async def __call__(self, record: dict[str, Any]) -> None: ...

    for fn in (handle, functools.partial(handle), Callable()):
        with pytest.raises(TypeError, match="aprocess_batch"):
            idem.process_batch(load("sqs"), fn, context=FakeContext())


def test_awaitable_from_a_sync_record_handler_releases_the_claim(idem: Idempotency) -> None:
    async def later() -> None: ...

    def broken(record: dict[str, Any]) -> Any:
        return later()

    with pytest.raises(TypeError, match="awaitable"):
        idem.process_batch(load("sqs"), broken, context=FakeContext(), namespace="charge")
    seen: list[str] = []

    def fixed(record: dict[str, Any]) -> None:  # the next deployment, same namespace
        seen.append(record["messageId"])

    response = idem.process_batch(load("sqs"), fixed, namespace="charge")
    assert response == {"batchItemFailures": []}  # redelivery runs every record
    assert len(seen) == 2


def test_aprocess_batch_still_runs_async_handlers(idem: Idempotency) -> None:
    seen: list[str] = []

    async def handle(record: dict[str, Any]) -> None:
        seen.append(record["messageId"])

    assert asyncio.run(idem.aprocess_batch(load("sqs"), handle)) == {"batchItemFailures": []}
    assert len(seen) == 2


# -- 3. malformed records -----------------------------------------------------------------
def ignore(record: dict[str, Any]) -> None:
    return None


def _secret_record(name: str, drop: tuple[str, ...]) -> dict[str, Any]:
    event = load(name)
    record = event["Records"][0]
    node = record
    for step in drop[:-1]:
        node = node[step]
    del node[drop[-1]]
    record["body"] = SECRET  # content a message must never quote
    record["note"] = SECRET
    return event


BATCH_CASES = [
    ("sqs", ("messageId",)),
    ("kinesis", ("kinesis",)),
    ("kinesis", ("kinesis", "sequenceNumber")),
    ("dynamodb_stream", ("dynamodb",)),
    ("dynamodb_stream", ("dynamodb", "SequenceNumber")),
]


@pytest.mark.parametrize(("name", "drop"), BATCH_CASES)
def test_malformed_batch_record_raises_without_quoting_it(name: str, drop: tuple[str, ...]) -> None:
    idem = Idempotency(NoClaims())
    with pytest.raises(MissingKeyError) as info:
        idem.process_batch(_secret_record(name, drop), ignore, context=FakeContext())
    assert SECRET not in str(info.value)
    assert drop[-1] in str(info.value)


HANDLER_CASES = [
    ("sqs", ("messageId",)),
    ("sns", ("Sns",)),
    ("s3", ("s3",)),
    ("s3", ("s3", "object", "sequencer")),
    ("kinesis", ("kinesis",)),
    ("kinesis", ("eventID",)),
    ("dynamodb_stream", ("dynamodb",)),
]


@pytest.mark.parametrize(("name", "drop"), HANDLER_CASES)
def test_malformed_event_record_raises_without_quoting_it(
    idem: Idempotency, name: str, drop: tuple[str, ...]
) -> None:
    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> None:
        raise AssertionError("must not run")

    with pytest.raises(MissingKeyError) as info:
        handler(_secret_record(name, drop), FakeContext())
    assert SECRET not in str(info.value)


def test_record_objects_of_the_wrong_type_are_invalid(idem: Idempotency) -> None:
    event = load("kinesis")
    event["Records"][0]["kinesis"] = SECRET
    with pytest.raises(InvalidKeyError) as info:
        idem.process_batch(event, ignore)
    assert SECRET not in str(info.value)
    event = load("sqs")
    event["Records"][0]["messageId"] = {"id": SECRET}
    with pytest.raises(InvalidKeyError) as info:
        idem.process_batch(event, ignore)
    assert SECRET not in str(info.value)


def test_sqs_record_without_body_fails_alone(idem: Idempotency) -> None:
    event = load("sqs")
    del event["Records"][0]["body"]
    seen: list[str] = []

    def handle(record: dict[str, Any]) -> None:
        seen.append(record["messageId"])

    response = idem.process_batch(event, handle)
    assert response == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert seen == [event["Records"][1]["messageId"]]


def test_required_key_selecting_nothing_does_not_quote(idem: Idempotency) -> None:
    @idem.handler(key="detail.order_id")
    def handler(event: dict[str, Any], context: Any) -> None: ...

    event = load("eventbridge")
    event["detail"] = {"note": SECRET}
    with pytest.raises(IdempotencyError) as info:
        handler(event, None)
    assert SECRET not in str(info.value)
    assert json.dumps(event)  # the event itself is intact
