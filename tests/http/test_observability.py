"""Observability through the HTTP middleware, on every store: one event per idempotent
request (never for pass-through GETs), and an OpenTelemetry span that is a child of the
server's request span."""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from idempotence import Idempotency, observe
from idempotence.http import IdempotencyMiddleware
from idempotence.observe import Event
from idempotence.stores import MemoryStore, Store
from tests.conftest import Counter
from tests.http import test_asgi
from tests.http.conftest import post_concurrently

KIND = {"MemoryStore": "memory", "SQLiteStore": "sqlite", "RedisStore": "redis",
        "PostgresStore": "postgres", "MySQLStore": "mysql"}  # fmt: skip


def client(store: Store) -> httpx.AsyncClient:
    async def create(request: Request) -> Response:
        return JSONResponse({"echo": (await request.body()).decode()}, status_code=201)

    async def read(request: Request) -> Response:
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/orders", create, methods=["POST"]),
            Route("/orders", read, methods=["GET"]),
        ]
    )
    wrapped = IdempotencyMiddleware(app, Idempotency(store), namespace="shop-api")
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=True)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


uvicorn_server = test_asgi.uvicorn_server  # the fixture: the app behind a real uvicorn

K = {"Idempotency-Key": '"order-secret-77"'}


async def test_events_through_the_middleware(store: Store) -> None:
    seen: list[Event] = []
    with observe.subscribed(seen.append):
        async with client(store) as c:
            assert (
                await c.post("/orders", json={"card": "visa-secret"}, headers=K)
            ).status_code == 201
            again = await c.post("/orders", json={"card": "visa-secret"}, headers=K)
            assert again.headers["idempotent-replayed"] == "true"
            reuse = await c.post("/orders", json={"card": "5500"}, headers=K)
            assert reuse.status_code == 422
            await c.get("/orders")  # not idempotent: no event
    assert [e.outcome.value for e in seen] == ["executed", "replayed", "key_reuse"]
    for event in seen:
        assert event.namespace == "shop-api"
        assert event.store == KIND[type(store).__name__]
        assert "order-secret-77" not in repr(event)
        assert "visa-secret" not in repr(event)
    assert seen[1].replayed_from == "store"


async def test_span_is_a_child_of_the_request_span(store: Store) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from idempotence import otel

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel.instrument(tracer_provider=provider)
    try:
        async with client(store) as c:
            with provider.get_tracer("server").start_as_current_span("POST /orders") as request:
                await c.post("/orders", json={"card": "visa-secret"}, headers=K)
    finally:
        otel.uninstrument()
    spans: dict[str, Any] = {s.name: s for s in exporter.get_finished_spans()}
    mine = spans["idempotent shop-api"]
    assert mine.parent.span_id == request.get_span_context().span_id
    assert mine.attributes["idempotence.outcome"] == "executed"
    assert mine.attributes["idempotence.store"] == KIND[type(store).__name__]


class DownStore(MemoryStore):
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        raise ConnectionRefusedError("store is down")


async def test_store_failure_record_has_structured_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[Event] = []
    with observe.subscribed(seen.append), caplog.at_level(logging.WARNING, "idempotence"):
        async with client(DownStore()) as c:
            response = await c.post("/orders", json={"card": "visa-secret"}, headers=K)
    assert response.status_code == 503
    (record,) = [r for r in caplog.records if r.name == "idempotence.http"]
    assert record.levelname == "ERROR"
    assert record.idempotence_outcome == "store_error"  # type: ignore[attr-defined]
    assert record.idempotence_namespace == "shop-api"  # type: ignore[attr-defined]
    assert not record.exc_info
    assert "order-secret-77" not in caplog.text
    assert [e.outcome.value for e in seen] == ["store_error"]
    assert seen[0].store == "down"


def test_events_from_concurrent_duplicates_behind_uvicorn(
    uvicorn_server: tuple[str, Counter],
) -> None:
    """A real server, real clients: one event per request, matching what each client got."""
    seen: list[Event] = []
    base, counter = uvicorn_server
    with observe.subscribed(seen.append):
        responses = post_concurrently(base, {"Idempotency-Key": '"observed-1"'}, n=8)
        deadline = time.monotonic() + 5  # the server thread reports after it answers
        while len(seen) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert counter.n == 1
    statuses = sorted(r.status_code for r in responses)
    by_outcome = sorted(e.outcome.value for e in seen)
    expected = sorted(
        "in_progress" if r.status_code == 409
        else "replayed" if r.headers.get("idempotent-replayed") == "true"
        else "executed"
        for r in responses
    )  # fmt: skip
    assert by_outcome == expected
    assert by_outcome.count("executed") == 1
    assert set(statuses) <= {201, 409}
    assert {e.namespace for e in seen} == {"http"}
