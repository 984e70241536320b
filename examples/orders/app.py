"""The order service: create orders over HTTP, charge each one exactly once from a queue.

- ``create_order``: ``POST /orders`` behind API Gateway. Clients send an
  ``Idempotency-Key``; a retried request gets the first response back (with
  ``Idempotent-Replayed: true``) instead of a second order and a second queued charge.
- ``charge_payments``: the SQS consumer. Each message is processed once per order
  (``process_batch`` keys it on the order id), a failing message is reported in
  ``batchItemFailures`` so only it is retried, and the order moves PENDING -> PAID with a
  conditional update, so even a charge that ran twice could never pay an order twice.

Configuration (set by ``template.yaml``): ``IDEMPOTENCY_TABLE``, ``ORDERS_TABLE``,
``PAYMENTS_QUEUE_URL``.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from typing import Any

import boto3
from botocore.exceptions import ClientError

from idempotence import Idempotency
from idempotence.stores import DynamoDBStore

idem = Idempotency(DynamoDBStore(os.environ.get("IDEMPOTENCY_TABLE", "idempotency")), ttl=86400)


@functools.cache
def dynamodb() -> Any:
    """The DynamoDB client of this process (reused across warm invocations)."""
    return boto3.client("dynamodb")


@functools.cache
def sqs() -> Any:
    """The SQS client of this process."""
    return boto3.client("sqs")


def respond(status: int, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
    }


@idem.handler(required=True)
def create_order(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """``POST /orders``: store a PENDING order and queue its payment."""
    order = json.loads(event["body"] or "{}")
    if not isinstance(order.get("amount"), int) or order["amount"] <= 0:
        return respond(400, {"error": "amount must be a positive integer (cents)"})
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    dynamodb().put_item(
        TableName=os.environ["ORDERS_TABLE"],
        Item={
            "order_id": {"S": order_id},
            "status": {"S": "PENDING"},
            "amount": {"N": str(order["amount"])},
            "customer": {"S": str(order.get("customer", "anonymous"))},
        },
    )
    sqs().send_message(
        QueueUrl=os.environ["PAYMENTS_QUEUE_URL"],
        MessageBody=json.dumps({"order_id": order_id, "amount": order["amount"]}),
    )
    return respond(201, {"order_id": order_id, "status": "PENDING"})


class PaymentGateway:
    """Stand-in for the card processor: records each charge (a real one would bill)."""

    def __init__(self) -> None:
        self.charges: list[tuple[str, int]] = []

    def charge(self, order_id: str, amount: int) -> str:
        self.charges.append((order_id, amount))
        return f"ch_{uuid.uuid4().hex[:16]}"


gateway = PaymentGateway()


def mark_paid(order_id: str, charge_id: str) -> bool:
    """PENDING -> PAID, once: the update only applies while the order is PENDING.
    Returns whether this call made the transition."""
    try:
        dynamodb().update_item(
            TableName=os.environ["ORDERS_TABLE"],
            Key={"order_id": {"S": order_id}},
            UpdateExpression="SET #s = :paid, charge_id = :charge",
            ConditionExpression="#s = :pending",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={
                ":paid": {"S": "PAID"},
                ":pending": {"S": "PENDING"},
                ":charge": {"S": charge_id},
            },
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False  # already PAID (or never PENDING): nothing to do
        raise
    return True


def charge(record: dict[str, Any]) -> dict[str, Any]:
    """Charge one order and mark it paid. Runs once per order id."""
    message = json.loads(record["body"])
    charge_id = gateway.charge(message["order_id"], message["amount"])
    return {"charge_id": charge_id, "transitioned": mark_paid(message["order_id"], charge_id)}


def charge_payments(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The SQS consumer (``FunctionResponseTypes: [ReportBatchItemFailures]``)."""
    return idem.process_batch(event, charge, context=context, key="powertools_json(body).order_id")
