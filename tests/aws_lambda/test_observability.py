"""Observability through the Lambda adapter on every store (memory, SQLite, Redis,
PostgreSQL, MariaDB, DynamoDB on moto): the handler and each batch record report one event, and the
span of a handler call is a child of the invocation's span."""

from __future__ import annotations

from typing import Any

import pytest

from idempotence import Idempotency, observe
from idempotence.observe import Event
from idempotence.stores import Store
from tests.aws_lambda import test_lambda_stores as on_every_store
from tests.aws_lambda.events import FakeContext, load, redeliver

# the fixtures of every backend, used by name
store = on_every_store.store
dynamodb_endpoint = on_every_store.dynamodb_endpoint
postgres_admin = on_every_store.postgres_admin
mysql_admin = on_every_store.mysql_admin
redis_ok = on_every_store.redis_ok

KIND = {"MemoryStore": "memory", "SQLiteStore": "sqlite", "RedisStore": "redis",
        "PostgresStore": "postgres", "MySQLStore": "mysql",
        "DynamoDBStore": "dynamodb"}  # fmt: skip


def test_handler_and_batch_events(store: Store) -> None:
    idem = Idempotency(store)
    seen: list[Event] = []

    @idem.handler(namespace="orders.handler")
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        return {"processed": len(event["Records"])}

    def record(message: dict[str, Any]) -> str:
        return "ok"

    with observe.subscribed(seen.append):
        handler(load("sqs"), FakeContext())
        handler(redeliver(load("sqs")), FakeContext())
        idem.process_batch(load("sqs"), record, namespace="orders.record")
    assert [(e.namespace, e.outcome.value) for e in seen] == [
        ("orders.handler", "executed"),
        ("orders.handler", "replayed"),
        ("orders.record", "executed"),
        ("orders.record", "executed"),
    ]
    assert {e.store for e in seen} == {KIND[type(store).__name__]}
    assert all(e.store_duration > 0 for e in seen)


def test_handler_span_is_a_child_of_the_invocation_span(store: Store) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from idempotence import otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    @Idempotency(store).handler(namespace="orders.handler")
    def handler(event: dict[str, Any], context: Any) -> str:
        return "done"

    otel.instrument(tracer_provider=provider)
    try:
        with provider.get_tracer("lambda").start_as_current_span("invoke") as invocation:
            handler(load("sns"), FakeContext())
            handler(load("sns"), FakeContext())
    finally:
        otel.uninstrument()
    first, replay, _ = exporter.get_finished_spans()
    for span in (first, replay):
        assert span.name == "idempotent orders.handler"
        assert span.parent is not None
        assert span.parent.span_id == invocation.get_span_context().span_id
    assert first.attributes is not None
    assert replay.attributes is not None
    assert first.attributes["idempotence.replayed"] is False
    assert replay.attributes["idempotence.replayed"] is True
    assert replay.attributes["idempotence.store"] == KIND[type(store).__name__]
