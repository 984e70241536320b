"""``idempotence.observe``: one event per idempotent call, for every outcome, carrying no key
or payload value; structured log records; no cost when nobody observes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from idempotence import (
    AlreadyInProgressError,
    Idempotency,
    KeyReuseError,
    LeaseLostError,
    ResultNotStoredError,
    StoreError,
    observe,
)
from idempotence.observe import Event, Outcome
from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock

SECRET = "4111-1111-1111-1111"  # payload material that must never reach an event or a log


@pytest.fixture
def events() -> Iterator[list[Event]]:
    seen: list[Event] = []
    with observe.subscribed(seen.append):
        yield seen


@pytest.fixture
def idem() -> Idempotency:
    return Idempotency(MemoryStore())


def outcomes(events: list[Event]) -> list[str]:
    return [e.outcome.value for e in events]


def test_executed_then_replayed_from_the_store(idem: Idempotency, events: list[Event]) -> None:
    @idem(key="card", namespace="payments.charge")
    def charge(order: dict[str, Any]) -> dict[str, str]:
        return {"card": order["card"]}

    charge({"card": SECRET})
    charge({"card": SECRET})
    first, again = events
    assert first.outcome is Outcome.EXECUTED
    assert not first.replayed
    assert again.outcome is Outcome.REPLAYED
    assert again.replayed_from == "store"
    assert again.replayed
    for event in events:
        assert event.namespace == "payments.charge"
        assert event.store == "memory"
        assert event.error is None
        assert event.duration >= event.store_duration + event.body_duration > 0
    assert first.body_duration > 0
    assert again.body_duration == 0.0
    key = charge.key_for({"card": SECRET})
    digest = key.partition("#")[2]
    for event in events:  # neither the payload nor the key's digest
        assert SECRET not in repr(event)
        assert digest not in repr(event)


def test_replayed_from_the_local_cache(events: list[Event]) -> None:
    @Idempotency(MemoryStore(), local_cache=8)
    def f(x: int) -> int:
        return x

    f(1)
    f(1)
    assert outcomes(events) == ["executed", "replayed"]
    assert events[1].replayed_from == "cache"
    assert events[1].store_duration == 0.0


def test_refusals_and_failures(idem: Idempotency, events: list[Event]) -> None:
    @idem(key="id")
    def f(order: dict[str, Any]) -> str:
        if order.get("boom"):
            raise ValueError("bad order")
        return "ok"

    f({"id": 1})
    with pytest.raises(KeyReuseError):
        f({"id": 1, "other": SECRET})
    with pytest.raises(ValueError, match="bad order"):
        f({"id": 2, "boom": True})
    assert outcomes(events) == ["executed", "key_reuse", "failed"]
    assert events[1].error == "KeyReuseError"
    assert events[2].error == "ValueError"
    assert events[2].body_duration > 0


def test_a_replayed_stored_error_is_a_replay(events: list[Event]) -> None:
    class OutOfStock(Exception):
        pass

    idem = Idempotency(MemoryStore(), store_errors=(OutOfStock,))

    @idem
    def reserve(sku: str) -> None:
        raise OutOfStock(sku)

    for _ in range(2):
        with pytest.raises(OutOfStock):
            reserve("sku-1")
    assert outcomes(events) == ["failed", "replayed"]
    assert events[1].error == "OutOfStock"
    assert events[1].replayed_from == "store"


def test_in_progress_conflict(idem: Idempotency, events: list[Event]) -> None:
    started, release = threading.Event(), threading.Event()

    @idem(lease=30)
    def slow(x: int) -> str:
        started.set()
        release.wait(5)
        return "done"

    worker = threading.Thread(target=slow, args=(1,))
    worker.start()
    assert started.wait(5)
    with pytest.raises(AlreadyInProgressError):
        slow(1)
    release.set()
    worker.join()
    assert sorted(outcomes(events)) == ["executed", "in_progress"]


def test_wait_time_is_reported(idem: Idempotency, events: list[Event]) -> None:
    started, release = threading.Event(), threading.Event()

    @idem(on_in_progress="wait", wait_timeout=10)
    def slow(x: int) -> str:
        started.set()
        release.wait(5)
        return "done"

    worker = threading.Thread(target=slow, args=(1,))
    worker.start()
    assert started.wait(5)
    threading.Timer(0.2, release.set).start()
    assert slow(1) == "done"
    worker.join()
    waiter = next(e for e in events if e.outcome is Outcome.REPLAYED)
    assert waiter.wait_duration >= 0.1


def test_lease_lost(events: list[Event]) -> None:
    clock = ManualClock()
    idem = Idempotency(MemoryStore(clock=clock), lease=10, heartbeat=False)

    runs: list[int] = []

    @idem
    def job(x: int) -> str:
        runs.append(x)
        if len(runs) == 1:  # the original: paused past its lease while a retry takes over
            clock.advance(11)
            retry = threading.Thread(target=job, args=(x,))
            retry.start()
            retry.join()
        return "ran"

    with pytest.raises(LeaseLostError):
        job(1)
    assert outcomes(events) == ["executed", "lease_lost"]


def test_not_stored(idem: Idempotency, events: list[Event]) -> None:
    @idem
    def weird(x: int) -> Any:
        return object()

    for _ in range(2):
        with pytest.raises(ResultNotStoredError):
            weird(1)
    assert outcomes(events) == ["not_stored", "replayed"]


class DownStore(MemoryStore):
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        raise ConnectionRefusedError("store is down")


def test_store_error_and_fail_open(events: list[Event]) -> None:
    @Idempotency(DownStore())
    def closed(x: int) -> int:
        return x

    @Idempotency(DownStore(), fail_open=True)
    def opened(x: int) -> int:
        return x

    with pytest.raises(StoreError):
        closed(1)
    assert opened(1) == 1
    assert outcomes(events) == ["store_error", "fail_open"]
    assert events[0].store == "down"  # a custom store: its class name without "Store"
    assert events[0].error == "StoreError"
    assert events[1].body_duration > 0


async def test_async_calls_are_observed(idem: Idempotency, events: list[Event]) -> None:
    @idem
    async def f(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    assert await f(1) == await f(1) == 1
    assert outcomes(events) == ["executed", "replayed"]
    assert events[0].body_duration >= 0.005


def test_observer_start_and_end_wrap_the_call(idem: Idempotency) -> None:
    log: list[Any] = []

    class Tracer:
        def start(self, namespace: str, store: str) -> str:
            log.append(("start", namespace, store))
            return "state"

        def end(self, event: Event, state: Any) -> None:
            log.append(("end", event.outcome.value, state))

    @idem(namespace="ns")
    def f(x: int) -> int:
        log.append("body")
        return x

    tracer = Tracer()
    assert isinstance(tracer, observe.Observer)
    with observe.subscribed(tracer):
        f(1)
    f(2)  # unsubscribed
    assert log == [("start", "ns", "memory"), "body", ("end", "executed", "state"), "body"]


def test_a_failing_observer_is_logged_and_changes_nothing(
    idem: Idempotency, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("observer bug")

    @idem
    def f(x: int) -> int:
        return x

    with observe.subscribed(broken), caplog.at_level(logging.WARNING, "idempotence"):
        assert f(1) == 1
    assert "observer raised" in caplog.text


def test_subscribe_twice_is_one_subscription(idem: Idempotency) -> None:
    seen: list[Event] = []
    stop = observe.subscribe(seen.append)
    observe.subscribe(seen.append)
    try:

        @idem
        def f(x: int) -> int:
            return x

        f(1)
    finally:
        stop()
    assert len(seen) == 1
    assert observe.observers == ()


def test_no_observer_no_watch(idem: Idempotency, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> Any:
        raise AssertionError("watched without an observer")

    monkeypatch.setattr(observe, "watch", fail)

    @idem
    def f(x: int) -> int:
        return x

    assert f(1) == f(1) == 1


# -- structured log records -----------------------------------------------------------------
def test_log_events_structured_fields(idem: Idempotency, caplog: pytest.LogCaptureFixture) -> None:
    @idem(key="card", namespace="payments.charge")
    def charge(order: dict[str, Any]) -> str:
        return "ok"

    stop = observe.log_events()
    try:
        with caplog.at_level(logging.DEBUG, "idempotence"):
            charge({"card": SECRET})
            charge({"card": SECRET})
            with pytest.raises(KeyReuseError):
                charge({"card": SECRET, "amount": 5})
    finally:
        stop()
    records = [r for r in caplog.records if hasattr(r, "idempotence_outcome")]
    assert [(r.levelname, r.idempotence_outcome) for r in records] == [
        ("DEBUG", "replayed"),
        ("WARNING", "key_reuse"),
    ]
    replay = records[0]
    assert replay.idempotence_namespace == "payments.charge"
    assert replay.idempotence_store == "memory"
    assert replay.idempotence_replayed is True
    assert isinstance(replay.idempotence_duration_ms, float)
    assert not any(r.exc_info for r in records)  # no per-call tracebacks
    key = charge.key_for({"card": SECRET})
    assert SECRET not in caplog.text
    assert key.partition("#")[2] not in caplog.text


def test_protocol_warnings_name_the_namespace_not_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @Idempotency(DownStore(), fail_open=True, namespace="svc")
    def f(order: dict[str, Any]) -> int:
        return 1

    with caplog.at_level(logging.WARNING, "idempotence"):
        f({"card": SECRET})
    (record,) = caplog.records
    assert record.idempotence_outcome == "fail_open"  # type: ignore[attr-defined]
    assert record.idempotence_namespace.startswith("svc.")  # type: ignore[attr-defined]
    assert "#" not in record.getMessage()
    assert SECRET not in caplog.text
    assert not record.exc_info


class LosingStore(MemoryStore):
    """Renewals report the lease lost (first) or fail (after)."""

    renewals = 0

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        self.renewals += 1
        if self.renewals == 1:
            raise ConnectionResetError(f"reset while renewing {key}")
        return False


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_heartbeat_records_name_the_namespace_not_the_key(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    idem = Idempotency(LosingStore(), lease=0.3, heartbeat=True)

    @idem(key="card", namespace="svc.job")
    def slow(order: dict[str, Any]) -> str:
        threading.Event().wait(0.45)
        return "ok"

    @idem(key="card", namespace="svc.job")
    async def aslow(order: dict[str, Any]) -> str:
        await asyncio.sleep(0.45)
        return "ok"

    with caplog.at_level(logging.WARNING, "idempotence"):
        if mode == "sync":
            slow({"card": SECRET})
        else:
            asyncio.run(aslow({"card": SECRET}))
    outcomes = [r.idempotence_outcome for r in caplog.records]  # type: ignore[attr-defined]
    assert outcomes == ["renew_failed", "lease_lost"]
    key = slow.key_for({"card": SECRET})
    for record in caplog.records:
        assert record.idempotence_namespace == "svc.job"  # type: ignore[attr-defined]
        assert not record.exc_info
        assert key.partition("#")[2] not in record.getMessage()
    assert "StoreError from ConnectionResetError" in caplog.records[0].getMessage()


def test_store_kind_names_every_backend_and_sees_through_a_wrapper(tmp_path: Any) -> None:
    from idempotence.stores import LargeResultStore, SQLiteStore

    assert observe.store_kind(MemoryStore()) == "memory"
    sqlite = SQLiteStore(tmp_path / "k.db")
    assert observe.store_kind(sqlite) == "sqlite"
    assert observe.store_kind(LargeResultStore(sqlite)) == "sqlite"  # compress only, no S3
    names = {"RedisStore": "redis", "PostgresStore": "postgres", "MySQLStore": "mysql",
             "DynamoDBStore": "dynamodb"}  # fmt: skip
    for name, kind in names.items():  # by class name: no server needed to check the naming
        assert observe.store_kind(type(name, (MemoryStore,), {})()) == kind
    sqlite.close()
