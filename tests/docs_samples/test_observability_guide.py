"""The code of docs/observability.md. The page includes this file's sections, so they run
here as written."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator

import pytest

from idempotence import Idempotency, observe
from idempotence.stores import MemoryStore


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    yield
    for observer in observe.observers:
        observe.unsubscribe(observer)


def test_subscribe() -> None:
    # --8<-- [start:subscribe]
    from idempotence import observe

    outcomes: Counter[str] = Counter()

    def count(event: observe.Event) -> None:
        outcomes[f"{event.namespace}:{event.outcome.value}"] += 1

    stop = observe.subscribe(count)  # every idempotent call of the process, from now on

    idem = Idempotency(MemoryStore())

    @idem(key="order_id", namespace="orders.charge")
    def charge(order: dict) -> str:
        return f"ch_{order['order_id']}"

    charge({"order_id": 1})
    charge({"order_id": 1})  # a retry: replayed
    assert outcomes == {"orders.charge:executed": 1, "orders.charge:replayed": 1}
    stop()
    # --8<-- [end:subscribe]


def test_log_events(caplog: pytest.LogCaptureFixture) -> None:
    idem = Idempotency(MemoryStore())

    @idem(key="order_id", namespace="orders.charge")
    def charge(order: dict) -> str:
        return "ok"

    # --8<-- [start:logging]
    from idempotence import observe

    observe.log_events()  # replays at DEBUG, refusals and failures at WARNING/ERROR
    logging.getLogger("idempotence").setLevel(logging.DEBUG)
    # --8<-- [end:logging]
    with caplog.at_level(logging.DEBUG, "idempotence"):
        charge({"order_id": 1})
        charge({"order_id": 1})
    (record,) = caplog.records
    assert record.getMessage() == "idempotent call in orders.charge replayed from the store"
    assert record.idempotence_outcome == "replayed"  # type: ignore[attr-defined]


def test_otel() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # --8<-- [start:otel]
    from idempotence import otel

    otel.instrument(tracer_provider=provider)  # default: the global providers
    # --8<-- [end:otel]
    try:
        idem = Idempotency(MemoryStore())

        @idem(namespace="orders.charge")
        def charge(order_id: int) -> int:
            return order_id

        charge(1)
    finally:
        otel.uninstrument()
    (span,) = exporter.get_finished_spans()
    assert span.name == "idempotent orders.charge"


def test_emf(capsys: pytest.CaptureFixture[str]) -> None:
    # --8<-- [start:emf]
    from idempotence import emf

    emf.enable(namespace="Orders", properties={"Service": "checkout"},
               dimensions=[["Service", "Outcome"], ["KeyNamespace", "Outcome"]])  # fmt: skip
    # --8<-- [end:emf]
    try:
        idem = Idempotency(MemoryStore())

        @idem(namespace="orders.charge")
        def charge(order_id: int) -> int:
            return order_id

        charge(1)
    finally:
        emf.disable()
    (line,) = capsys.readouterr().out.splitlines()
    document = json.loads(line)
    assert document["Service"] == "checkout"
    assert document["Outcome"] == "executed"
