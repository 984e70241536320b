"""Event source detection and stable record identity (pure)."""

from __future__ import annotations

import copy

import pytest

from idempotence import MissingKeyError
from idempotence._keys import digest
from idempotence.aws_lambda import Source, detect, item_identifier, record_content, record_id
from idempotence.aws_lambda._sources import event_content, event_key_material
from tests.aws_lambda.events import load, redeliver

SAMPLES = {
    "apigw_rest": Source.API_GATEWAY_REST,
    "apigw_http": Source.API_GATEWAY_HTTP,
    "alb": Source.ALB,
    "function_url": Source.FUNCTION_URL,
    "sqs": Source.SQS,
    "sqs_fifo": Source.SQS,
    "sns": Source.SNS,
    "eventbridge": Source.EVENTBRIDGE,
    "s3": Source.S3,
    "kinesis": Source.KINESIS,
    "dynamodb_stream": Source.DYNAMODB_STREAMS,
}


@pytest.mark.parametrize(("name", "source"), SAMPLES.items())
def test_detects_every_sample_event(name: str, source: Source) -> None:
    assert detect(load(name)) is source


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"order_id": "o-1"},
        [1, 2],
        "text",
        None,
        {"Records": []},
        {"Records": [{"eventSource": "aws:unknown"}]},
        {"Records": [{"eventSource": 3}]},
        {"requestContext": {}},
    ],
)
def test_unknown_events(event: object) -> None:
    assert detect(event) is Source.UNKNOWN


def test_rest_api_payload_v1_of_http_api_is_rest_shaped() -> None:
    event = load("apigw_rest")
    event["version"] = "1.0"
    assert detect(event) is Source.API_GATEWAY_REST


def test_sqs_redelivery_has_same_ids_and_content() -> None:
    first = load("sqs")
    again = redeliver(first, receive_count=5)
    assert first != again
    for a, b in zip(first["Records"], again["Records"], strict=True):
        assert a["receiptHandle"] != b["receiptHandle"]
        assert record_id(Source.SQS, a) == record_id(Source.SQS, b)
        assert digest(record_content(Source.SQS, a)) == digest(record_content(Source.SQS, b))
    assert event_key_material(Source.SQS, first) == event_key_material(Source.SQS, again)
    assert digest(event_content(Source.SQS, first)) == digest(event_content(Source.SQS, again))


def test_sqs_standard_uses_message_id() -> None:
    record = load("sqs")["Records"][0]
    assert record_id(Source.SQS, record) == ["sqs", "059f36b4-87a3-44ab-83d2-661975830a7d"]
    assert item_identifier(Source.SQS, record) == record["messageId"]


def test_sqs_fifo_uses_deduplication_id_per_queue() -> None:
    record = load("sqs_fifo")["Records"][0]
    resent = copy.deepcopy(record)
    resent["messageId"] = "another-message-id"  # sent again by the producer, same dedup id
    resent["attributes"]["SentTimestamp"] = "1573251999999"
    assert record_id(Source.SQS, record) == record_id(Source.SQS, resent)
    assert record_id(Source.SQS, record)[-1] == "ord-2001-charge"
    assert digest(record_content(Source.SQS, record)) == digest(record_content(Source.SQS, resent))
    other_queue = copy.deepcopy(record)
    other_queue["eventSourceARN"] = "arn:aws:sqs:us-east-2:123456789012:other.fifo"
    assert record_id(Source.SQS, other_queue) != record_id(Source.SQS, record)
    # the failure identifier is still the messageId Lambda knows
    assert item_identifier(Source.SQS, resent) == "another-message-id"


def test_other_sources_ids() -> None:
    assert record_id(Source.SNS, load("sns")["Records"][0]) == [
        "sns",
        "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
    ]
    assert record_id(Source.S3, load("s3")["Records"][0]) == [
        "s3",
        "lambda-artifacts-deafc19498e3f2df",
        "b21b84d653bb07b05b1e6b33684dc11b",
        "0C0F6F405D6ED209E1",
    ]
    kinesis = load("kinesis")["Records"][0]
    assert record_id(Source.KINESIS, kinesis) == ["kinesis", kinesis["eventID"]]
    assert item_identifier(Source.KINESIS, kinesis) == kinesis["kinesis"]["sequenceNumber"]
    ddb = load("dynamodb_stream")["Records"][1]
    assert record_id(Source.DYNAMODB_STREAMS, ddb) == ["dynamodb-streams", ddb["eventID"]]
    assert item_identifier(Source.DYNAMODB_STREAMS, ddb) == "4421584500000000017450439092"
    event = load("eventbridge")
    assert event_key_material(Source.EVENTBRIDGE, event) == ["eventbridge", event["id"]]


def test_multi_record_key_is_the_ordered_list_of_ids() -> None:
    event = load("sqs")
    swapped = copy.deepcopy(event)
    swapped["Records"].reverse()
    assert event_key_material(Source.SQS, event) != event_key_material(Source.SQS, swapped)
    assert event_key_material(Source.SQS, event) == [
        ["sqs", r["messageId"]] for r in event["Records"]
    ]


def test_unknown_event_key_is_the_whole_event() -> None:
    event = {"order_id": "o-1"}
    assert event_key_material(Source.UNKNOWN, event) == event
    assert event_content(Source.UNKNOWN, event) == event


def test_missing_id_is_a_missing_key() -> None:
    record = load("sqs")["Records"][0]
    del record["messageId"]
    with pytest.raises(MissingKeyError, match="messageId"):
        record_id(Source.SQS, record)


def test_item_identifier_only_for_batch_sources() -> None:
    with pytest.raises(ValueError, match="partial batch"):
        item_identifier(Source.SNS, load("sns")["Records"][0])
