"""Crash storm: worker processes SIGKILL themselves at planned points while several of them
work through the same keys with a short lease (heartbeat off: a dead process renews
nothing anyway). Replacement workers retry; once a dead claim's lease lapses they take the
key over. Afterwards every key is completed, and no key ran its body twice except where
the kill fell after the side effect and before ``complete`` (the documented window): the
number of duplicate executions equals the number of such kills, exactly."""

from __future__ import annotations

import random
import signal
import time
import uuid
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest

from idempotence import Idempotency
from idempotence._record import Status
from idempotence.testing import start_process
from tests.reliability import report, workers
from tests.reliability.conftest import MULTIPROCESS

KEYS = 40
KILLS_PER_POINT = 4  # x 4 kill points = 16 SIGKILLs per store
CONCURRENT = 4  # worker processes alive at a time
LEASE = 1.5


def _kill_plan(keys: list[str], seed: int) -> dict[str, str]:
    chosen = random.Random(seed).sample(keys, KILLS_PER_POINT * len(workers.KILL_POINTS))
    return {key: workers.KILL_POINTS[i // KILLS_PER_POINT] for i, key in enumerate(sorted(chosen))}


@pytest.mark.parametrize("backend_url", MULTIPROCESS, indirect=True)
def test_sigkill_storm_duplicates_only_in_the_known_window(
    backend_url: str, tmp_path: Path
) -> None:
    namespace = f"reliability.crash.{uuid.uuid4().hex[:8]}"
    keys = [f"c{i:02d}" for i in range(KEYS)]
    plan = _kill_plan(keys, seed=7)
    deadline = time.time() + 90
    seeds = iter(range(1000))
    began = time.monotonic()

    def spawn() -> BaseProcess:
        # A fork of the preloaded forkserver (idempotence.testing.process_context): no
        # interpreter start-up and imports per worker, nothing shared with this process.
        return start_process(
            workers.crash_worker,
            backend_url,
            namespace,
            keys,
            plan,
            str(tmp_path),
            LEASE,
            next(seeds),
            deadline,
        )

    running = [spawn() for _ in range(CONCURRENT)]
    killed = finished = 0
    while running:
        time.sleep(0.05)
        for proc in [p for p in running if p.exitcode is not None]:
            running.remove(proc)
            code = proc.exitcode
            proc.close()
            if code == -signal.SIGKILL:
                killed += 1
                running.append(spawn())  # a replacement takes up the dead one's keys
            else:
                assert code == 0, f"a worker failed (exit code {code}); see its output above"
                finished += 1
        assert time.time() < deadline + 10, "the storm did not settle in time"
    seconds = time.monotonic() - began

    runs = report.ledger(tmp_path)
    window_kills = report.windows(tmp_path)
    outcomes = report.results(tmp_path)
    duplicates = {key: len(nonces) - 1 for key, nonces in runs.items() if len(nonces) > 1}

    assert killed == len(plan), "every planned kill fired exactly once"
    assert sorted(runs) == keys, "every key ran (at least once)"
    # The exact window: a duplicate where (and only where) a kill fell after the effect and
    # before complete, one extra execution per such kill.
    assert duplicates == dict(window_kills)
    assert sorted(window_kills) == sorted(k for k, p in plan.items() if p in workers.WINDOW_POINTS)

    # Every caller saw the one completed execution (the last one), and so does a replay.
    idem = Idempotency(backend_url, lease=LEASE, heartbeat=False, ttl=600)
    extra = workers.Appender(tmp_path / "ledger-parent")
    op = workers.make_op(idem, namespace, extra)
    for key in keys:
        record = op.record_for(key)
        assert record is not None
        assert record.status is Status.COMPLETED
        stored = op(key)
        assert stored == f"{key}:{runs[key][-1]}"
        assert {o["value"] for o in outcomes if o["key"] == key} == {stored}
    extra.close()
    idem.store.close()
    assert not (tmp_path / "ledger-parent").read_text(), "a replay ran a body"
    report.emit(
        f"crash_storm[{backend_url.split(':')[0]}]",
        keys=KEYS,
        sigkills=killed,
        worker_processes=killed + finished,
        executions=sum(len(n) for n in runs.values()),
        windows=sum(window_kills.values()),
        duplicates=sum(duplicates.values()),
        seconds=f"{seconds:.1f}",
    )
