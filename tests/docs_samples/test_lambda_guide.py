"""The samples of docs/lambda.md. The page includes this file's sections, so they run here
as written: on a DynamoDB table of the moto server, with AWS's sample events."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from idempotence import observe
from tests import moto_server
from tests.aws_lambda.events import FakeContext, load, sqs_message

pytest.importorskip("boto3")

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture


@pytest.fixture
def outcomes(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """The moto server as the DynamoDB endpoint, and the outcomes of every idempotent call."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    seen: Counter[str] = Counter()
    stop = observe.subscribe(lambda event: seen.update([event.outcome.value]))
    yield seen
    stop()


def batch(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def test_overview(outcomes: Counter[str]) -> None:
    handled: list[str] = []

    def handle_record(record: dict[str, Any]) -> None:
        handled.append(record["messageId"])

    # fmt: off
    # --8<-- [start:overview]
    from idempotence import Idempotency
    from idempotence.stores import DynamoDBStore

    idem = Idempotency(DynamoDBStore("idempotency"))   # or IDEMPOTENCE_STORE=dynamodb://idempotency

    @idem.handler
    def handler(event, context): ...                   # any event source, keys chosen for you

    def consumer(event, context):                      # SQS / Kinesis / DynamoDB Streams / Kafka
        return idem.process_batch(event, handle_record, context=context)
    # --8<-- [end:overview]
    # fmt: on

    idem.store.create_table()  # type: ignore[attr-defined]
    event = load("eventbridge")
    event["id"] = str(uuid.uuid4())
    assert handler(event, FakeContext()) is None
    assert handler(event, FakeContext()) is None  # the same event again: replayed
    assert outcomes == {"executed": 1, "replayed": 1}

    messages = batch(sqs_message("o-1"), sqs_message("o-2"))
    assert consumer(messages, FakeContext()) == {"batchItemFailures": []}
    assert consumer(messages, FakeContext()) == {"batchItemFailures": []}  # redelivered
    assert sorted(handled) == sorted(r["messageId"] for r in messages["Records"])


def test_process_batch(outcomes: Counter[str]) -> None:
    from idempotence import Idempotency
    from idempotence.stores import DynamoDBStore

    idem = Idempotency(DynamoDBStore("idempotency"))
    idem.store.create_table()  # type: ignore[attr-defined]
    handled: list[str] = []

    def handle_record(record: dict[str, Any]) -> None:
        handled.append(record["messageId"])

    async def ahandle_record(record: dict[str, Any]) -> None:
        handled.append(record["messageId"])

    # fmt: off
    # --8<-- [start:process-batch]
    def consumer(event, context):
        return idem.process_batch(event, handle_record, context=context)

    async def aconsumer(event, context):          # async record handler
        return await idem.aprocess_batch(event, ahandle_record, context=context)
    # --8<-- [end:process-batch]
    # fmt: on

    first = batch(sqs_message("o-1"), sqs_message("o-2"))
    second = batch(sqs_message("o-3"))
    for _ in range(2):  # every batch delivered twice
        assert consumer(first, FakeContext()) == {"batchItemFailures": []}
        assert asyncio.run(aconsumer(second, FakeContext())) == {"batchItemFailures": []}
    records = [*first["Records"], *second["Records"]]
    assert sorted(handled) == sorted(r["messageId"] for r in records)
    assert outcomes["executed"] == 3


def test_http_event_over_max_request_bytes_is_413() -> None:
    """docs/lambda.md lists 413 among the refusals of HTTP events: the handler never runs."""
    import json

    from idempotence import Idempotency
    from idempotence.stores import MemoryStore

    idem = Idempotency(MemoryStore())
    calls: list[int] = []

    @idem.handler(max_request_bytes=64)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return {"statusCode": 201, "body": "{}"}

    event = load("apigw_rest")
    event["body"] = json.dumps({"note": "x" * 100})
    response = handler(event, FakeContext())
    assert response["statusCode"] == 413
    assert json.loads(response["body"])["type"] == "urn:idempotence:problem:request-too-large"
    assert "x" * 20 not in response["body"]  # the refusal never quotes the request
    assert calls == []
    event["body"] = json.dumps({"note": "x"})  # within the limit: it runs
    assert handler(event, FakeContext())["statusCode"] == 201
    assert calls == [1]
