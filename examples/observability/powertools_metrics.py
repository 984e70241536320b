"""Idempotency metrics through Powertools for AWS Lambda's Metrics (its EMF output).

Each idempotent call adds one count metric named after its outcome (``IdempotencyExecuted``,
``IdempotencyReplayed``, ``IdempotencyInProgress``...) and its store time; Powertools
flushes them as one EMF document when the invocation ends (``@metrics.log_metrics``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from idempotence import Idempotency, observe

metrics = Metrics(namespace="Orders", service="orders")


# --8<-- [start:observer]
def to_powertools(event: observe.Event) -> None:
    """An observer: one Powertools metric per idempotent call, by outcome."""
    name = "Idempotency" + event.outcome.value.title().replace("_", "")
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    metrics.add_metric(
        name="IdempotencyStoreTime",
        unit=MetricUnit.Milliseconds,
        value=event.store_duration * 1000,
    )


observe.subscribe(to_powertools)
# --8<-- [end:observer]

idem = Idempotency()  # the store from IDEMPOTENCE_STORE (e.g. dynamodb://idempotency)


@metrics.log_metrics
@idem.handler(key="order_id")
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {"order_id": event["order_id"], "status": "created"}
