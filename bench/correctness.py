"""Behaviour side by side: the same scenario run on idempotence and on Powertools for AWS
Lambda (Python). Each scenario returns what a caller observes with each library; the
benchmark report prints them as a table. Run alone: ``.venv/bin/python bench/correctness.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
warnings.simplefilter("ignore")  # Powertools warns outside Lambda

import redis  # noqa: E402
from aws_lambda_powertools.utilities.idempotency import (  # noqa: E402
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.persistence.redis import (  # noqa: E402
    RedisCachePersistenceLayer,
)

from bench.powertools_memory import MemoryPersistenceLayer  # noqa: E402
from idempotence import Idempotency  # noqa: E402
from idempotence.stores import MemoryStore, RedisStore  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/13"
Row = tuple[str, str, str]


def observe(call: Callable[[], Any]) -> str:
    """What the caller sees: the value's repr, or the exception's type and message."""
    try:
        return repr(call())
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:70]}"


def pt(layer: Any, fn: Callable[..., Any], key: str = "id", validate: bool = False) -> Any:
    config = IdempotencyConfig(
        event_key_jmespath=key, payload_validation_jmespath="@" if validate else ""
    )
    return idempotent_function(data_keyword_argument="o", persistence_store=layer, config=config)(
        fn
    )


def falsy_results() -> Row:
    def empty(o: dict[str, Any]) -> dict[str, Any]:
        return {}

    ours = Idempotency(MemoryStore())(key="id")(empty)
    theirs = pt(MemoryPersistenceLayer(), empty)
    ours({"id": 1})
    theirs(o={"id": 1})
    return ("a replay of a function that returned `{}`", observe(lambda: ours({"id": 1})),
            observe(lambda: theirs(o={"id": 1})))  # fmt: skip


def async_functions() -> Row:
    async def charge(o: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"charged": o["id"]}

    ours = Idempotency(MemoryStore())(key="id")(charge)
    theirs = pt(MemoryPersistenceLayer(), charge)
    return ("an `async def` function", observe(lambda: asyncio.run(ours({"id": 1}))),
            observe(lambda: asyncio.run(theirs(o={"id": 1}))))  # fmt: skip


def positional_payload() -> Row:
    def create(o: dict[str, Any]) -> str:
        return "created"

    ours = Idempotency(MemoryStore())(key="id")(create)
    theirs = pt(MemoryPersistenceLayer(), create)
    return ("the payload passed positionally, `f(order)`", observe(lambda: ours({"id": 1})),
            observe(lambda: theirs({"id": 1})))  # fmt: skip


def identical_retry_on_redis() -> Row:
    """Both with payload validation on (ours always validates: the fingerprint)."""
    tag = uuid.uuid4().hex

    def create(o: dict[str, Any]) -> str:
        return "created"

    ours = Idempotency(RedisStore(REDIS_URL))(key="id")(create)
    theirs = pt(RedisCachePersistenceLayer(client=redis.Redis.from_url(REDIS_URL)), create,
                validate=True)  # fmt: skip
    order = {"id": tag, "amount": 5}
    ours(order)
    theirs(o=order)
    return ("an identical retry, Redis store, payload validation on", observe(lambda: ours(order)),
            observe(lambda: theirs(o=order)))  # fmt: skip


class _Context:
    """A Lambda context with little time left: Powertools' in-progress expiry."""

    def get_remaining_time_in_millis(self) -> int:
        return 200


def zombie_overwrite() -> Row:
    """A pauses past its lease; B takes the key over and completes; A resumes and finishes.
    Which result do later duplicates get, and what does A's caller see?"""
    gate = threading.Event()
    runs = itertools.count(1)

    def work(o: dict[str, Any]) -> str:
        run = f"run-{next(runs)}"
        if run == "run-1":
            gate.wait(5)  # A: paused (GC pause, throttled CPU, slow downstream)
        return run

    def scenario(call: Callable[[dict[str, Any]], Any]) -> str:
        seen: dict[str, str] = {}
        a = threading.Thread(target=lambda: seen.setdefault("A", observe(lambda: call({"id": 1}))))
        a.start()
        time.sleep(0.5)  # A's lease (0.2 s) lapses
        seen["B"] = observe(lambda: call({"id": 1}))
        gate.set()
        a.join()
        seen["replay"] = observe(lambda: call({"id": 1}))
        gate.clear()
        return f"A: {seen['A']}; B: {seen['B']}; later duplicates: {seen['replay']}"

    ours = Idempotency(MemoryStore(), lease=0.2, heartbeat=False)(key="id")(work)
    ours_seen = scenario(ours)
    runs = itertools.count(1)
    config = IdempotencyConfig(event_key_jmespath="id")
    config.register_lambda_context(_Context())
    theirs = idempotent_function(
        data_keyword_argument="o", persistence_store=MemoryPersistenceLayer(), config=config
    )(work)
    theirs_seen = scenario(lambda o: theirs(o=o))
    return ("a paused invocation finishing after its successor", ours_seen, theirs_seen)


SCENARIOS = [falsy_results, async_functions, positional_payload, identical_retry_on_redis,
             zombie_overwrite]  # fmt: skip


def run() -> list[Row]:
    """Every scenario's row: (scenario, idempotence, Powertools)."""
    return [scenario() for scenario in SCENARIOS]


if __name__ == "__main__":
    for name, ours, theirs in run():
        print(f"{name}\n  idempotence: {ours}\n  powertools:  {theirs}")
