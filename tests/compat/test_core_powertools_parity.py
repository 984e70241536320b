"""Powertools habits the core API (idempotence.Idempotency) accepts too: the
``powertools_base64_gzip`` JMESPath function (CloudWatch Logs subscriptions, bounded), and
Powertools event data classes (``SQSEvent``, ``APIGatewayProxyEventV2``) as payloads and
as Lambda handler events, keyed like the raw event."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2, SQSEvent

from idempotence import Idempotency, InvalidKeyError, KeyReuseError
from idempotence.compat import powertools as ours
from idempotence.stores import MemoryStore

EVENTS = Path(__file__).parent.parent / "aws_lambda" / "events"
CW_KEY = "powertools_json(powertools_base64_gzip(awslogs.data)).logEvents[0].id"


def _awslogs(payload: bytes) -> dict[str, Any]:
    return {"awslogs": {"data": base64.b64encode(gzip.compress(payload)).decode()}}


def _logs(event_id: str, message: str) -> dict[str, Any]:
    body = {"messageType": "DATA_MESSAGE", "logEvents": [{"id": event_id, "message": message}]}
    return _awslogs(json.dumps(body).encode())


def test_cloudwatch_logs_key_with_powertools_base64_gzip() -> None:
    runs: list[Any] = []

    @Idempotency(MemoryStore())(key=CW_KEY)
    def consume(event: dict[str, Any]) -> int:
        runs.append(event)
        return len(runs)

    event = _logs("e-1", "first")
    assert consume(event) == 1
    assert consume(json.loads(json.dumps(event))) == 1  # the redelivery
    assert consume(_logs("e-2", "another event")) == 2
    with pytest.raises(KeyReuseError):  # the same log event id with other data
        consume(_logs("e-1", "other text"))


@pytest.mark.parametrize("api", ["core", "compat"])
def test_gzip_bomb_is_refused_without_inflating_it(api: str, ddb: Any, pt_table: str) -> None:
    bomb = _awslogs(b"{" + b" " * (64 * 1024 * 1024) + b"}")  # ~64 KiB compressed
    if api == "core":

        @Idempotency(MemoryStore())(key=CW_KEY)
        def consume(event: dict[str, Any]) -> None: ...

        with pytest.raises(InvalidKeyError):
            consume(bomb)
    else:
        layer = ours.DynamoDBPersistenceLayer(table_name=pt_table, boto3_client=ddb)

        @ours.idempotent_function(
            data_keyword_argument="event",
            persistence_store=layer,
            config=ours.IdempotencyConfig(event_key_jmespath=CW_KEY),
        )
        def consume_compat(event: dict[str, Any]) -> None: ...

        with pytest.raises(InvalidKeyError):
            consume_compat(event=bomb)


def test_event_data_classes_are_payloads_keyed_like_the_raw_event() -> None:
    raw = json.loads((EVENTS / "sqs.json").read_text())
    runs: list[Any] = []
    idem = Idempotency(MemoryStore())

    @idem(key="Records[0].messageId")
    def consume(event: Any) -> str:
        runs.append(event)
        return "done"

    assert consume(SQSEvent(raw)) == consume(raw) == "done"
    assert len(runs) == 1


def test_lambda_handler_mode_accepts_event_data_classes() -> None:
    idem = Idempotency(MemoryStore())
    runs: list[Any] = []

    @idem.handler
    def sqs_handler(event: Any, context: Any) -> str:
        runs.append(event)
        return "ok"

    raw = json.loads((EVENTS / "sqs.json").read_text())
    assert sqs_handler(raw, None) == sqs_handler(SQSEvent(raw), None) == "ok"
    http = json.loads((EVENTS / "apigw_http.json").read_text())
    http.setdefault("headers", {})["idempotency-key"] = "parity-1"

    @idem.handler
    def http_handler(event: Any, context: Any) -> dict[str, Any]:
        runs.append(event)
        return {"statusCode": 201, "body": "created"}

    first = http_handler(APIGatewayProxyEventV2(http), None)
    replay = http_handler(http, None)
    assert first["statusCode"] == replay["statusCode"] == 201
    assert replay["headers"]["Idempotent-Replayed"] == "true"
    assert len(runs) == 2
