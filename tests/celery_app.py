"""The Celery app of tests/test_celery.py's workers: examples/celery_app/tasks.py (loaded
under one module name in the workers and in the test process, so both see the same tasks),
plus tasks that crash, run slowly or retry. Run by ``celery -A tests.celery_app worker``.

Configured by the environment the test sets: ``CELERY_BROKER_URL`` (the broker, result
backend and store), ``LEDGER_PATH`` (the effects, one line each) and ``CELERY_TEST_STATE``
(a directory for attempt counters and markers).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "celery_app" / "tasks.py"


def _load_example() -> Any:
    name = "celery_example_tasks"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()
app = example.app
app.conf.update(
    # A message not acknowledged within 5 s is delivered again (a worker killed mid-task),
    # abandoned messages are looked for every second instead of every 10 s x 10, and the
    # lock of that sweep outlives a killed holder by 10 s instead of 5 minutes.
    broker_transport_options={
        "visibility_timeout": 5,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": 10,
    },
    worker_prefetch_multiplier=1,
    task_routes={"tests.crashable": {"queue": "crash"}},
    broker_connection_retry_on_startup=True,
)
Idempotent = example.Idempotent
STATE = Path(os.environ.get("CELERY_TEST_STATE", "."))


def attempt(name: str) -> int:
    """Counts the runs of a body across processes (O_APPEND writes of one line)."""
    path = STATE / f"{name}.attempts"
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    return len(path.read_text(encoding="utf-8").splitlines())


@app.task(base=Idempotent, name="tests.crashable", idempotency_options={"lease": 2})
def crashable(order_id: str) -> dict[str, Any]:
    """The first run announces itself and hangs (the test kills its worker); the
    redelivered message's run charges."""
    n = attempt(f"crashable-{order_id}")
    if n == 1:
        (STATE / f"crashable-{order_id}.started").touch()
        time.sleep(60)
    return {"charge_id": example.payment_gateway_charge(order_id, 1), "attempt": n}


@app.task(base=Idempotent, name="tests.slow", idempotency_options={"lease": 4})
def slow(order_id: str, seconds: float) -> dict[str, Any]:
    """Runs ``seconds`` (heartbeats keep its 4 s lease), then charges; a duplicate is
    retried after the lease left (under the 5 s visibility timeout)."""
    attempt(f"slow-{order_id}")
    time.sleep(seconds)
    return {"charge_id": example.payment_gateway_charge(order_id, 1)}


@app.task(
    base=Idempotent,
    bind=True,
    name="tests.retrying",
    idempotency_options={"store_errors": (Exception,)},
)
def retrying(self: Any, order_id: str) -> dict[str, Any]:
    """Asks Celery to retry its first run (``self.retry``), then charges: a retry is not a
    stored error, even with ``store_errors=(Exception,)``."""
    n = attempt(f"retrying-{order_id}")
    if n == 1:
        raise self.retry(countdown=0.2)
    return {"charge_id": example.payment_gateway_charge(order_id, 1), "attempt": n}
