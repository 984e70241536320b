"""The order service example (examples/orders) against DynamoDB and SQS on a moto server,
invoked with Lambda events in AWS's documented formats."""

from __future__ import annotations

import copy
import importlib.util
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests import cfn_lint, moto_server
from tests.aws_lambda.events import FakeContext, load

pytest.importorskip("boto3")
import boto3

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "orders"
REGION = "us-east-1"


@pytest.fixture
def app(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh import of examples/orders/app.py, configured as template.yaml does, with
    its own idempotency table, orders table and queue on the moto server."""
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", dynamodb_endpoint)
    monkeypatch.setenv("IDEMPOTENCY_TABLE", f"idempotency-{suffix}")
    monkeypatch.setenv("ORDERS_TABLE", f"orders-{suffix}")
    ddb = boto3.client("dynamodb", region_name=REGION)
    ddb.create_table(
        TableName=f"orders-{suffix}",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "order_id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "order_id", "KeyType": "HASH"}],
    )
    sqs = boto3.client("sqs", region_name=REGION)
    queue_url = sqs.create_queue(
        QueueName=f"payments-{suffix}", Attributes={"VisibilityTimeout": "0"}
    )["QueueUrl"]
    monkeypatch.setenv("PAYMENTS_QUEUE_URL", queue_url)
    spec = importlib.util.spec_from_file_location(f"orders_app_{suffix}", EXAMPLE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.idem.store.create_table()
    yield module
    module.idem.store.close()


def post_order(body: dict[str, Any], key: str | None, *, principal: str = "user|a1") -> dict:
    """An API Gateway REST proxy event for ``POST /orders``."""
    event = load("apigw_rest")
    for field in ("headers", "multiValueHeaders"):
        event[field].pop("Idempotency-Key")
        if key is not None:
            event[field]["Idempotency-Key"] = [key] if field == "multiValueHeaders" else key
    event["requestContext"]["requestId"] = str(uuid.uuid4())  # every delivery has its own
    event["requestContext"]["authorizer"]["principalId"] = principal
    event["body"] = json.dumps(body)
    return event


def receive(app: ModuleType) -> dict[str, Any]:
    """Receive the queued messages and build the SQS event Lambda would deliver."""
    sqs = app.sqs()
    url = app.os.environ["PAYMENTS_QUEUE_URL"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    messages = sqs.receive_message(
        QueueUrl=url, MaxNumberOfMessages=10, AttributeNames=["All"], WaitTimeSeconds=0
    ).get("Messages", [])
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m["Attributes"],
                "messageAttributes": {},
                "md5OfBody": m["MD5OfBody"],
                "eventSource": "aws:sqs",
                "eventSourceARN": arn,
                "awsRegion": REGION,
            }
            for m in messages
        ]
    }


def order(app: ModuleType, order_id: str) -> dict[str, Any]:
    item = app.dynamodb().get_item(
        TableName=app.os.environ["ORDERS_TABLE"], Key={"order_id": {"S": order_id}}
    )["Item"]
    return {k: next(iter(v.values())) for k, v in item.items()}


def test_duplicate_post_creates_one_order(app: ModuleType) -> None:
    first = app.create_order(post_order({"amount": 4200}, "k-1"), FakeContext())
    again = app.create_order(post_order({"amount": 4200}, "k-1"), FakeContext())
    assert first["statusCode"] == again["statusCode"] == 201
    assert json.loads(again["body"]) == json.loads(first["body"])
    assert again["headers"]["Idempotent-Replayed"] == "true"  # the shape the app returned
    assert len(receive(app)["Records"]) == 1  # one payment queued
    order_id = json.loads(first["body"])["order_id"]
    assert order(app, order_id)["status"] == "PENDING"


def test_post_refusals(app: ModuleType) -> None:
    missing = app.create_order(post_order({"amount": 100}, None), None)
    assert missing["statusCode"] == 400
    app.create_order(post_order({"amount": 100}, "k-2"), None)
    reused = app.create_order(post_order({"amount": 999}, "k-2"), None)
    assert reused["statusCode"] == 422
    assert reused["multiValueHeaders"]["content-type"] == ["application/problem+json"]
    # another caller may use the same key value: its own order
    other = app.create_order(post_order({"amount": 100}, "k-2", principal="user|b2"), None)
    assert other["statusCode"] == 201
    assert "Idempotent-Replayed" not in other["headers"]
    assert len(receive(app)["Records"]) == 2


def test_each_order_is_charged_once_across_redeliveries(app: ModuleType) -> None:
    ids = [
        json.loads(app.create_order(post_order({"amount": n}, f"k-{n}"), None)["body"])["order_id"]
        for n in (100, 200, 300)
    ]
    batch = receive(app)
    assert len(batch["Records"]) == 3
    assert app.charge_payments(batch, FakeContext()) == {"batchItemFailures": []}
    # the batch is delivered again (visibility timeout lapsed): new receipt handles
    again = receive(app)
    assert {r["messageId"] for r in again["Records"]} == {r["messageId"] for r in batch["Records"]}
    assert {r["receiptHandle"] for r in again["Records"]}.isdisjoint(
        r["receiptHandle"] for r in batch["Records"]
    )
    assert app.charge_payments(again, FakeContext()) == {"batchItemFailures": []}
    assert Counter(o for o, _ in app.gateway.charges) == dict.fromkeys(ids, 1)
    assert all(order(app, i)["status"] == "PAID" for i in ids)


def test_failed_charge_is_reported_and_retried_alone(app: ModuleType) -> None:
    for n in (100, 200):
        app.create_order(post_order({"amount": n}, f"k-{n}"), None)
    batch = receive(app)
    real = app.gateway.charge
    declined = json.loads(batch["Records"][0]["body"])["order_id"]

    def flaky(order_id: str, amount: int) -> str:
        if order_id == declined:
            raise ConnectionError("gateway timeout")
        return real(order_id, amount)

    app.gateway.charge = flaky
    response = app.charge_payments(batch, FakeContext())
    assert response == {"batchItemFailures": [{"itemIdentifier": batch["Records"][0]["messageId"]}]}
    assert order(app, declined)["status"] == "PENDING"
    app.gateway.charge = real
    assert app.charge_payments(receive(app), FakeContext()) == {"batchItemFailures": []}
    assert sorted(o for o, _ in app.gateway.charges) == sorted(
        json.loads(r["body"])["order_id"] for r in batch["Records"]
    )
    assert order(app, declined)["status"] == "PAID"


def test_duplicate_message_for_one_order_charges_once(app: ModuleType) -> None:
    app.create_order(post_order({"amount": 500}, "k-500"), None)
    batch = receive(app)
    duplicate = copy.deepcopy(batch["Records"][0])
    duplicate["messageId"] = str(uuid.uuid4())  # the producer sent it twice
    batch["Records"].append(duplicate)
    assert app.charge_payments(batch, FakeContext()) == {"batchItemFailures": []}
    assert len(app.gateway.charges) == 1


def test_paid_transition_happens_once(app: ModuleType) -> None:
    body = app.create_order(post_order({"amount": 700}, "k-700"), None)["body"]
    order_id = json.loads(body)["order_id"]
    assert app.mark_paid(order_id, "ch_1") is True
    assert app.mark_paid(order_id, "ch_2") is False
    assert order(app, order_id)["charge_id"] == "ch_1"


cfn_lint.register("orders/template.yaml", EXAMPLE / "template.yaml")


def test_template_passes_cfn_lint() -> None:
    cfn_lint.assert_passes("orders/template.yaml")


def test_docs_include_the_example_files_verbatim() -> None:
    """docs/lambda.md embeds the example files; they must not drift from the tested code."""
    import re

    root = EXAMPLE.parents[1]
    doc = (root / "docs" / "lambda.md").read_text()
    blocks = re.findall(r"<!-- include: (\S+) [^>]*-->\n```\w+\n(.*?)```\n", doc, re.DOTALL)
    assert {path for path, _ in blocks} == {
        "examples/orders/app.py",
        "examples/orders/template.yaml",
    }
    for path, code in blocks:
        assert code == (root / path).read_text(), f"docs/lambda.md is out of date for {path}"
