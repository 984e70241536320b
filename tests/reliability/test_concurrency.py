"""Concurrency at scale: 8 processes x 16 threads call one decorated function for
200 keys, every key 8 times, all released at once. Each key's body runs exactly once
(side-effect ledger), and every caller gets either that execution's result (same nonce)
or a clean ``AlreadyInProgressError``."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path

import pytest

from idempotence import AlreadyInProgressError, Idempotency
from idempotence._record import Status
from idempotence.testing import process_context, start_process
from tests.reliability import report, workers
from tests.reliability.conftest import MULTIPROCESS

PROCESSES = 8
THREADS = 16
KEYS = 200
CALLS_PER_KEY = 8  # 1,600 calls per store


def _plan(seed: int, groups: int) -> list[list[str]]:
    """Every key CALLS_PER_KEY times, shuffled, dealt to ``groups`` threads."""
    calls = [f"k{i:03d}" for i in range(KEYS)] * CALLS_PER_KEY
    random.Random(seed).shuffle(calls)
    return [calls[i::groups] for i in range(groups)]


def _check(url: str, namespace: str, workdir: Path, name: str, seconds: float) -> None:
    runs = report.ledger(workdir)
    outcomes = report.results(workdir)
    errors = [o for o in outcomes if "error" in o]
    assert not errors, errors[:5]
    assert len(outcomes) == KEYS * CALLS_PER_KEY
    duplicates = {k: n for k, n in runs.items() if len(n) != 1}
    assert not duplicates, f"bodies ran more than once: {duplicates}"
    assert sorted(runs) == [f"k{i:03d}" for i in range(KEYS)]
    values = [o for o in outcomes if "value" in o]
    wrong = [o for o in values if o["value"] != f"{o['key']}:{runs[o['key']][0]}"]
    assert not wrong, f"callers got another execution's result: {wrong[:5]}"
    busy = len(outcomes) - len(values)

    # Every record is completed with that result; a replay returns it without running.
    idem = Idempotency(url, lease=30, ttl=600)
    extra = workers.Appender(workdir / "ledger-parent")
    op = workers.make_op(idem, namespace, extra)
    for key, nonces in runs.items():
        record = op.record_for(key)
        assert record is not None
        assert record.status is Status.COMPLETED
        assert op(key) == f"{key}:{nonces[0]}"
    extra.close()
    idem.store.close()
    assert not (workdir / "ledger-parent").read_text()
    report.emit(
        f"concurrency[{name}]",
        calls=len(outcomes),
        executions=sum(len(n) for n in runs.values()),
        replays=len(values) - KEYS,
        in_progress=busy,
        seconds=f"{seconds:.1f}",
    )


@pytest.mark.parametrize("backend_url", MULTIPROCESS, indirect=True)
def test_processes_and_threads_run_each_body_once(backend_url: str, tmp_path: Path) -> None:
    namespace = f"reliability.concurrency.{uuid.uuid4().hex[:8]}"
    # Forks of the preloaded forkserver (idempotence.testing.process_context): separate
    # processes, each with its own store and connections, without an interpreter start-up.
    start = process_context().Barrier(PROCESSES + 1)
    plan = _plan(seed=1, groups=PROCESSES * THREADS)
    procs = [
        start_process(
            workers.hammer,
            backend_url,
            namespace,
            plan[p * THREADS : (p + 1) * THREADS],
            str(tmp_path),
            str(p),
            start,
        )
        for p in range(PROCESSES)
    ]
    start.wait(timeout=90)  # every process has built its store and connected
    began = time.monotonic()
    for p in procs:
        p.join(timeout=90)
    seconds = time.monotonic() - began
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    _check(backend_url, namespace, tmp_path, backend_url.split(":")[0], seconds)


@pytest.mark.parametrize("backend_url", ["memory"], indirect=True)
def test_threads_run_each_body_once_in_memory(backend_url: str, tmp_path: Path) -> None:
    """The memory store lives in one process: the same workload on 128 threads there."""
    idem = Idempotency(backend_url, lease=30, ttl=600)
    namespace = "reliability.concurrency.memory"
    plan = _plan(seed=2, groups=PROCESSES * THREADS)
    ledger = workers.Appender(tmp_path / "ledger-0")
    results = workers.Appender(tmp_path / "results-0")
    op = workers.make_op(idem, namespace, ledger, body_seconds=0.005)
    gate = threading.Barrier(len(plan))

    def thread(keys: list[str]) -> None:
        gate.wait()
        for key in keys:
            try:
                results.line(json.dumps({"key": key, "value": op(key)}))
            except AlreadyInProgressError:
                results.line(json.dumps({"key": key, "in_progress": True}))

    threads = [threading.Thread(target=thread, args=(keys,)) for keys in plan]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - began
    ledger.close()
    results.close()

    runs = report.ledger(tmp_path)
    outcomes = report.results(tmp_path)
    assert len(outcomes) == KEYS * CALLS_PER_KEY
    assert all(len(n) == 1 for n in runs.values())
    assert len(runs) == KEYS
    values = [o for o in outcomes if "value" in o]
    assert all(o["value"] == f"{o['key']}:{runs[o['key']][0]}" for o in values)
    for key, nonces in runs.items():  # replays: same result, the body does not run
        assert op(key) == f"{key}:{nonces[0]}"
    assert report.ledger(tmp_path) == runs
    report.emit(
        "concurrency[memory]",
        calls=len(outcomes),
        executions=sum(len(n) for n in runs.values()),
        replays=len(values) - KEYS,
        in_progress=len(outcomes) - len(values),
        seconds=f"{seconds:.1f}",
    )
