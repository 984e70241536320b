"""examples/redis_streams/billing.py runs as documented in docs/consumers.md: an order
published twice is charged once, a reused order id lands in the dead-letter stream, and
the async worker charges once too (real Redis, db 13)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from idempotence.consumer import Outcome
from tests.consumer.conftest import STREAMS_URL, rds

__all__ = ["rds"]  # fixture used by name

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "redis_streams" / "billing.py"


def load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("REDIS_URL", STREAMS_URL)
    spec = importlib.util.spec_from_file_location("billing_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "billing_example", module)
    spec.loader.exec_module(module)
    return module


def test_an_order_published_twice_is_charged_once(
    rds: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    billing = load(monkeypatch)
    worker = billing.worker
    worker.start_id = "0"
    worker.poll(block=False)
    order = {"order_id": "o-1", "customer": "c-9", "amount_cents": "1250"}
    rds.xadd("orders", order)
    rds.xadd("orders", order)  # the producer retried
    rds.xadd("orders", {**order, "amount_cents": "99"})  # o-1 reused for another amount
    seen = []
    for _ in range(20):
        seen += worker.poll(block=False)
        if len(seen) == 3:
            break
    assert [d.outcome for d in seen] == [Outcome.PROCESSED, Outcome.REPLAYED, Outcome.DEAD_LETTER]
    assert rds.hget("balances", "c-9") == b"1250"
    assert rds.xpending("orders", "billing")["pending"] == 0
    [(_, dead)] = rds.xrange("orders:dead")
    assert dead[b"idempotence-error"] == b"KeyReuseError"


def test_the_async_worker_charges_once(rds: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    billing = load(monkeypatch)
    rds.xgroup_create("orders", "billing", id="0", mkstream=True)
    order = {"order_id": "o-2", "customer": "c-1", "amount_cents": "500"}
    rds.xadd("orders", order)
    rds.xadd("orders", order)

    async def run_until_both_are_handled() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(billing.async_worker(stop))
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            group = rds.xinfo_groups("orders")[0]
            if group["entries-read"] == 2 and group["pending"] == 0:
                break
        stop.set()  # the worker returns after its current poll (block <= 2 s)
        await asyncio.wait_for(task, 15)

    asyncio.run(run_until_both_are_handled())
    assert rds.hget("balances", "c-1") == b"500"
    assert rds.xpending("orders", "billing")["pending"] == 0
