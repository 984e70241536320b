"""An order service's Celery tasks: a charge sent twice, or redelivered after a worker died
in the middle of it, charges once, and every copy of the task returns the first charge.

Run a worker with ``celery -A tasks worker`` from this directory; the broker, the result
backend and the idempotency store are the Redis at ``CELERY_BROKER_URL`` /
``IDEMPOTENCE_STORE`` (default ``redis://127.0.0.1:6379/0``). ``producer.py`` sends tasks.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from celery import Celery

from idempotence import Idempotency
from idempotence.celery import IdempotentTask

# --8<-- [start:app]
BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("orders", broker=BROKER, backend=BROKER)
app.conf.update(
    task_acks_late=True,  # acknowledge after the task: a worker that dies leaves it queued
    task_reject_on_worker_lost=True,  # prefork: a killed child's message is redelivered too
    broker_transport_options={"visibility_timeout": 3600},  # longer than any task runs
)

# Records live for a day; a claim is honoured for 60 s after the last heartbeat.
idem = Idempotency(os.environ.get("IDEMPOTENCE_STORE", BROKER), ttl=24 * 3600, lease=60)


class Idempotent(IdempotentTask):
    """The base of this service's idempotent tasks: one store for all of them."""

    idempotency = idem


# --8<-- [end:app]

LEDGER = os.environ.get("LEDGER_PATH", "ledger.txt")


def payment_gateway_charge(order_id: str, amount_cents: int) -> str:
    """Stands for the side effect (a call to a payment provider): one ledger line each."""
    charge_id = uuid.uuid4().hex
    with open(LEDGER, "a", encoding="utf-8") as ledger:
        ledger.write(f"{charge_id} {order_id} {amount_cents}\n")
    return charge_id


# --8<-- [start:tasks]
@app.task(base=Idempotent, name="orders.charge")
def charge(order_id: str, amount_cents: int) -> dict[str, Any]:
    """Keyed by its arguments: the same order and amount is one charge."""
    charge_id = payment_gateway_charge(order_id, amount_cents)
    return {"order_id": order_id, "charge_id": charge_id}


@app.task(base=Idempotent, name="orders.send_receipt", idempotency_options={"key": "id"})
def send_receipt(order: dict[str, Any]) -> str:
    """Keyed by the order id only; the same id with other content fails (KeyReuseError)."""
    payment_gateway_charge(f"receipt:{order['id']}", 0)
    return f"receipt for {order['id']} sent to {order['email']}"


# --8<-- [end:tasks]
