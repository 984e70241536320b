"""``idempotence.otel``: one span per idempotent call, child of the caller's span and parent
of the function's spans, with outcome attributes; call, conflict and latency metrics."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")  # the dev group installs it: missing fails in CI

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from idempotence import AlreadyInProgressError, Idempotency, KeyReuseError, otel
from idempotence.stores import MemoryStore


class Telemetry:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.tracer = self.tracer_provider.get_tracer("test")

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    otel.instrument(tracer_provider=t.tracer_provider, meter_provider=t.meter_provider)
    yield t
    otel.uninstrument()


def test_span_is_a_child_of_the_current_span_and_parent_of_the_functions(
    telemetry: Telemetry,
) -> None:
    @Idempotency(MemoryStore())(key="id", namespace="orders.create")
    def create(order: dict[str, Any]) -> str:
        with telemetry.tracer.start_as_current_span("charge card"):
            return "ok"

    with telemetry.tracer.start_as_current_span("POST /orders") as request:
        create({"id": 1, "card": "visa-secret"})
        create({"id": 1, "card": "visa-secret"})
    spans = {(s.name, i): s for i, s in enumerate(telemetry.spans.get_finished_spans())}
    names = [name for name, _ in spans]
    assert names == ["charge card", "idempotent orders.create", "idempotent orders.create",
                     "POST /orders"]  # fmt: skip
    inner, first, replay, _outer = spans.values()
    ids = request.get_span_context()
    assert first.parent is not None
    assert first.parent.span_id == ids.span_id
    assert replay.parent is not None
    assert replay.parent.span_id == ids.span_id
    assert inner.parent is not None
    assert inner.parent.span_id == first.context.span_id
    assert first.context.trace_id == ids.trace_id
    assert dict(first.attributes or {}) == {
        "idempotence.namespace": "orders.create",
        "idempotence.store": "memory",
        "idempotence.outcome": "executed",
        "idempotence.replayed": False,
    }
    assert replay.attributes is not None
    assert replay.attributes["idempotence.outcome"] == "replayed"
    assert replay.attributes["idempotence.replayed"] is True
    assert replay.attributes["idempotence.replayed_from"] == "store"
    assert first.status.status_code is StatusCode.UNSET
    for span in (first, replay):
        assert "visa-secret" not in str(span.to_json())


def test_failures_set_error_status_without_the_message(telemetry: Telemetry) -> None:
    @Idempotency(MemoryStore())(key="id")
    def create(order: dict[str, Any]) -> str:
        return "ok"

    create({"id": 7})
    with pytest.raises(KeyReuseError):
        create({"id": 7, "card": "visa-secret"})
    span = telemetry.spans.get_finished_spans()[-1]
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyReuseError"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "KeyReuseError"
    assert span.attributes["idempotence.outcome"] == "key_reuse"
    assert not span.events  # no recorded exception: its message names the key


def test_metrics_count_calls_by_outcome_conflicts_and_store_latency(
    telemetry: Telemetry,
) -> None:
    started, release = threading.Event(), threading.Event()

    @Idempotency(MemoryStore())(namespace="jobs")
    def job(x: int) -> int:
        if x == 1:
            started.set()
            release.wait(5)
        return x

    worker = threading.Thread(target=job, args=(1,))
    worker.start()
    assert started.wait(5)
    with pytest.raises(AlreadyInProgressError):
        job(1)
    release.set()
    worker.join()
    job(1)
    job(2)
    calls = {
        p.attributes["idempotence.outcome"]: p.value for p in telemetry.points("idempotence.calls")
    }
    assert calls == {"executed": 2, "in_progress": 1, "replayed": 1}
    (conflicts,) = telemetry.points("idempotence.conflicts")
    assert conflicts.value == 1
    assert dict(conflicts.attributes) == {
        "idempotence.outcome": "in_progress",
        "idempotence.namespace": "jobs",
        "idempotence.store": "memory",
    }
    latency = telemetry.points("idempotence.store.duration")
    assert sum(p.count for p in latency) == 4
    assert all(p.sum > 0 for p in latency)
    assert sum(p.count for p in telemetry.points("idempotence.call.duration")) == 4


async def test_async_span_parents_under_the_current_span(telemetry: Telemetry) -> None:
    @Idempotency(MemoryStore())
    async def f(x: int) -> int:
        with telemetry.tracer.start_as_current_span("inner"):
            return x

    with telemetry.tracer.start_as_current_span("handler") as outer:
        assert await f(1) == 1
    inner, mine, _ = telemetry.spans.get_finished_spans()
    assert mine.parent is not None
    assert mine.parent.span_id == outer.get_span_context().span_id
    assert inner.parent is not None
    assert inner.parent.span_id == mine.context.span_id


def test_uninstrument_stops_spans(telemetry: Telemetry) -> None:
    otel.uninstrument()

    @Idempotency(MemoryStore())
    def f(x: int) -> int:
        return x

    f(1)
    assert telemetry.spans.get_finished_spans() == ()


def test_missing_opentelemetry_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from idempotence import MissingDependencyError

    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(MissingDependencyError, match=r"idempotence\[otel\]"):
        otel.instrument()
