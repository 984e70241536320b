"""The sans-I/O protocol, stepped by hand: every decision without a store."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from idempotence import (
    AlreadyInProgressError,
    KeyReuseError,
    LeaseLostError,
    ResultNotStoredError,
    StoreError,
)
from idempotence._codec import UnencodableError
from idempotence._protocol import (
    ClaimOp,
    CompleteOp,
    LocalCache,
    Plan,
    ReleaseOp,
    RunOp,
    SleepOp,
    protocol,
)
from idempotence._record import Claim, Record, Status

NOW = 1000.0


def record(
    status: Status = Status.IN_PROGRESS, fp: str = "fp", fence: int = 1, **kw: Any
) -> Record:
    fields: dict[str, Any] = {
        "key": "k",
        "status": status,
        "fingerprint": fp,
        "fence": fence,
        "lease_expires_at": NOW + 30,
        "expires_at": NOW + 3600,
        "result": b"stored" if status is Status.COMPLETED else None,
    }
    fields.update(kw)
    return Record(**fields)


def encode(value: Any) -> bytes:
    if value == "unencodable":
        raise UnencodableError("cannot encode")
    return repr(value).encode()


def plan(**kw: Any) -> Plan:
    fields: dict[str, Any] = {
        "key": "k",
        "fingerprint": "fp",
        "lease": 30.0,
        "ttl": 3600.0,
        "encode": encode,
        "replay": lambda r: ("replayed", r.result),
        "encode_not_stored": lambda reason: b"N:" + reason.encode(),
    }
    fields.update(kw)
    return Plan(**fields)


def start(p: Plan) -> tuple[Generator[Any, Any, Any], Any]:
    machine = protocol(p)
    return machine, next(machine)


def finish(machine: Generator[Any, Any, Any], value: Any) -> Any:
    with pytest.raises(StopIteration) as done:
        machine.send(value)
    return done.value.value


def test_new_key_runs_then_completes() -> None:
    machine, op = start(plan())
    assert op == ClaimOp("k", "fp", 30.0, 3600.0)
    op = machine.send(Claim(True, record(fence=7), NOW))
    assert op == RunOp("k", 7, 30.0)
    op = machine.send({"ok": 1})
    assert op == CompleteOp("k", 7, b"{'ok': 1}", 3600.0)
    assert finish(machine, True) == {"ok": 1}


@pytest.mark.parametrize("falsy", [None, 0, "", [], {}, False])
def test_falsy_results_are_completed_like_any_other(falsy: Any) -> None:
    machine, _ = start(plan())
    machine.send(Claim(True, record(), NOW))
    op = machine.send(falsy)
    assert isinstance(op, CompleteOp)
    assert finish(machine, True) == falsy


def test_completed_record_is_replayed_without_running() -> None:
    machine, _ = start(plan())
    result = finish(machine, Claim(False, record(Status.COMPLETED), NOW))
    assert result == ("replayed", b"stored")


def test_other_fingerprint_is_key_reuse() -> None:
    machine, _ = start(plan())
    with pytest.raises(KeyReuseError):
        machine.send(Claim(False, record(Status.COMPLETED, fp="other"), NOW))


def test_live_claim_raises_in_progress_with_retry_after() -> None:
    machine, _ = start(plan())
    with pytest.raises(AlreadyInProgressError) as info:
        machine.send(Claim(False, record(lease_expires_at=NOW + 12.5), NOW))
    assert info.value.retry_after == pytest.approx(12.5)


def test_wait_polls_with_backoff_then_replays() -> None:
    machine, _ = start(plan(wait=True, wait_timeout=10.0))
    live = Claim(False, record(), NOW)
    sleeps = []
    op = machine.send(live)
    while isinstance(op, SleepOp):
        sleeps.append(op.seconds)
        op = machine.send(None)
        assert isinstance(op, ClaimOp)
        if len(sleeps) == 4:
            break
        op = machine.send(live)
    assert sleeps == [0.05, 0.1, 0.2, 0.4]
    assert finish(machine, Claim(False, record(Status.COMPLETED), NOW)) == ("replayed", b"stored")


def test_wait_runs_when_the_first_call_released() -> None:
    machine, _ = start(plan(wait=True))
    assert isinstance(machine.send(Claim(False, record(), NOW)), SleepOp)
    assert isinstance(machine.send(None), ClaimOp)
    assert machine.send(Claim(True, record(fence=2), NOW)) == RunOp("k", 2, 30.0)


def test_wait_gives_up_after_wait_timeout() -> None:
    machine, _ = start(plan(wait=True, wait_timeout=0.3))
    total = 0.0
    op = machine.send(Claim(False, record(), NOW))
    while total < 0.3 - 1e-9:
        assert isinstance(op, SleepOp)
        total += op.seconds
        assert isinstance(machine.send(None), ClaimOp)
        if total >= 0.3 - 1e-9:
            break
        op = machine.send(Claim(False, record(), NOW))
    assert total == pytest.approx(0.3)
    with pytest.raises(AlreadyInProgressError):
        machine.send(Claim(False, record(), NOW))


def test_exception_releases_and_reraises_unchanged() -> None:
    machine, _ = start(plan())
    machine.send(Claim(True, record(fence=3), NOW))
    error = ValueError("boom")
    assert machine.throw(error) == ReleaseOp("k", 3)
    with pytest.raises(ValueError, match="boom") as info:
        machine.send(True)
    assert info.value is error


def test_release_failure_does_not_mask_the_original_exception() -> None:
    machine, _ = start(plan())
    machine.send(Claim(True, record(), NOW))
    machine.throw(ValueError("boom"))
    with pytest.raises(ValueError, match="boom"):
        machine.throw(StoreError("down"))


def test_store_errors_are_completed_as_errors() -> None:
    machine, _ = start(
        plan(store_errors=(KeyError,), encode_error=lambda e: b"E:" + repr(e).encode())
    )
    machine.send(Claim(True, record(fence=2), NOW))
    op = machine.throw(KeyError("gone"))
    assert op == CompleteOp("k", 2, b"E:KeyError('gone')", 3600.0)
    with pytest.raises(KeyError):
        machine.send(True)


def test_lost_fence_raises_lease_lost_with_result() -> None:
    machine, _ = start(plan())
    machine.send(Claim(True, record(), NOW))
    machine.send("late result")
    with pytest.raises(LeaseLostError) as info:
        machine.send(False)
    assert info.value.result == "late result"


def test_unencodable_result_completes_as_not_stored_and_raises() -> None:
    machine, _ = start(plan())
    machine.send(Claim(True, record(), NOW))
    op = machine.send("unencodable")
    assert op == CompleteOp("k", 1, b"N:cannot encode", 3600.0)
    with pytest.raises(ResultNotStoredError) as info:
        machine.send(True)
    assert info.value.result == "unencodable"


def test_should_store_false_releases_the_key() -> None:
    machine, _ = start(plan(should_store=lambda r: r["status"] < 500))
    machine.send(Claim(True, record(fence=4), NOW))
    assert machine.send({"status": 503}) == ReleaseOp("k", 4)
    assert finish(machine, True) == {"status": 503}


def test_store_down_at_claim_fails_closed() -> None:
    machine, _ = start(plan())
    with pytest.raises(StoreError):
        machine.throw(StoreError("down"))


def test_store_down_at_claim_runs_unclaimed_when_fail_open() -> None:
    machine, _ = start(plan(fail_open=True))
    assert machine.throw(StoreError("down")) == RunOp("k", None, 30.0)
    assert finish(machine, "ran") == "ran"


def test_store_failure_at_complete_reports_the_result() -> None:
    machine, _ = start(plan())
    machine.send(Claim(True, record(), NOW))
    machine.send("value")
    with pytest.raises(StoreError) as info:
        machine.throw(StoreError("down"))
    assert info.value.result == "value"


def test_local_cache_answers_without_any_operation() -> None:
    cache = LocalCache(4, clock=lambda: NOW)
    machine, _ = start(plan(cache=cache))
    machine.send(Claim(True, record(), NOW))
    machine.send("v")
    finish(machine, True)
    again = protocol(plan(cache=cache))
    with pytest.raises(StopIteration) as done:
        next(again)
    assert done.value.value == ("replayed", b"'v'")


def test_local_cache_ignores_other_fingerprints_and_evicts() -> None:
    cache = LocalCache(2, clock=lambda: NOW)
    for key in ("a", "b", "c"):
        cache.put(record(Status.COMPLETED, key=key))
    assert cache.get("a") is None
    assert cache.get("c") is not None
    _, op = start(plan(key="c", fingerprint="other", cache=cache))
    assert isinstance(op, ClaimOp)
