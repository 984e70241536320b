"""idempotence.celery: idempotent Celery tasks.

In process (``task.apply()``, Celery's own tracer, on every store): keys from arguments,
``key=`` and the message header, key reuse, released keys after a failure, duplicates in
progress, configuration errors. With real workers (``celery worker`` processes on the
Redis broker and result backend, the Redis store): the example app's tasks sent twice, a
header key, key reuse failing the task, a duplicate delivered while the first runs
(retried, then replayed), ``self.retry()`` with ``store_errors``, and a worker SIGKILLed
mid-task (``acks_late``) whose redelivered message takes the lapsed claim over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import types
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")

from celery import Celery, Task
from celery.exceptions import Retry

from idempotence import (
    AlreadyInProgressError,
    Idempotency,
    InvalidKeyError,
    KeyReuseError,
    MissingDependencyError,
    MissingKeyError,
    Status,
    StoreError,
    current_key,
)
from idempotence.celery import DEFAULT_HEADER, IdempotentTask
from idempotence.stores import MemoryStore, Store
from tests import moto_server
from tests.conftest import backend_unavailable, redis_client_or_unavailable
from tests.http.conftest import BACKENDS, make_store, mysql_admin, postgres_admin, redis_ok

ROOT = Path(__file__).resolve().parent.parent
dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture
__all__ = ["dynamodb_endpoint", "mysql_admin", "postgres_admin", "redis_ok"]  # fixtures by name


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()


def new_app() -> Celery:
    return Celery(f"unit-{uuid.uuid4().hex[:8]}", set_as_current=False)


# -- in process: task.apply() through Celery's tracer ------------------------------------
def test_same_arguments_run_once_and_replay_the_first_result(store: Store) -> None:
    app, idem, runs = new_app(), Idempotency(store), []
    keys: list[str | None] = []

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.charge")
    def charge(order_id: str, amount_cents: int) -> dict[str, Any]:
        runs.append(order_id)
        keys.append(current_key())  # e.g. the payment provider's own idempotency key
        return {"charge": uuid.uuid4().hex, "amount": amount_cents}

    first = charge.apply(("o-1", 500)).get()
    assert charge.apply(("o-1", 500)).get() == first
    assert charge.apply(kwargs={"order_id": "o-1", "amount_cents": 500}).get() == first
    assert charge("o-1", 500) == first  # called directly: the same key
    other = charge.apply(("o-2", 500)).get()
    assert other != first
    assert runs == ["o-1", "o-2"]
    key = charge.idempotency_key_for(("o-1", 500))
    assert key.startswith("orders.charge#")
    assert keys == [key, charge.idempotency_key_for(("o-2", 500))]
    record = store.get(key)
    assert record is not None
    assert record.status is Status.COMPLETED


def test_header_key_wins_over_the_arguments_and_refuses_other_arguments(store: Store) -> None:
    app, idem, runs = new_app(), Idempotency(store), []

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.charge")
    def charge(order_id: str, amount_cents: int) -> str:
        runs.append(order_id)
        return uuid.uuid4().hex

    headers = {DEFAULT_HEADER: "request-7"}
    first = charge.apply(("o-1", 500), headers=headers).get()
    assert charge.apply(("o-1", 500), headers=headers).get() == first
    reused = charge.apply(("o-1", 999), headers=headers)
    assert reused.failed()
    assert isinstance(reused.result, KeyReuseError)
    assert "o-1" not in str(reused.result)
    assert "request-7" not in str(reused.result)
    # A header key is not the key of the same arguments sent without the header.
    assert charge.apply(("o-1", 500)).get() != first
    assert runs == ["o-1", "o-1"]
    assert charge.idempotency_key_for(("o-1", 500), header="request-7") != (
        charge.idempotency_key_for(("o-1", 500))
    )
    assert store.get(charge.idempotency_key_for(("o-1", 500), header="request-7")) is not None


def test_a_body_that_raises_releases_the_key_and_runs_again(store: Store) -> None:
    app, idem, runs = new_app(), Idempotency(store), []

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.flaky")
    def flaky(order_id: str) -> int:
        runs.append(order_id)
        if len(runs) == 1:
            raise ConnectionError("gateway down")
        return len(runs)

    failed = flaky.apply(("o-1",))
    assert isinstance(failed.result, ConnectionError)
    assert flaky.apply(("o-1",)).get() == 2
    assert flaky.apply(("o-1",)).get() == 2
    assert runs == ["o-1", "o-1"]


def test_a_duplicate_in_progress_fails_in_process(store: Store) -> None:
    """Inside a running task the same key is in progress: a nested ``apply()`` (eager: no
    message to retry) fails with AlreadyInProgressError instead of running the body."""
    app, idem = new_app(), Idempotency(store, lease=30)
    runs: list[str] = []
    nested: list[Any] = []

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.reentrant")
    def reentrant(order_id: str) -> str:
        runs.append(order_id)
        nested.append(reentrant.apply((order_id,)).result)
        return "done"

    assert reentrant.apply(("o-1",)).get() == "done"
    assert runs == ["o-1"]
    assert isinstance(nested[0], AlreadyInProgressError)
    assert 0 < nested[0].retry_after <= 30
    assert reentrant.apply(("o-1",)).get() == "done"
    assert runs == ["o-1"]


def test_key_option_selects_from_the_payload_and_bound_tasks_skip_self() -> None:
    app, idem, runs = new_app(), Idempotency(MemoryStore()), []

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=idem,
        bind=True,
        name="orders.receipt",
        idempotency_options={"key": "id"},
    )
    def receipt(self: Task[Any, Any], order: dict[str, Any]) -> str:
        runs.append(self.request.id)
        return f"sent to {order['email']}"

    order = {"id": "o-1", "email": "a@example.com"}
    assert receipt.apply((order,)).get() == "sent to a@example.com"
    assert receipt.apply((order,)).get() == "sent to a@example.com"
    changed = receipt.apply(({"id": "o-1", "email": "b@example.com"},))
    assert isinstance(changed.result, KeyReuseError)
    missing = receipt.apply(({"email": "c@example.com"},))
    assert isinstance(missing.result, MissingKeyError)
    assert len(runs) == 1
    with pytest.raises(MissingKeyError):
        receipt.idempotency_key_for(({"email": "c@example.com"},))


def test_an_unreachable_store_fails_the_task_without_running_it() -> None:
    pytest.importorskip("redis")
    app, runs = new_app(), []
    idem = Idempotency("redis://127.0.0.1:1/0")  # nothing listens on port 1

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.closed")
    def charge(order_id: str) -> str:
        runs.append(order_id)
        return order_id

    result = charge.apply(("o-1",))
    assert isinstance(result.result, StoreError)
    assert "o-1" not in str(result.result)
    assert runs == []  # fail closed: add StoreError to autoretry_for to retry later


def test_required_false_runs_keyless_messages_without_idempotency() -> None:
    app, idem, runs = new_app(), Idempotency(MemoryStore()), []

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=idem,
        name="orders.optional",
        idempotency_options={"key": "id", "required": False},
    )
    def optional(event: dict[str, Any]) -> int:
        runs.append(1)
        return len(runs)

    assert optional.apply(({"kind": "ping"},)).get() == 1
    assert optional.apply(({"kind": "ping"},)).get() == 2
    assert optional.apply(({"id": "e-1"},)).get() == 3
    assert optional.apply(({"id": "e-1"},)).get() == 3


@pytest.mark.parametrize(
    "value",
    [12345, "", "x" * 256, "line\nbreak", {"nested": "secret-material"}],
    ids=["int", "empty", "too-long", "control", "dict"],
)
def test_a_malformed_header_key_fails_without_running_or_echoing_it(value: Any) -> None:
    app, idem, runs = new_app(), Idempotency(MemoryStore()), []

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.charge")
    def charge(order_id: str) -> str:
        runs.append(order_id)
        return order_id

    result = charge.apply(("o-1",), headers={DEFAULT_HEADER: value})
    assert isinstance(result.result, InvalidKeyError)
    assert "secret-material" not in str(result.result)
    assert "xxxx" not in str(result.result)
    assert runs == []


def test_header_name_is_configurable_and_none_ignores_headers() -> None:
    app, idem, runs = new_app(), Idempotency(MemoryStore()), []

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=idem,
        name="a",
        idempotency_header="request_id",
    )
    def by_request(order_id: str) -> int:
        runs.append(1)
        return len(runs)

    @app.task(
        shared=False, base=IdempotentTask, idempotency=idem, name="b", idempotency_header=None
    )
    def by_arguments(order_id: str) -> int:
        runs.append(1)
        return len(runs)

    assert by_request.apply(("o-1",), headers={"request_id": "r-1"}).get() == 1
    assert by_request.apply(("o-2",), headers={DEFAULT_HEADER: "r-1"}).get() == 2
    assert by_request.apply(("o-2",), headers={"request_id": "r-2"}).get() == 3
    assert by_arguments.apply(("o-1",), headers={DEFAULT_HEADER: "r-1"}).get() == 4
    assert by_arguments.apply(("o-1",), headers={DEFAULT_HEADER: "r-2"}).get() == 4

    # A header name that is also a field of Celery's request (``id``, the task id) is read
    # from the message's headers only, never from that field.
    @app.task(
        shared=False, base=IdempotentTask, idempotency=idem, name="c", idempotency_header="id"
    )
    def by_id_header(order_id: str) -> int:
        runs.append(1)
        return len(runs)

    assert by_id_header.apply(("o-1",)).get() == 5
    assert by_id_header.apply(("o-1",)).get() == 5  # another task id, the same key
    assert by_id_header.apply(("o-1",), headers={"id": "k-1"}).get() == 6


def test_namespace_is_the_task_name_prefixed_or_replaced() -> None:
    app = new_app()

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=Idempotency(MemoryStore()),
        name="orders.charge",
    )
    def plain(order_id: str) -> str:
        return order_id

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=Idempotency(MemoryStore(), namespace="billing"),
        name="orders.prefixed",
    )
    def prefixed(order_id: str) -> str:
        return order_id

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=Idempotency(MemoryStore(), namespace="billing"),
        name="orders.charge.v2",
        idempotency_options={"namespace": "orders.charge"},
    )
    def renamed(order_id: str) -> str:
        return order_id

    assert plain.idempotency_key_for(("o-1",)).startswith("orders.charge#")
    assert prefixed.idempotency_key_for(("o-1",)).startswith("billing.orders.prefixed#")
    # A task renamed with namespace= pinned to its old name keeps its keys.
    assert renamed.idempotency_key_for(("o-1",)) == plain.idempotency_key_for(("o-1",))


def test_class_based_task_is_named_when_registered() -> None:
    app, runs = new_app(), []
    idem = Idempotency(MemoryStore())

    class Charge(IdempotentTask):
        idempotency = idem

        def run(self, order_id: str) -> str:
            runs.append(order_id)
            return order_id.upper()

    task = app.register_task(Charge())
    assert task.name.endswith(".Charge")  # Celery named it at registration
    assert task.apply(("o-1",)).get() == "O-1"
    assert task.apply(("o-1",)).get() == "O-1"
    assert runs == ["o-1"]
    assert task.idempotency_key_for(("o-1",)).startswith(f"{task.name}#")


def test_configuration_errors_are_raised_when_the_task_is_defined() -> None:
    """Celery defines a task when its app is finalized (a worker's start) or the task is
    first used: that is when a misconfigured one fails, before any message runs."""
    app = new_app()
    idem = Idempotency(MemoryStore())

    @app.task(shared=False, base=IdempotentTask, name="orders.none")
    def no_store(order_id: str) -> None: ...

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=idem,
        name="orders.unknown",
        idempotency_options={"no_such_option": 1},
    )
    def unknown(order_id: str) -> None: ...

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=idem,
        name="orders.payload",
        idempotency_options={"payload": "missing"},
    )
    def bad_payload(order_id: str) -> None: ...

    @app.task(
        shared=False,
        base=IdempotentTask,
        idempotency=idem,
        name="orders.opts",
        idempotency_options=["k"],
    )
    def bad_options(order_id: str) -> None: ...

    @app.task(
        shared=False, base=IdempotentTask, idempotency=idem, name="orders.hdr", idempotency_header=5
    )
    def bad_header(order_id: str) -> None: ...

    with pytest.raises(TypeError, match=r"idempotency=Idempotency\(\.\.\.\)"):
        _ = no_store.name
    with pytest.raises(TypeError, match="no_such_option"):
        _ = unknown.name
    with pytest.raises(TypeError, match="payload="):
        _ = bad_payload.name
    with pytest.raises(TypeError, match="mapping"):
        _ = bad_options.name
    with pytest.raises(TypeError, match="idempotency_header"):
        _ = bad_header.name

    for name, options in [
        ("orders.r1", {"idempotency_retry": "yes"}),
        ("orders.r2", {"idempotency_retry_countdown": "5"}),
        ("orders.r3", {"idempotency_retry_countdown": -1}),
        ("orders.r4", {"idempotency_retry_countdown": float("nan")}),
    ]:

        @app.task(shared=False, base=IdempotentTask, idempotency=idem, name=name, **options)
        def bad_retry(order_id: str) -> None: ...

        with pytest.raises(TypeError, match="idempotency_retry"):
            _ = bad_retry.name


def test_disabled_runs_every_time_and_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    app, idem, runs = new_app(), Idempotency(MemoryStore()), []

    @app.task(shared=False, base=IdempotentTask, idempotency=idem, name="orders.disabled")
    def charge(order_id: str) -> int:
        runs.append(1)
        return len(runs)

    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")
    with pytest.warns(RuntimeWarning, match="IDEMPOTENCE_DISABLED"):
        assert charge("o-1") == 1
    assert charge("o-1") == 2
    monkeypatch.delenv("IDEMPOTENCE_DISABLED")
    assert charge("o-1") == 3
    assert charge("o-1") == 3


class _Delivered:
    """A delivered message's request (not eager, not a direct call), pushed around a call
    the way the worker's tracer does; ``retry`` publishes to the in-memory broker."""

    def __init__(self, task: Any, **extra: Any) -> None:
        self.task, self.extra = task, extra

    def __call__(self, *args: Any) -> Any:
        self.task.push_request(
            id=uuid.uuid4().hex,
            args=args,
            kwargs={},
            is_eager=False,
            called_directly=False,
            retries=0,
            delivery_info={"exchange": "", "routing_key": "celery"},
            **self.extra,
        )
        try:
            return self.task(*args)
        finally:
            self.task.pop_request()


def test_a_delivered_duplicate_in_progress_is_retried_after_the_lease() -> None:
    app = Celery(f"unit-{uuid.uuid4().hex[:8]}", broker="memory://", set_as_current=False)
    store = MemoryStore()
    idem = Idempotency(store, lease=30)
    outcomes: list[BaseException] = []

    def define(name: str, **options: Any) -> Any:
        @app.task(shared=False, base=IdempotentTask, idempotency=idem, name=name, **options)
        def busy(order_id: str) -> str:
            try:
                _Delivered(busy)(order_id)  # the same message again while this one runs
            except BaseException as exc:
                outcomes.append(exc)
            return "done"

        return busy

    define("orders.retried")("o-1")
    retry = outcomes.pop()
    assert isinstance(retry, Retry)
    assert isinstance(retry.exc, AlreadyInProgressError)
    assert retry.when is not None
    assert 20 < float(retry.when) <= 30  # the running claim's remaining lease

    define("orders.countdown", idempotency_retry_countdown=2.5)("o-1")
    assert float(outcomes.pop().when) == 2.5  # type: ignore[attr-defined]

    define("orders.raising", idempotency_retry=False)("o-1")
    assert isinstance(outcomes.pop(), AlreadyInProgressError)
    with contextlib.suppress(Exception):
        app.close()


def test_retry_inside_the_body_is_never_a_stored_error() -> None:
    app = Celery(f"unit-{uuid.uuid4().hex[:8]}", broker="memory://", set_as_current=False)
    store = MemoryStore()
    idem = Idempotency(store, store_errors=(Exception,))
    runs: list[int] = []

    @app.task(
        shared=False, base=IdempotentTask, idempotency=idem, bind=True, name="orders.retry_first"
    )
    def charge(self: Task[Any, Any], order_id: str) -> int:
        runs.append(1)
        if len(runs) == 1:
            raise self.retry(countdown=60)
        return len(runs)

    with pytest.raises(Retry):
        _Delivered(charge)("o-1")
    assert store.get(charge.idempotency_key_for(("o-1",))) is None  # released, not stored
    assert _Delivered(charge)("o-1") == 2
    assert _Delivered(charge)("o-1") == 2
    with contextlib.suppress(Exception):
        app.close()


def test_missing_celery_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    monkeypatch.setitem(sys.modules, "celery", None)
    monkeypatch.delitem(sys.modules, "idempotence.celery")
    with pytest.raises(MissingDependencyError, match=r"idempotence\[celery\]"):
        importlib.import_module("idempotence.celery")


# -- real workers --------------------------------------------------------------------------
BROKER = os.environ.get("IDEMPOTENCE_TEST_CELERY_BROKER", "redis://127.0.0.1:6379/12")
#: The workers' store; default: the broker's Redis (a SQLite file works too: shared by the
#: processes of one machine).
STORE = os.environ.get("IDEMPOTENCE_TEST_CELERY_STORE", "")
WORKER_READY_TIMEOUT = 120.0  # cold imports on a loaded machine are slow


class Worker:
    """A ``celery -A tests.celery_app worker`` process, logging to a file."""

    def __init__(self, name: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.name, self.log = f"{name}@celery-test", log
        self.output = log.open("wb")
        command = [
            sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-n", self.name,
            "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat", *args,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if f"{self.name} ready." in self.text():
                return
            if self.process.poll() is not None:
                pytest.fail(f"worker {self.name} exited:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        pytest.fail(f"worker {self.name} did not start:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.output.close()


class Cluster(types.SimpleNamespace):
    """The test's view of the running workers: the app module, the ledger of effects."""

    app: Any
    tasks: types.ModuleType
    state: Path
    ledger: Path
    main: Worker
    crash: Worker
    worker_env: dict[str, str]

    def effects(self, order_id: str) -> list[str]:
        if not self.ledger.exists():
            return []
        return [line for line in self.ledger.read_text().splitlines() if f" {order_id} " in line]

    def attempts(self, name: str) -> int:
        path = self.state / f"{name}.attempts"
        return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        import redis  # noqa: F401 - missing fails in CI here, not a plain skip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        backend_unavailable(f"redis not installed: {exc}")
    client = redis_client_or_unavailable(BROKER)
    client.flushdb()  # this module's database: broker queues, results and records
    state = tmp_path_factory.mktemp("celery")
    env = {
        "CELERY_BROKER_URL": BROKER,
        "LEDGER_PATH": str(state / "ledger.txt"),
        "CELERY_TEST_STATE": str(state),
    }
    if STORE:
        env["IDEMPOTENCE_STORE"] = STORE
    worker_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    if not STORE:
        worker_env.pop("IDEMPOTENCE_STORE", None)  # the example's default: the broker's Redis
    # Two workers: "main" (prefork, two processes: duplicates can run side by side) and
    # "crash" (solo: SIGKILL stops the process running the task), on its own queue.
    main = Worker(
        "main", worker_env, state / "main.log", "-P", "prefork", "-c", "2", "-Q", "celery"
    )
    # -c 1: the solo worker reserves one message at a time (its prefetch is its concurrency).
    crash = Worker("crash", worker_env, state / "crash.log", "-P", "solo", "-c", "1", "-Q", "crash")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        if not STORE:
            patch.delenv("IDEMPOTENCE_STORE", raising=False)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import tests.celery_app as tasks
            deadline = time.monotonic() + WORKER_READY_TIMEOUT
            main.wait_ready(deadline)
            crash.wait_ready(deadline)
            yield Cluster(
                app=tasks.app,
                tasks=tasks,
                state=state,
                ledger=state / "ledger.txt",
                main=main,
                crash=crash,
                worker_env=worker_env,
            )
        finally:
            main.stop()
            crash.stop()
            with contextlib.suppress(Exception):
                tasks.app.close()
            client.flushdb()
            client.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


RESULT_TIMEOUT = 60.0
VISIBILITY_TIMEOUT = 5.0  # tests/celery_app.py's broker_transport_options


def test_worker_runs_the_same_task_sent_twice_once(cluster: Cluster) -> None:
    assert cluster.tasks.EXAMPLE == ROOT / "examples" / "celery_app" / "tasks.py"
    charge = cluster.tasks.example.charge
    order = f"o-{uuid.uuid4().hex[:8]}"
    first = charge.delay(order, 1250)
    one = first.get(timeout=RESULT_TIMEOUT)
    second = charge.delay(order, 1250)  # a resend: another message, another task id
    assert second.id != first.id
    assert second.get(timeout=RESULT_TIMEOUT) == one
    assert one["order_id"] == order
    assert len(cluster.effects(order)) == 1
    assert one["charge_id"] in cluster.effects(order)[0]
    # Different arguments are another operation.
    other = charge.delay(order, 990).get(timeout=RESULT_TIMEOUT)
    assert other["charge_id"] != one["charge_id"]
    assert len(cluster.effects(order)) == 2


def test_worker_uses_the_header_key_and_fails_a_reused_key(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    producer_path = ROOT / "examples" / "celery_app" / "producer.py"
    monkeypatch.setitem(sys.modules, "tasks", cluster.tasks.example)  # producer's import
    namespace: dict[str, Any] = {"__name__": "celery_example_producer"}
    exec(compile(producer_path.read_text(), str(producer_path), "exec"), namespace)

    order, request = f"o-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    first = namespace["charge_with_key"](request, order, 500)
    assert namespace["charge_with_key"](request, order, 500) == first
    assert len(cluster.effects(order)) == 1
    with pytest.raises(KeyReuseError):  # the task failed with it; the backend rebuilt it
        namespace["charge_with_key"](request, order, 501)
    assert len(cluster.effects(order)) == 1

    twice = f"o-{uuid.uuid4().hex[:8]}"
    one, two = namespace["charge_twice"](twice, 700)
    assert one == two
    assert len(cluster.effects(twice)) == 1

    receipt = cluster.tasks.example.send_receipt
    sent = receipt.delay({"id": order, "email": "a@example.com"}).get(timeout=RESULT_TIMEOUT)
    assert receipt.delay({"id": order, "email": "a@example.com"}).get(timeout=60) == sent
    changed = receipt.delay({"id": order, "email": "b@example.com"})
    with pytest.raises(KeyReuseError):
        changed.get(timeout=RESULT_TIMEOUT)
    assert changed.state == "FAILURE"
    assert len(cluster.effects(f"receipt:{order}")) == 1


@pytest.mark.parametrize("keyed_by", ["arguments", "header"])
def test_worker_retries_a_duplicate_delivered_while_the_first_runs(
    cluster: Cluster, keyed_by: str
) -> None:
    """Two messages side by side (two worker processes): one runs, the other is retried
    after the running claim's lease, then replays. Keyed by the header, the retry carries
    the header (else it would run again under the key of its arguments)."""
    slow = cluster.tasks.slow
    order = f"o-{uuid.uuid4().hex[:8]}"
    headers = {"idempotency_key": uuid.uuid4().hex} if keyed_by == "header" else None
    first = slow.apply_async((order, 2.0), headers=headers)
    second = slow.apply_async((order, 2.0), headers=headers)
    one = first.get(timeout=RESULT_TIMEOUT)
    assert second.get(timeout=RESULT_TIMEOUT) == one
    assert cluster.attempts(f"slow-{order}") == 1
    assert len(cluster.effects(order)) == 1
    log = cluster.main.text()
    retried = [i for i in (first.id, second.id) if f"{i}] retry: Retry in" in log]
    assert len(retried) == 1, log[-3000:]
    assert "AlreadyInProgressError" in log


def test_worker_retry_from_the_body_runs_again_despite_store_errors(cluster: Cluster) -> None:
    order = f"o-{uuid.uuid4().hex[:8]}"
    result = cluster.tasks.retrying.delay(order).get(timeout=RESULT_TIMEOUT)
    assert result["attempt"] == 2
    assert cluster.attempts(f"retrying-{order}") == 2
    assert len(cluster.effects(order)) == 1
    again = cluster.tasks.retrying.delay(order).get(timeout=RESULT_TIMEOUT)
    assert again == result


def test_worker_killed_mid_task_redelivery_takes_the_claim_over(cluster: Cluster) -> None:
    crashable = cluster.tasks.crashable
    order = f"o-{uuid.uuid4().hex[:8]}"
    store = cluster.tasks.example.idem.store
    key = crashable.idempotency_key_for((order,))
    message = crashable.delay(order)
    wait_for(lambda: (cluster.state / f"crashable-{order}.started").exists(), 60, "the first run")
    running = store.get(key)
    assert running is not None
    assert running.status is Status.IN_PROGRESS
    cluster.crash.kill()  # mid-task: the message is not acknowledged (acks_late)
    # The broker delivers it again once it has been unacknowledged for the visibility
    # timeout (5 s); a replacement worker started after that takes it at start-up.
    time.sleep(VISIBILITY_TIMEOUT + 0.5)
    replacement = Worker(
        "replacement", cluster.worker_env, cluster.state / "replacement.log",
        "-P", "solo", "-c", "1", "-Q", "crash",
    )  # fmt: skip
    try:
        replacement.wait_ready(time.monotonic() + WORKER_READY_TIMEOUT)
        result = message.get(timeout=RESULT_TIMEOUT)
        assert result["attempt"] == 2
        assert len(cluster.effects(order)) == 1
        done = store.get(key)
        assert done is not None
        assert done.status is Status.COMPLETED
        assert done.fence == running.fence + 1  # the lapsed claim was taken over
        assert crashable.delay(order).get(timeout=RESULT_TIMEOUT) == result  # a replay
        assert cluster.attempts(f"crashable-{order}") == 2
    finally:
        replacement.stop()
