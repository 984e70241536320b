"""An SQS consumer with partial batch responses: each message is processed once, a failing
message is reported in ``batchItemFailures`` so only it is redelivered.

Deploy with ``FunctionResponseTypes: [ReportBatchItemFailures]`` on the event source
mapping; the store comes from ``IDEMPOTENCE_STORE`` (e.g. ``dynamodb://idempotency``).
"""

from __future__ import annotations

import json
from typing import Any

from idempotence import Idempotency

idem = Idempotency(ttl=24 * 3600)  # longer than visibility timeout x maxReceiveCount

shipped: list[str] = []  # stands for the side effect (an API call, a write)


def ship(record: dict[str, Any]) -> str:
    """Runs once per message id; raising reports the message as failed."""
    order = json.loads(record["body"])
    if "order_id" not in order:
        raise ValueError("message without order_id")
    shipped.append(order["order_id"])
    return order["order_id"]


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return idem.process_batch(event, ship, context=context)
