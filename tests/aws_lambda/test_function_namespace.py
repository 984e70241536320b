"""One code base deployed as several Lambda functions over one table: the function name
(``AWS_LAMBDA_FUNCTION_NAME``, read at decoration - or at each ``process_batch`` call) is
part of the default namespace, so each function runs each event once, and two functions
never answer each other's events."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.stores import MemoryStore, SQLiteStore, Store
from tests.aws_lambda.events import FakeContext, load


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return SQLiteStore(tmp_path / "shared.db")
    return MemoryStore()


def deploy(store: Store, function: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same module code, decorated as the Lambda runtime would load it under
    ``function``: a fresh Idempotency over the shared table."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", function)
    return Idempotency(store)


def on_eventbridge(runs: Counter[str], name: str) -> Any:
    def handler(event: dict[str, Any], context: Any) -> str:
        runs[name] += 1
        return name

    return handler


def test_handler_of_two_functions_each_run(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: Counter[str] = Counter()
    event = load("eventbridge")  # one rule, two targets: both get the same event id
    first = deploy(store, "orders-audit", monkeypatch).handler(on_eventbridge(runs, "audit"))
    second = deploy(store, "orders-mailer", monkeypatch).handler(on_eventbridge(runs, "mailer"))
    assert first(copy.deepcopy(event), FakeContext()) == "audit"
    assert second(copy.deepcopy(event), FakeContext()) == "mailer"  # not audit's answer
    # A redelivery to each function is a replay of its own result.
    assert first(copy.deepcopy(event), FakeContext()) == "audit"
    assert second(copy.deepcopy(event), FakeContext()) == "mailer"
    assert runs == {"audit": 1, "mailer": 1}


def test_handler_same_function_name_replays(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: Counter[str] = Counter()
    event = load("eventbridge")
    # Two cold starts of one function (two execution environments): one run.
    a = deploy(store, "orders-audit", monkeypatch).handler(on_eventbridge(runs, "audit"))
    b = deploy(store, "orders-audit", monkeypatch).handler(on_eventbridge(runs, "audit"))
    assert a(copy.deepcopy(event), FakeContext()) == "audit"
    assert b(copy.deepcopy(event), FakeContext()) == "audit"
    assert runs == {"audit": 1}


def record_handler(record: dict[str, Any]) -> str:
    RUNS[record["eventSource"]] += 1
    return "done"


RUNS: Counter[str] = Counter()


def test_process_batch_of_two_functions_each_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two consumers of one Kinesis stream see the same sequence numbers.
    RUNS.clear()
    event = load("kinesis")
    n = len(event["Records"])
    for function in ("stream-indexer", "stream-archiver", "stream-indexer"):
        idem = deploy(store, function, monkeypatch)
        response = idem.process_batch(copy.deepcopy(event), record_handler, context=FakeContext())
        assert response == {"batchItemFailures": []}
    assert dict(RUNS) == {"aws:kinesis": 2 * n}  # each function once; the third call replayed


def test_plain_function_of_two_functions_each_run(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: Counter[str] = Counter()

    def make(function: str) -> Any:
        @deploy(store, function, monkeypatch)
        def notify(message: dict[str, Any]) -> str:
            runs[function] += 1
            return function

        return notify

    sns_fanout = {"order_id": "ord-1", "status": "paid"}
    email, sms, email_again = make("notify-email"), make("notify-sms"), make("notify-email")
    assert email(sns_fanout) == "notify-email"
    assert sms(sns_fanout) == "notify-sms"
    assert email_again(sns_fanout) == "notify-email"
    assert runs == {"notify-email": 1, "notify-sms": 1}
    assert email.key_for(sns_fanout) == email_again.key_for(sns_fanout)
    assert email.key_for(sns_fanout) != sms.key_for(sns_fanout)
    assert email.key_for(sns_fanout).startswith("notify-email:tests.aws_lambda.")


def test_outside_lambda_the_namespace_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)

    @Idempotency(MemoryStore(), namespace="svc")
    def f(x: int) -> int:
        return x

    assert f.key_for(1).startswith(
        "svc.tests.aws_lambda.test_function_namespace."
        "test_outside_lambda_the_namespace_is_unchanged.<locals>.f#"
    )


def test_an_explicit_namespace_is_shared_on_purpose(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: Counter[str] = Counter()

    def make(function: str) -> Any:
        @deploy(store, function, monkeypatch)(namespace="orders.charge")
        def charge(order: dict[str, Any]) -> str:
            runs[function] += 1
            return "charged"

        return charge

    assert make("charge-a")({"id": 1}) == "charged"
    assert make("charge-b")({"id": 1}) == "charged"
    assert runs == {"charge-a": 1}


def test_record_handlers_without_a_name_need_a_namespace() -> None:
    import functools

    idem = Idempotency(MemoryStore())
    event = load("sqs")

    def handle(record: dict[str, Any], tag: str) -> str:
        return tag

    class Handler:
        def __call__(self, record: dict[str, Any]) -> str:
            return "ok"

    for bad in (lambda record: "ok", functools.partial(handle, tag="x"), Handler()):
        with pytest.raises(TypeError, match="namespace="):
            idem.process_batch(copy.deepcopy(event), bad)
        response = idem.process_batch(copy.deepcopy(event), bad, namespace=f"ns.{id(bad)}")
        assert response == {"batchItemFailures": []}
