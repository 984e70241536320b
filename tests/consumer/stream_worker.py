"""A Redis Streams consumer process the SIGKILL tests start and kill.

``python -m tests.consumer.stream_worker URL STREAM GROUP NAME MODE``: handles the stream's
entries with a short lease (1 s, heartbeat on) and an effect counter (``INCR
{STREAM}:effects``, in the handler). MODE says where it stops for the test to kill it:

- ``body``: after the handler's effect, before its record is completed (it sleeps in the
  handler, its heartbeat renewing the lease while the process lives);
- ``ack``: after the record is completed, before ``XACK`` (it sleeps in the ack).

Either way it first sets ``{STREAM}:reached`` to MODE, so the test knows where it is.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis

from idempotence import Idempotency
from idempotence.consumer import IdempotentConsumer
from idempotence.consumer.redis_streams import RedisStreamConsumer
from idempotence.stores import RedisStore


def main(url: str, stream: str, group: str, name: str, mode: str) -> None:
    client = redis.Redis.from_url(url)
    store = RedisStore(url, prefix=f"{stream}:idem:")
    idem = Idempotency(store, lease=1.0)

    def handle(payload: dict[str, Any]) -> dict[str, Any]:
        client.incr(f"{stream}:effects")
        if mode == "body":
            client.set(f"{stream}:reached", "body")
            time.sleep(3600)
        return {"handled": payload["n"]}

    class StopBeforeAck(redis.Redis):
        def xack(self, *args: Any, **kwargs: Any) -> Any:
            client.set(f"{stream}:reached", "ack")
            time.sleep(3600)

    loop_client = StopBeforeAck.from_url(url) if mode == "ack" else client
    consumer = IdempotentConsumer(handle, idem, namespace="tests.stream_worker")
    loop = RedisStreamConsumer(
        loop_client, stream, group, name, consumer, min_idle=60.0, start_id="0", block=0.2
    )
    client.set(f"{stream}:ready", "1")
    loop.run()


if __name__ == "__main__":
    main(*sys.argv[1:6])
