"""IdempotentConsumer on every store (memory, SQLite, Redis, PostgreSQL, MariaDB, DynamoDB
on moto): the message is acknowledged only once its record is completed, duplicates replay
and acknowledge again, and each failure maps to its documented outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import (
    AlreadyInProgressError,
    Idempotency,
    InvalidKeyError,
    KeyReuseError,
    MissingKeyError,
    Status,
    StoreError,
)
from idempotence.consumer import Delivery, IdempotentConsumer, Outcome
from idempotence.stores import MemoryStore, Store
from tests import moto_server
from tests.http.conftest import BACKENDS, make_store, mysql_admin, postgres_admin, redis_ok

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture
__all__ = ["dynamodb_endpoint", "mysql_admin", "postgres_admin", "redis_ok"]  # fixtures by name


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()


class Acks:
    """An ``ack`` that records, when called, the status of the message's record."""

    def __init__(self, store: Store, consumer: IdempotentConsumer, message_id: str, payload: Any):
        self.store, self.consumer = store, consumer
        self.key = consumer.key_for(message_id, payload)
        self.seen: list[Status | None] = []

    def __call__(self) -> None:
        record = self.store.get(self.key) if self.key else None
        self.seen.append(record.status if record else None)


def charge_counter() -> tuple[list[Any], Any]:
    calls: list[Any] = []

    def charge(order: dict[str, Any]) -> dict[str, Any]:
        calls.append(order)
        return {"charged": order["order_id"]}

    return calls, charge


def test_ack_comes_after_the_record_and_a_duplicate_replays(store: Store) -> None:
    calls, charge = charge_counter()
    consumer = IdempotentConsumer(charge, Idempotency(store), namespace="t.charge")
    ack = Acks(store, consumer, "m-1", {"order_id": "o-1"})
    first = consumer.process("m-1", {"order_id": "o-1"}, ack)
    again = consumer.process("m-1", {"order_id": "o-1"}, ack)
    assert (first.outcome, again.outcome) == (Outcome.PROCESSED, Outcome.REPLAYED)
    assert first.result == again.result == {"charged": "o-1"}
    assert ack.seen == [Status.COMPLETED, Status.COMPLETED]
    assert len(calls) == 1
    other = consumer.process("m-2", {"order_id": "o-1"}, lambda: None)
    assert other.outcome is Outcome.PROCESSED  # keyed by message id: another message runs
    assert len(calls) == 2


def test_async_ack_comes_after_the_record_and_a_duplicate_replays(store: Store) -> None:
    calls: list[str] = []

    async def charge(order: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        calls.append(order["order_id"])
        return "ok"

    consumer = IdempotentConsumer(charge, Idempotency(store), namespace="t.acharge", key="order_id")
    statuses: list[Status | None] = []

    async def ack() -> None:
        record = await store.aget(consumer.key_for("m", {"order_id": "o-1"}) or "")
        statuses.append(record.status if record else None)

    async def scenario() -> list[Delivery]:
        return [
            await consumer.aprocess("m-1", {"order_id": "o-1"}, ack),
            await consumer.aprocess("m-2", {"order_id": "o-1"}, ack),  # published twice
        ]

    first, again = asyncio.run(scenario())
    assert (first.outcome, again.outcome) == (Outcome.PROCESSED, Outcome.REPLAYED)
    assert again.result == "ok"
    assert statuses == [Status.COMPLETED, Status.COMPLETED]
    assert calls == ["o-1"]


def test_a_reused_key_is_dead_lettered_then_acked_or_left_unacked(store: Store) -> None:
    calls, charge = charge_counter()
    events: list[str] = []
    consumer = IdempotentConsumer(
        charge,
        Idempotency(store),
        namespace="t.reuse",
        key="order_id",
        dead_letter=lambda d: events.append(f"dead:{type(d.error).__name__}:{d.payload['n']}"),
    )
    consumer.process("m-1", {"order_id": "o-1", "n": 1}, lambda: events.append("ack"))
    reused = consumer.process("m-2", {"order_id": "o-1", "n": 2}, lambda: events.append("ack"))
    assert reused.outcome is Outcome.DEAD_LETTER
    assert isinstance(reused.error, KeyReuseError)
    assert events == ["ack", "dead:KeyReuseError:2", "ack"]
    bare = IdempotentConsumer(charge, Idempotency(store), namespace="t.reuse", key="order_id")
    rejected = bare.process("m-3", {"order_id": "o-1", "n": 3}, lambda: events.append("ack"))
    assert rejected.outcome is Outcome.REJECTED
    assert not rejected.acked
    assert events == ["ack", "dead:KeyReuseError:2", "ack"]
    assert len(calls) == 1


def test_a_running_key_is_retried_later(store: Store) -> None:
    calls, charge = charge_counter()
    consumer = IdempotentConsumer(charge, Idempotency(store), namespace="t.busy")
    payload = {"order_id": "o-1"}
    key = consumer.key_for("m-1", payload)
    assert key is not None
    assert store.claim(key, consumer.op.fingerprint(payload), lease=30.0, ttl=60.0).acquired
    acks: list[int] = []
    busy = consumer.process("m-1", payload, lambda: acks.append(1))
    assert busy.outcome is Outcome.RETRY
    assert isinstance(busy.error, AlreadyInProgressError)
    assert acks == []
    assert calls == []


def test_a_failing_handler_is_retried_and_its_key_released(store: Store) -> None:
    attempts: list[int] = []

    def flaky(order: dict[str, Any]) -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("downstream down")
        return "ok"

    consumer = IdempotentConsumer(flaky, Idempotency(store), namespace="t.flaky")
    acks: list[int] = []
    failed = consumer.process("m-1", {"a": 1}, lambda: acks.append(1))
    assert failed.outcome is Outcome.RETRY
    assert isinstance(failed.error, ConnectionError)
    assert acks == []
    done = consumer.process("m-1", {"a": 1}, lambda: acks.append(1))
    assert done.outcome is Outcome.PROCESSED
    assert acks == [1]


class OutOfStock(Exception):
    pass


def test_a_stored_error_is_the_recorded_answer_and_acked(store: Store) -> None:
    attempts: list[int] = []

    def reserve(order: dict[str, Any]) -> None:
        attempts.append(1)
        raise OutOfStock(order["sku"])

    consumer = IdempotentConsumer(
        reserve, Idempotency(store), namespace="t.reserve", store_errors=(OutOfStock,)
    )
    acks: list[int] = []
    first = consumer.process("m-1", {"sku": "s"}, lambda: acks.append(1))
    again = consumer.process("m-1", {"sku": "s"}, lambda: acks.append(1))
    assert (first.outcome, again.outcome) == (Outcome.PROCESSED, Outcome.REPLAYED)
    assert isinstance(again.error, OutOfStock)
    assert acks == [1, 1]
    assert attempts == [1]


def test_an_ack_that_fails_leaves_the_record_for_the_redelivery(store: Store) -> None:
    calls, charge = charge_counter()
    consumer = IdempotentConsumer(charge, Idempotency(store), namespace="t.ackfail")

    def broken_ack() -> None:
        raise ConnectionError("broker gone")

    with pytest.raises(ConnectionError):
        consumer.process("m-1", {"order_id": "o-1"}, broken_ack)
    redelivered = consumer.process("m-1", {"order_id": "o-1"}, lambda: None)
    assert redelivered.outcome is Outcome.REPLAYED
    assert len(calls) == 1


# -- store-independent rules (memory) --------------------------------------------------------
def test_missing_key_material_is_permanent_unless_optional() -> None:
    _calls, charge = charge_counter()
    idem = Idempotency(MemoryStore())
    strict = IdempotentConsumer(charge, idem, namespace="t.m", key="order_id")
    acks: list[int] = []
    rejected = strict.process("m-1", {"other": 1}, lambda: acks.append(1))
    assert rejected.outcome is Outcome.REJECTED
    assert isinstance(rejected.error, MissingKeyError)
    assert acks == []
    loose = IdempotentConsumer(charge, idem, namespace="t.m", key="id", required=False)
    ran = loose.process("m-1", {"order_id": "x"}, lambda: acks.append(1))
    assert ran.outcome is Outcome.PROCESSED
    assert ran.key is None
    assert acks == [1]


def test_an_unavailable_store_means_retry() -> None:
    from idempotence.stores import RedisStore

    calls, charge = charge_counter()
    store = RedisStore("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    consumer = IdempotentConsumer(charge, Idempotency(store), namespace="t.down")
    acks: list[int] = []
    delivery = consumer.process("m-1", {"order_id": "o"}, lambda: acks.append(1))
    assert delivery.outcome is Outcome.RETRY
    assert isinstance(delivery.error, StoreError)
    assert acks == []
    assert calls == []


@pytest.mark.parametrize("bad", ["", None, 7, "x" * 1025])
def test_a_message_id_must_be_a_non_empty_string(bad: Any) -> None:
    calls, charge = charge_counter()
    consumer = IdempotentConsumer(charge, Idempotency(MemoryStore()), namespace="t.id")
    acks: list[int] = []
    with pytest.raises(InvalidKeyError) as raised:
        consumer.process(bad, {"order_id": "secret-value"}, lambda: acks.append(1))
    assert "secret-value" not in str(raised.value)
    assert acks == []
    assert calls == []


def test_disabled_runs_every_delivery_and_acks(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, charge = charge_counter()
    consumer = IdempotentConsumer(charge, Idempotency(MemoryStore()), namespace="t.off")
    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")
    acks: list[int] = []
    with pytest.warns(RuntimeWarning, match="IDEMPOTENCE_DISABLED"):
        consumer.process("m-1", {"order_id": "o"}, lambda: acks.append(1))
    consumer.process("m-1", {"order_id": "o"}, lambda: acks.append(1))
    assert len(calls) == 2
    assert acks == [1, 1]


def test_an_async_handler_needs_aprocess_and_a_sync_one_runs_in_aprocess() -> None:
    async def handle(payload: Any) -> int:
        return 1

    idem = Idempotency(MemoryStore())
    with pytest.raises(TypeError, match="aprocess"):
        IdempotentConsumer(handle, idem, namespace="t.a").process("m", {}, lambda: None)
    _calls, charge = charge_counter()
    sync = IdempotentConsumer(charge, idem, namespace="t.s")
    delivery = asyncio.run(sync.aprocess("m", {"order_id": "o"}, lambda: None))
    assert delivery.outcome is Outcome.PROCESSED
    assert delivery.result == {"charged": "o"}


def test_options_are_checked_when_the_consumer_is_made() -> None:
    _calls, charge = charge_counter()
    idem = Idempotency(MemoryStore())
    with pytest.raises(TypeError):
        IdempotentConsumer(charge, idem, namespace="t", no_such_option=1)
    with pytest.raises(TypeError, match="Idempotency"):
        IdempotentConsumer(charge, "redis://x", namespace="t")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="namespace"):
        IdempotentConsumer(lambda p: p, idem)  # a lambda has no name of its own


def test_a_result_that_cannot_be_stored_is_recorded_as_such_and_acked() -> None:
    from idempotence import ResultNotStoredError

    calls: list[int] = []

    def opaque(payload: Any) -> object:
        calls.append(1)
        return object()  # no serializer can store it

    consumer = IdempotentConsumer(opaque, Idempotency(MemoryStore()), namespace="t.opaque")
    acks: list[int] = []
    first = consumer.process("m-1", {"a": 1}, lambda: acks.append(1))
    again = consumer.process("m-1", {"a": 1}, lambda: acks.append(1))
    assert (first.outcome, again.outcome) == (Outcome.PROCESSED, Outcome.REPLAYED)
    assert isinstance(first.error, ResultNotStoredError)
    assert isinstance(again.error, ResultNotStoredError)
    assert acks == [1, 1]
    assert calls == [1]


def test_a_lost_lease_means_retry_and_the_redelivery_replays_the_winner() -> None:
    import time

    store = MemoryStore()
    calls: list[int] = []
    holder: dict[str, Any] = {}

    def slow(payload: Any) -> str:
        calls.append(1)
        time.sleep(0.3)  # the lease (0.1 s, no heartbeat) lapses; another takes the key
        key = holder["consumer"].key_for("m-1", payload)
        claim = store.claim(key, holder["consumer"].op.fingerprint(payload), lease=5, ttl=60)
        assert claim.acquired
        assert store.complete(key, claim.record.fence, holder["winner"], ttl=60)
        return "late"

    consumer = IdempotentConsumer(
        slow, Idempotency(store), namespace="t.lease", lease=0.1, heartbeat=False
    )
    holder["consumer"] = consumer
    holder["winner"] = consumer.op.encode(store)("winner")
    acks: list[int] = []
    lost = consumer.process("m-1", {"a": 1}, lambda: acks.append(1))
    assert lost.outcome is Outcome.RETRY
    assert type(lost.error).__name__ == "LeaseLostError"
    assert acks == []
    redelivered = consumer.process("m-1", {"a": 1}, lambda: acks.append(1))
    assert redelivered.outcome is Outcome.REPLAYED
    assert redelivered.result == "winner"
    assert acks == [1]
    assert calls == [1]


def test_a_corrupt_record_is_a_permanent_failure() -> None:
    from idempotence import CorruptRecordError

    store = MemoryStore()
    calls, charge = charge_counter()
    dead: list[Delivery] = []
    consumer = IdempotentConsumer(
        charge, Idempotency(store), namespace="t.corrupt", dead_letter=dead.append
    )
    payload = {"order_id": "o"}
    key = consumer.key_for("m-1", payload)
    assert key is not None
    claim = store.claim(key, consumer.op.fingerprint(payload), lease=5, ttl=60)
    assert store.complete(key, claim.record.fence, b"\xffnot a record body", ttl=60)
    acks: list[int] = []
    delivery = consumer.process("m-1", payload, lambda: acks.append(1))
    assert delivery.outcome is Outcome.DEAD_LETTER
    assert isinstance(delivery.error, CorruptRecordError)
    assert dead == [delivery]
    assert acks == [1]
    assert calls == []
