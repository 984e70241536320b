"""Zombies: an invocation paused inside its body (heartbeat off, short lease) loses its
lease; a successor takes the key over and completes. When the zombie resumes it can
neither overwrite nor delete the successor's record: it gets ``LeaseLostError`` carrying
its own result (or its own exception, unchanged), the stored record stays the
successor's, and replays return the successor's result. Every store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency, LeaseLostError
from idempotence._record import Status
from tests.reliability import report

LEASE = 1.0
ALL_STORES = ("memory", "sqlite", "redis", "postgres", "mysql", "dynamodb")


class Boom(Exception):
    pass


@pytest.mark.parametrize("backend_url", ALL_STORES, indirect=True)
def test_a_zombie_cannot_overwrite_or_delete_its_successor(
    backend_url: str, tmp_path: Path
) -> None:
    idem = Idempotency(backend_url, lease=LEASE, heartbeat=False, ttl=600)
    store = idem.store
    resume = threading.Event()
    paused = {"done": threading.Event(), "boom": threading.Event()}
    executions: list[tuple[str, str]] = []

    # `who` tells the invocations apart; key and fingerprint are the key alone.
    @idem(namespace="reliability.zombie", key="key", fingerprint="key")
    def op(key: str, who: str) -> str:
        executions.append((key, who))
        if who.startswith("zombie"):
            paused[key].set()
            assert resume.wait(30)
            if key == "boom":
                raise Boom(f"{who} failed late")
        return f"{key} by {who}"

    outcome: dict[str, Any] = {}

    def zombie(key: str) -> None:
        try:
            outcome[key] = op(key, f"zombie-{key}")
        except BaseException as exc:
            outcome[key] = exc

    threads = [threading.Thread(target=zombie, args=(k,)) for k in paused]
    for t in threads:
        t.start()
    for event in paused.values():
        assert event.wait(10)
    fences = {k: op.record_for(k, "").fence for k in paused}  # type: ignore[union-attr]
    time.sleep(LEASE + 0.3)  # both zombies' leases lapse (no heartbeat renews them)

    # Successors take both keys over and complete.
    began = time.monotonic()
    for key in paused:
        assert op(key, "successor") == f"{key} by successor"
    took_over = time.monotonic() - began

    resume.set()
    for t in threads:
        t.join(30)

    # The zombie that returned: LeaseLostError with its result attached.
    lost = outcome["done"]
    assert isinstance(lost, LeaseLostError), lost
    assert lost.result == "done by zombie-done"
    # The zombie that raised: its own exception, unchanged (the stale release is refused).
    assert isinstance(outcome["boom"], Boom)

    for key in paused:
        record = store.get(op.key_for(key, ""))
        assert record is not None
        assert record.status is Status.COMPLETED
        assert record.fence == fences[key] + 1
        # The zombie's fence is stale for every write, and changes nothing.
        stale = fences[key]
        assert store.complete(record.key, stale, b"zombie", ttl=600) is False
        assert store.release(record.key, stale) is False
        assert store.renew(record.key, stale, lease=60) is False
        assert store.get(record.key) == record
        # Replays return the successor's result and run nothing.
        assert op(key, "late caller") == f"{key} by successor"
    assert sorted(executions) == sorted(
        [
            ("done", "zombie-done"),
            ("boom", "zombie-boom"),
            ("done", "successor"),
            ("boom", "successor"),
        ]
    )
    store.close()
    report.emit(
        f"zombies[{backend_url.split(':')[0]}]",
        zombies=2,
        successor_kept=2,
        takeover_seconds=f"{took_over:.2f}",
    )
