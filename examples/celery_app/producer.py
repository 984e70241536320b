"""Sends tasks to the workers of ``tasks.py``: twice the same charge (one charge happens,
both results are the first charge), and a charge keyed by the message header instead of
its arguments."""

from __future__ import annotations

import sys
import uuid

from tasks import charge


# --8<-- [start:send]
def charge_twice(order_id: str, amount_cents: int) -> tuple[dict[str, str], dict[str, str]]:
    """The same arguments twice (two messages, two task ids): one charge, one result. A
    copy delivered while the first runs is retried when the running claim's lease ends
    (60 s in tasks.py), so its result can take up to a lease to arrive."""
    first = charge.delay(order_id, amount_cents)
    second = charge.delay(order_id, amount_cents)
    return first.get(timeout=30), second.get(timeout=90)


def charge_with_key(request_id: str, order_id: str, amount_cents: int) -> dict[str, str]:
    """Keyed by the client's request id: a resend of that request is one charge, even if
    its arguments were rebuilt (a new one with other arguments fails: KeyReuseError)."""
    result = charge.apply_async((order_id, amount_cents), headers={"idempotency_key": request_id})
    return result.get(timeout=30)


# --8<-- [end:send]

if __name__ == "__main__":
    prefix = sys.argv[1] if len(sys.argv) > 1 else uuid.uuid4().hex[:8]
    print(charge_twice(f"order-{prefix}-1", 1250))
    request = uuid.uuid4().hex
    print(charge_with_key(request, f"order-{prefix}-2", 990))
    print(charge_with_key(request, f"order-{prefix}-2", 990))
