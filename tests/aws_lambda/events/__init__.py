"""Sample Lambda events in AWS's documented formats, and helpers to vary them."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def load(name: str) -> dict[str, Any]:
    """A fresh copy of sample event ``name`` (file name without ``.json``)."""
    return json.loads((HERE / f"{name}.json").read_text())  # type: ignore[no-any-return]


def redeliver(event: dict[str, Any], receive_count: int = 2) -> dict[str, Any]:
    """The same SQS batch delivered again: new receipt handles, receive counts and first
    receive timestamps, as SQS does after a visibility timeout."""
    again = copy.deepcopy(event)
    for record in again["Records"]:
        record["receiptHandle"] = base64.b64encode(uuid.uuid4().bytes * 4).decode()
        attrs = record["attributes"]
        attrs["ApproximateReceiveCount"] = str(receive_count)
        attrs["ApproximateFirstReceiveTimestamp"] = str(
            int(attrs["ApproximateFirstReceiveTimestamp"]) + 30_000
        )
    return again


def sqs_message(order_id: str, *, queue: str = "orders", **body: Any) -> dict[str, Any]:
    """One standard SQS record whose body is ``{"order_id": ..., **body}``."""
    record = copy.deepcopy(load("sqs")["Records"][1])
    record["messageId"] = str(uuid.uuid4())
    record["receiptHandle"] = base64.b64encode(uuid.uuid4().bytes * 4).decode()
    record["body"] = json.dumps({"order_id": order_id, **body})
    record["eventSourceARN"] = f"arn:aws:sqs:us-east-2:123456789012:{queue}"
    return record


class FakeContext:
    """The parts of Lambda's ``LambdaContext`` the library reads."""

    def __init__(self, remaining_ms: int = 30_000, function_name: str = "orders") -> None:
        self.remaining_ms = remaining_ms
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
