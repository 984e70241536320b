"""The Redis Streams loop against a real Redis (db 13): entries are acknowledged only
after their record completes, reclaimed entries keep their key, a process killed in either
crash window is recovered by another consumer, duplicates published twice have one effect."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency, KeyReuseError
from idempotence.consumer import Delivery, IdempotentConsumer, Outcome
from idempotence.consumer.redis_streams import (
    AsyncRedisStreamConsumer,
    RedisStreamConsumer,
    decode_fields,
)
from idempotence.stores import RedisStore
from tests.consumer.conftest import STREAMS_URL

ROOT = Path(__file__).resolve().parents[2]
STREAM, GROUP = "orders", "billing"


@pytest.fixture
def idem(rds: Any) -> Iterator[Idempotency]:
    store = RedisStore(STREAMS_URL, prefix="orders:idem:")
    yield Idempotency(store, lease=1.0)
    store.close()


def pending(rds: Any, stream: str = STREAM) -> int:
    return int(rds.xpending(stream, GROUP)["pending"])


def effects(rds: Any, stream: str = STREAM) -> int:
    return int(rds.get(f"{stream}:effects") or 0)


def counting(rds: Any, stream: str = STREAM) -> Any:
    def handle(payload: dict[str, Any]) -> dict[str, Any]:
        rds.incr(f"{stream}:effects")
        return {"handled": payload["order_id"]}

    return handle


def loop_of(rds: Any, consumer: IdempotentConsumer, name: str, **options: Any) -> Any:
    options.setdefault("min_idle", 0.5)
    options.setdefault("start_id", "0")
    options.setdefault("block", 0.1)
    return RedisStreamConsumer(rds, STREAM, GROUP, name, consumer, **options)


def poll_until(loop: Any, done: Any, timeout: float = 15.0) -> list[Delivery]:
    seen: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += loop.poll()
        if done(seen):
            return seen
    raise AssertionError(f"not done after {timeout}s: {seen}")


def test_an_entry_is_handled_recorded_and_acked(rds: Any, idem: Idempotency) -> None:
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders")
    loop = loop_of(rds, consumer, "w1")
    loop.poll(block=False)  # creates the group (start_id 0)
    entry = rds.xadd(STREAM, {"order_id": "o-1", "amount": "5"}).decode()
    [delivery] = loop.poll()
    assert delivery.outcome is Outcome.PROCESSED
    assert delivery.acked
    assert delivery.result == {"handled": "o-1"}
    assert delivery.message_id == f"{STREAM}/{entry}"
    assert pending(rds) == 0
    assert effects(rds) == 1
    record = idem.store.get(consumer.key_for(delivery.message_id, delivery.payload) or "")
    assert record is not None
    assert record.status.name == "COMPLETED"


def test_a_reclaimed_entry_maps_to_the_same_key_and_replays(rds: Any, idem: Idempotency) -> None:
    """Consumer A completes the record but never acks (its ack fails); B reclaims the
    entry with XAUTOCLAIM: same stable id, same key, replayed, acked, one effect."""
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders")
    a = loop_of(rds, consumer, "a")
    a.poll(block=False)
    rds.xadd(STREAM, {"order_id": "o-1"})

    class Lost(Exception):
        pass

    def lost_ack() -> None:
        raise Lost

    read = rds.xreadgroup(GROUP, "a", {STREAM: ">"}, count=1)
    entry_id, fields = read[0][1][0]
    payload = decode_fields(fields)
    with pytest.raises(Lost):
        consumer.process(a.message_id(entry_id.decode()), payload, lost_ack)
    assert effects(rds) == 1
    assert pending(rds) == 1
    b = loop_of(rds, consumer, "b")
    [delivery] = poll_until(b, lambda seen: seen)
    assert delivery.outcome is Outcome.REPLAYED
    assert delivery.result == {"handled": "o-1"}
    assert pending(rds) == 0
    assert effects(rds) == 1


def test_an_entry_of_a_running_delivery_is_left_pending(rds: Any, idem: Idempotency) -> None:
    """B reclaims an entry whose record A still holds in progress: RETRY, not acked."""
    consumer = IdempotentConsumer(
        counting(rds), Idempotency(idem.store, lease=30.0), namespace="t.orders"
    )
    loop_of(rds, consumer, "a").poll(block=False)
    rds.xadd(STREAM, {"order_id": "o-1"})
    read = rds.xreadgroup(GROUP, "a", {STREAM: ">"}, count=1)
    entry_id, fields = read[0][1][0]
    key = consumer.key_for(f"{STREAM}/{entry_id.decode()}", decode_fields(fields))
    assert key is not None
    fingerprint = consumer.op.fingerprint(decode_fields(fields))
    claim = idem.store.claim(key, fingerprint, lease=30.0, ttl=60.0)
    assert claim.acquired  # A's claim, as if A were running the handler
    b = loop_of(rds, consumer, "b", min_idle=0.05)
    time.sleep(0.1)
    [delivery] = b.poll(block=False)
    assert delivery.outcome is Outcome.RETRY
    assert not delivery.acked
    assert type(delivery.error).__name__ == "AlreadyInProgressError"
    assert pending(rds) == 1
    assert effects(rds) == 0


def test_a_failing_handler_leaves_the_entry_pending_and_a_reclaim_runs_it(
    rds: Any, idem: Idempotency
) -> None:
    calls: list[str] = []

    def flaky(payload: dict[str, Any]) -> str:
        calls.append(payload["order_id"])
        if len(calls) == 1:
            raise RuntimeError("downstream unavailable")
        rds.incr(f"{STREAM}:effects")
        return "ok"

    consumer = IdempotentConsumer(flaky, idem, namespace="t.flaky")
    loop = loop_of(rds, consumer, "w1", min_idle=0.3)
    loop.poll(block=False)
    rds.xadd(STREAM, {"order_id": "o-1"})
    [first] = loop.poll()
    assert first.outcome is Outcome.RETRY
    assert isinstance(first.error, RuntimeError)
    assert pending(rds) == 1
    [second] = poll_until(loop, lambda seen: seen)
    assert second.outcome is Outcome.PROCESSED
    assert second.result == "ok"
    assert pending(rds) == 0
    assert effects(rds) == 1
    assert calls == ["o-1", "o-1"]


def test_duplicates_published_twice_with_one_business_key_have_one_effect(
    rds: Any, idem: Idempotency
) -> None:
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders", key="order_id")
    loop = loop_of(rds, consumer, "w1")
    loop.poll(block=False)
    for _ in range(2):
        rds.xadd(STREAM, {"order_id": "o-7", "amount": "5"})
    deliveries = poll_until(loop, lambda seen: len(seen) == 2)
    assert [d.outcome for d in deliveries] == [Outcome.PROCESSED, Outcome.REPLAYED]
    assert deliveries[0].key == deliveries[1].key
    assert deliveries[1].result == {"handled": "o-7"}
    assert pending(rds) == 0
    assert effects(rds) == 1


def test_a_reused_business_key_goes_to_the_dead_letter_stream(rds: Any, idem: Idempotency) -> None:
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders", key="order_id")
    loop = loop_of(rds, consumer, "w1", dead_letter_stream="orders:dead")
    loop.poll(block=False)
    rds.xadd(STREAM, {"order_id": "o-7", "amount": "5"})
    second = rds.xadd(STREAM, {"order_id": "o-7", "amount": "9"}).decode()
    first, reused = poll_until(loop, lambda seen: len(seen) == 2)
    assert first.outcome is Outcome.PROCESSED
    assert reused.outcome is Outcome.DEAD_LETTER
    assert isinstance(reused.error, KeyReuseError)
    assert pending(rds) == 0
    assert effects(rds) == 1
    [(_, dead)] = rds.xrange("orders:dead")
    assert dead == {
        b"order_id": b"o-7",
        b"amount": b"9",
        b"idempotence-source": f"{STREAM}/{second}".encode(),
        b"idempotence-error": b"KeyReuseError",
    }


def test_without_a_dead_letter_stream_a_permanent_failure_stays_pending(
    rds: Any, idem: Idempotency
) -> None:
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders", key="order_id")
    loop = loop_of(rds, consumer, "w1")
    loop.poll(block=False)
    rds.xadd(STREAM, {"amount": "5"})  # no order_id: MissingKeyError
    [delivery] = loop.poll()
    assert delivery.outcome is Outcome.REJECTED
    assert not delivery.acked
    assert pending(rds) == 1
    assert effects(rds) == 0


def test_an_entry_decode_refuses_is_dead_lettered(rds: Any, idem: Idempotency) -> None:
    import json

    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders", key="order_id")
    loop = loop_of(
        rds,
        consumer,
        "w1",
        decode=lambda f: json.loads(f["data"]),
        dead_letter_stream="orders:dead",
    )
    loop.poll(block=False)
    rds.xadd(STREAM, {"data": "{not json"})
    rds.xadd(STREAM, {"data": json.dumps({"order_id": "o-1"})})
    bad, good = poll_until(loop, lambda seen: len(seen) == 2)
    assert bad.outcome is Outcome.DEAD_LETTER
    assert good.outcome is Outcome.PROCESSED
    assert pending(rds) == 0
    assert effects(rds) == 1
    [(_, dead)] = rds.xrange("orders:dead")
    assert dead[b"data"] == b"{not json"
    assert dead[b"idempotence-error"] == b"JSONDecodeError"


# -- a consumer process killed (SIGKILL) in each crash window ------------------------------
def start_worker(rds: Any, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.consumer.stream_worker",
            STREAMS_URL,
            STREAM,
            GROUP,
            "doomed",
            mode,
        ],
        cwd=ROOT,
        env=env,
    )
    wait_for(rds, f"{STREAM}:ready", worker)
    return worker


def wait_for(rds: Any, flag: str, worker: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while rds.get(flag) is None:
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, f"the worker never set {flag}"
        time.sleep(0.02)


def kill(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)


def rescuer(rds: Any) -> tuple[IdempotentConsumer, Any]:
    store = RedisStore(STREAMS_URL, prefix=f"{STREAM}:idem:")

    def handle_n(payload: dict[str, Any]) -> dict[str, Any]:
        rds.incr(f"{STREAM}:effects")
        return {"handled": payload["n"]}

    consumer = IdempotentConsumer(
        handle_n, Idempotency(store, lease=1.0), namespace="tests.stream_worker"
    )
    return consumer, loop_of(rds, consumer, "rescuer", min_idle=0.3)


def test_killed_after_the_record_completed_before_xack_the_reclaim_replays(rds: Any) -> None:
    """The window the record covers: the effect happened once and its record is complete;
    the entry reclaimed by another consumer is replayed and acked, never run again."""
    worker = start_worker(rds, "ack")
    try:
        rds.xadd(STREAM, {"n": "1"})
        wait_for(rds, f"{STREAM}:reached", worker)
    finally:
        kill(worker)
    assert effects(rds) == 1
    assert pending(rds) == 1
    _, loop = rescuer(rds)
    [delivery] = poll_until(loop, lambda seen: seen)
    assert delivery.outcome is Outcome.REPLAYED
    assert delivery.result == {"handled": "1"}
    assert effects(rds) == 1
    assert pending(rds) == 0


def test_killed_after_the_effect_before_the_record_completed_the_effect_repeats(
    rds: Any,
) -> None:
    """The window no record closes: the handler's effect is done but its record is still
    in progress when the process dies. The entry stays pending; reclaims find the key in
    progress (RETRY) until the dead consumer's lease lapses (1 s, no heartbeat any more);
    then the reclaimed entry takes the key over and runs the handler again: TWO effects.
    Only an effect committed with the record (idempotence.effects) closes this window."""
    worker = start_worker(rds, "body")
    try:
        rds.xadd(STREAM, {"n": "1"})
        wait_for(rds, f"{STREAM}:reached", worker)
        time.sleep(1.5)  # alive past one lease: its heartbeat keeps the key
    finally:
        kill(worker)
    assert effects(rds) == 1
    assert pending(rds) == 1
    _, loop = rescuer(rds)
    seen = poll_until(loop, lambda seen: any(d.acked for d in seen))
    assert seen[-1].outcome is Outcome.PROCESSED
    assert seen[-1].result == {"handled": "1"}
    assert all(d.outcome is Outcome.RETRY for d in seen[:-1])
    assert effects(rds) == 2
    assert pending(rds) == 0


# -- redis.asyncio ---------------------------------------------------------------------------
def test_async_loop_duplicates_and_reclaim(rds: Any, idem: Idempotency) -> None:
    import redis.asyncio

    async def scenario() -> list[Delivery]:
        client = redis.asyncio.Redis.from_url(STREAMS_URL)
        effects_seen: list[str] = []

        async def handle(payload: dict[str, Any]) -> dict[str, Any]:
            await client.incr(f"{STREAM}:effects")
            effects_seen.append(payload["order_id"])
            return {"handled": payload["order_id"]}

        consumer = IdempotentConsumer(handle, idem, namespace="t.async", key="order_id")
        loop = AsyncRedisStreamConsumer(
            client, STREAM, GROUP, "aw", consumer, min_idle=0.3, start_id="0", block=0.1
        )
        await loop.poll(block=False)
        await client.xadd(STREAM, {"order_id": "o-1"})
        await client.xadd(STREAM, {"order_id": "o-1"})
        await client.xadd(STREAM, {"order_id": "o-2"})
        seen: list[Delivery] = []
        for _ in range(50):
            seen += await loop.poll()
            if len(seen) == 3:
                break
        # an entry a dead consumer read (never acked) is reclaimed by this loop after min_idle
        await client.xadd(STREAM, {"order_id": "o-3"})
        await client.xreadgroup(GROUP, "dead", {STREAM: ">"}, count=1)
        await asyncio.sleep(0.4)
        seen += await loop.poll(block=False)
        await client.aclose()
        return seen

    seen = asyncio.run(scenario())
    assert [d.outcome for d in seen] == [
        Outcome.PROCESSED,
        Outcome.REPLAYED,
        Outcome.PROCESSED,
        Outcome.PROCESSED,
    ]
    assert seen[-1].result == {"handled": "o-3"}
    assert effects(rds) == 3
    assert pending(rds) == 0


def test_run_survives_an_unreachable_server_and_stops(
    rds: Any, idem: Idempotency, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    down = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.down")
    loop = RedisStreamConsumer(down, STREAM, GROUP, "w", consumer, min_idle=1.0)
    stop = threading.Event()
    timer = threading.Timer(0.8, stop.set)
    timer.start()
    with caplog.at_level("WARNING", logger="idempotence.consumer"):
        loop.run(stop, retry_every=0.1)
    timer.join()
    failures = [r for r in caplog.records if "poll of a Redis stream" in r.getMessage()]
    assert len(failures) >= 2
    assert "ConnectionError" in failures[0].getMessage()


def test_async_run_survives_an_unreachable_server_and_stops(
    rds: Any, idem: Idempotency, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio

    async def scenario() -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        down = redis.asyncio.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
        consumer = IdempotentConsumer(counting(rds), idem, namespace="t.down")
        loop = AsyncRedisStreamConsumer(down, STREAM, GROUP, "w", consumer, min_idle=1.0)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.8, stop.set)
        await loop.run(stop, retry_every=0.1)
        await down.aclose()

    with caplog.at_level("WARNING", logger="idempotence.consumer"):
        asyncio.run(scenario())
    assert sum("poll of a Redis stream" in r.getMessage() for r in caplog.records) >= 2


def test_an_entry_that_keeps_failing_is_dead_lettered_at_max_deliveries(
    rds: Any, idem: Idempotency
) -> None:
    calls: list[int] = []

    def poison(payload: dict[str, Any]) -> None:
        calls.append(1)
        raise RuntimeError("cannot handle this one")

    consumer = IdempotentConsumer(poison, idem, namespace="t.poison")
    loop = loop_of(
        rds, consumer, "w1", min_idle=0.2, dead_letter_stream="orders:dead", max_deliveries=3
    )
    loop.poll(block=False)
    entry = rds.xadd(STREAM, {"order_id": "o-1"}).decode()
    seen = poll_until(loop, lambda seen: any(d.acked for d in seen))
    assert [d.outcome for d in seen] == [Outcome.RETRY, Outcome.RETRY, Outcome.DEAD_LETTER]
    assert isinstance(seen[-1].error, RuntimeError)
    assert len(calls) == 3
    assert pending(rds) == 0
    [(_, dead)] = rds.xrange("orders:dead")
    assert dead[b"idempotence-source"] == f"{STREAM}/{entry}".encode()
    assert dead[b"idempotence-error"] == b"RuntimeError"


def test_max_deliveries_needs_a_dead_letter_stream(rds: Any, idem: Idempotency) -> None:
    consumer = IdempotentConsumer(counting(rds), idem, namespace="t.orders")
    with pytest.raises(ValueError, match="dead_letter_stream"):
        loop_of(rds, consumer, "w1", max_deliveries=3)
    with pytest.raises(ValueError, match="max_deliveries"):
        loop_of(rds, consumer, "w1", max_deliveries=0, dead_letter_stream="d")


def test_an_entry_reclaimed_from_a_live_slow_consumer_has_one_effect(
    rds: Any, idem: Idempotency
) -> None:
    """A runs a handler longer than its lease (its heartbeat keeps the key) and longer
    than min_idle; B reclaims the entry with XAUTOCLAIM meanwhile: B finds the key in
    progress and leaves the entry pending; A records, then its XACK removes the entry
    (whoever owns it now). One effect."""
    import threading

    started = threading.Event()

    def slow(payload: dict[str, Any]) -> str:
        started.set()
        time.sleep(1.6)  # > lease (1 s): only the heartbeat keeps the key
        rds.incr(f"{STREAM}:effects")
        return "done"

    consumer = IdempotentConsumer(slow, idem, namespace="t.slow")
    a = loop_of(rds, consumer, "a")
    a.poll(block=False)
    rds.xadd(STREAM, {"order_id": "o-1"})
    outcome: list[Delivery] = []
    runner = threading.Thread(target=lambda: outcome.extend(a.poll()))
    runner.start()
    assert started.wait(5)
    b = loop_of(rds, consumer, "b", min_idle=0.3)
    b_seen: list[Delivery] = []
    while runner.is_alive():
        b_seen += b.poll(block=False)
        time.sleep(0.1)
    runner.join()
    assert [d.outcome for d in outcome] == [Outcome.PROCESSED]
    assert b_seen
    assert all(d.outcome is Outcome.RETRY for d in b_seen)
    assert effects(rds) == 1
    assert pending(rds) == 0
    assert b.poll(block=False) == []
