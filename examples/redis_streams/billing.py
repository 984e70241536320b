"""Billing consumer: charges each order of the ``orders`` Redis stream once, however often
the order is delivered (a consumer died before XACK) or published (a producer retried).

Run a worker: ``REDIS_URL=redis://localhost:6379/0 python billing.py``;
publish: ``redis-cli XADD orders '*' order_id o-1 amount_cents 1250``.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

# --8<-- [start:consumer]
import redis

from idempotence import Idempotency
from idempotence.consumer import IdempotentConsumer
from idempotence.consumer.redis_streams import RedisStreamConsumer

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
client = redis.Redis.from_url(REDIS_URL)
# Records live 7 days; a consumer that dies mid-order frees the order 30 s later.
idem = Idempotency(REDIS_URL, ttl=7 * 24 * 3600, lease=30)


def charge(order: dict[str, Any]) -> dict[str, Any]:
    """The side effect: add the amount to the customer's balance."""
    client.hincrby("balances", order["customer"], int(order["amount_cents"]))
    return {"charged": order["order_id"], "amount_cents": int(order["amount_cents"])}


# One charge per order_id (the business key), however many entries carry it.
billing = IdempotentConsumer(charge, idem, key="order_id", namespace="billing.charge")

worker = RedisStreamConsumer(
    client,
    stream="orders",
    group="billing",
    consumer_name=f"billing-{socket.gethostname()}-{os.getpid()}",
    consumer=billing,
    min_idle=30,  # reclaim entries a dead consumer left pending (>= the lease)
    dead_letter_stream="orders:dead",  # reused order ids, entries without one
)
# --8<-- [end:consumer]


# --8<-- [start:async]
async def async_worker(stop: asyncio.Event | None = None) -> None:
    """The same worker on redis.asyncio, until ``stop`` is set."""
    import redis.asyncio

    from idempotence.consumer.redis_streams import AsyncRedisStreamConsumer

    aclient = redis.asyncio.Redis.from_url(REDIS_URL, socket_timeout=10)

    async def charge_async(order: dict[str, Any]) -> dict[str, Any]:
        await aclient.hincrby("balances", order["customer"], int(order["amount_cents"]))
        return {"charged": order["order_id"]}

    consumer = IdempotentConsumer(charge_async, idem, key="order_id", namespace="billing.charge")
    loop = AsyncRedisStreamConsumer(
        aclient, "orders", "billing", f"billing-async-{os.getpid()}", consumer, min_idle=30
    )
    try:
        await loop.run(stop)
    finally:
        await aclient.aclose()


# --8<-- [end:async]


if __name__ == "__main__":
    worker.run()
