"""An SQS consumer that records payments in PostgreSQL exactly once.

SQS delivers at least once: a message can arrive twice, and a batch is redelivered whole
when the function fails or times out. Each message is handled in ONE PostgreSQL
transaction that inserts the payment and marks the message processed (its idempotency
record), so a redelivered message finds its record and is skipped, and a crash before the
commit leaves neither the payment nor the mark behind: the retry then does it.

Deploy with ``template.yaml``; ``DATABASE_URL`` points at the database (``schema.sql``).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from psycopg_pool import ConnectionPool

from idempotence.effects import TransactionalIdempotency

log = logging.getLogger(__name__)


def message_key(record: dict[str, Any]) -> str:
    """FIFO queues: the deduplication id; standard queues: the message id."""
    attributes = record.get("attributes") or {}
    return str(attributes.get("MessageDeduplicationId") or record["messageId"])


def insert_payment(conn: Any, payment: dict[str, Any]) -> None:
    """The business write: not idempotent on its own (every call adds a row)."""
    conn.execute(
        "INSERT INTO payments (order_id, amount_cents) VALUES (%s, %s)",
        (payment["order_id"], payment["amount_cents"]),
    )


def make_handler(pool: ConnectionPool[Any]) -> Any:
    """The Lambda handler, over a connection pool."""
    txi = TransactionalIdempotency(pool)

    # A fixed namespace: renaming the function must not make old messages look new.
    @txi(key=message_key, fingerprint="body", namespace="payments.record")
    def record_payment(conn: Any, record: dict[str, Any]) -> dict[str, Any]:
        payment = json.loads(record["body"])
        insert_payment(conn, payment)
        return {"order_id": payment["order_id"]}

    def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        # Partial batch response (ReportBatchItemFailures): only failed messages come back.
        failures = []
        for record in event["Records"]:
            try:
                record_payment(record)
            except Exception:
                log.exception("message %s failed", record["messageId"])
                failures.append({"itemIdentifier": record["messageId"]})
        return {"batchItemFailures": failures}

    return handler


_handler: Any = None


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """Lambda entry point: one pool per execution environment, opened on first use."""
    global _handler
    if _handler is None:
        _handler = make_handler(ConnectionPool(os.environ["DATABASE_URL"], min_size=1, max_size=2))
    return _handler(event, context)  # type: ignore[no-any-return]
