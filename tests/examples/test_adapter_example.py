"""examples/adapter/jobs.py (walked through by docs/extending.md): an adapter built on the
public engine runs each job once, replays redeliveries, refuses a reused id and stops an
ordered batch at its first failure."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency, KeyReuseError
from idempotence.stores import MemoryStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jobs_module() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(
        "example_adapter_jobs", ROOT / "examples" / "adapter" / "jobs.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_each_job_runs_once_and_a_reused_id_is_refused(jobs_module: types.ModuleType) -> None:
    runs: list[int] = []

    def charge(body: dict[str, Any]) -> int:
        runs.append(body["amount"])
        return len(runs)

    jobs = jobs_module.Jobs(Idempotency(MemoryStore()), charge)
    message = {"id": "job-1", "body": {"amount": 5}}
    assert jobs.process(message) == 1
    assert jobs.process(dict(message)) == 1  # redelivered: replayed
    assert runs == [5]
    with pytest.raises(KeyReuseError):
        jobs.process({"id": "job-1", "body": {"amount": 6}})
    assert runs == [5]


def test_ordered_batch_stops_at_the_first_failure(jobs_module: types.ModuleType) -> None:
    runs: list[str] = []
    broken = {"b"}

    def ship(body: dict[str, Any]) -> None:
        runs.append(body["order"])
        if body["order"] in broken:
            raise RuntimeError("carrier down")

    jobs = jobs_module.Jobs(Idempotency(MemoryStore()), ship, namespace="shipping")
    batch = [{"id": o, "body": {"order": o}} for o in "abc"]
    assert jobs.process_all(batch) == ["b", "c"]
    assert runs == ["a", "b"]
    broken.clear()
    assert jobs.process_all(batch) == []
    assert runs == ["a", "b", "b", "c"]  # "a" replayed, not run again


def test_async_handler_and_disabled(
    jobs_module: types.ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []

    async def notify(body: dict[str, Any]) -> int:
        runs.append(body["n"])
        return int(body["n"])

    def plain(body: dict[str, Any]) -> int:
        runs.append(body["n"])
        return int(body["n"])

    jobs = jobs_module.Jobs(Idempotency(MemoryStore()), plain)
    message = {"id": "n-1", "body": {"n": 7}}
    assert asyncio.run(jobs.aprocess(message, notify)) == 7
    assert asyncio.run(jobs.aprocess(message, notify)) == 7
    assert runs == [7]
    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")
    assert jobs.process({"id": "n-2", "body": {"n": 8}}) == 8
    assert jobs.process({"id": "n-2", "body": {"n": 8}}) == 8
    assert runs == [7, 8, 8]
