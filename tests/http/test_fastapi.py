"""idempotence.http.fastapi: the OpenAPI schema documents the header and the problem
responses; the IdempotencyKey dependency works, and refuses to run without the middleware."""

from __future__ import annotations

import importlib.util
import sys
import types
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from idempotence import Idempotency
from idempotence.http import PROBLEM_TYPES, HTTPIdempotency, IdempotencyMiddleware
from idempotence.http.fastapi import IdempotencyKey, idempotency_openapi, idempotency_responses
from idempotence.stores import MemoryStore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fastapi_app" / "documented.py"


def load_example() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("fastapi_documented_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def example_app() -> FastAPI:
    app: FastAPI = load_example().create_app(Idempotency(MemoryStore()))
    return app


def client(app: FastAPI) -> httpx.AsyncClient:
    """A real HTTP client speaking ASGI to the app (the middleware runs as under uvicorn)."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def header_parameters(operation: dict[str, object]) -> list[dict[str, object]]:
    params = operation.get("parameters", [])
    assert isinstance(params, list)
    return [p for p in params if p["in"] == "header"]


async def test_example_schema_documents_header_and_problem_responses(
    example_app: FastAPI,
) -> None:
    async with client(example_app) as http:
        schema = (await http.get("/openapi.json")).json()
    operation = schema["paths"]["/payments"]["post"]
    headers = header_parameters(operation)
    assert [(p["name"], p["required"]) for p in headers] == [("Idempotency-Key", True)]
    responses = operation["responses"]
    for status in ("400", "409", "422", "500", "503"):
        assert "application/problem+json" in responses[status]["content"], status
    # FastAPI's own validation error stays documented next to ours
    assert "application/json" in responses["422"]["content"]
    assert "Retry-After" in responses["409"]["headers"]
    assert "Retry-After" in responses["503"]["headers"]
    assert "Idempotent-Replayed" in responses["201"]["headers"]
    problem = schema["components"]["schemas"]["IdempotencyProblem"]
    assert {"type", "title", "status", "retry_same_key"} <= set(problem["properties"])


async def test_example_dependency_gives_the_key_and_replays(example_app: FastAPI) -> None:
    key = str(uuid.uuid4())
    body = {"order_id": "o1", "amount_cents": 100}
    async with client(example_app) as http:
        first = await http.post("/payments", json=body, headers={"Idempotency-Key": f'"{key}"'})
        again = await http.post("/payments", json=body, headers={"Idempotency-Key": f'"{key}"'})
        missing = await http.post("/payments", json=body)
        reused = await http.post(
            "/payments", json={**body, "amount_cents": 5}, headers={"Idempotency-Key": key}
        )
    assert first.status_code == 201
    assert first.json()["idempotency_key"] == key
    assert again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert len(example_app.state.payments) == 1
    assert missing.status_code == 400
    assert missing.headers["content-type"] == "application/problem+json"
    assert reused.status_code == 422


async def test_only_handled_methods_are_documented_and_options_follow_the_middleware() -> None:
    app = FastAPI()
    engine = HTTPIdempotency(Idempotency(MemoryStore()), methods=("PUT",), header="X-Request-Key")
    app.add_middleware(IdempotencyMiddleware, idempotency=engine)
    idempotency_openapi(app)

    @app.put("/things/{name}")
    def put_thing(name: str) -> dict[str, str]:
        return {"name": name}

    @app.post("/other")
    def post_other() -> dict[str, str]:
        return {}

    async with client(app) as http:
        schema = (await http.get("/openapi.json")).json()
    put = schema["paths"]["/things/{name}"]["put"]
    assert [(p["name"], p["required"]) for p in header_parameters(put)] == [
        ("X-Request-Key", False)
    ]
    assert "409" in put["responses"]
    post = schema["paths"]["/other"]["post"]
    assert header_parameters(post) == []
    assert "409" not in post["responses"]


async def test_dependency_without_the_middleware_refuses_to_run() -> None:
    app = FastAPI()
    calls: list[str | None] = []

    @app.post("/orders")
    def create(key: IdempotencyKey) -> dict[str, str]:
        calls.append(key)
        return {}

    async with client(app) as http:
        response = await http.post("/orders", headers={"Idempotency-Key": '"k"'})
    assert response.status_code == 500
    assert calls == []
    # the route still documents the header through the dependency
    schema = app.openapi()
    assert [p["name"] for p in header_parameters(schema["paths"]["/orders"]["post"])] == [
        "Idempotency-Key"
    ]


async def test_dependency_on_a_method_the_middleware_ignores_refuses_to_run() -> None:
    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(MemoryStore()))

    @app.put("/orders")
    def replace(key: IdempotencyKey) -> dict[str, str]:
        return {}

    async with client(app) as http:
        response = await http.put("/orders", headers={"Idempotency-Key": '"k"'})
    assert response.status_code == 500


def test_dependency_routes_are_documented_even_outside_methods() -> None:
    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(MemoryStore()))
    idempotency_openapi(app)

    @app.put("/orders")
    def replace(key: IdempotencyKey) -> dict[str, str]:
        return {}

    operation = app.openapi()["paths"]["/orders"]["put"]
    assert "409" in operation["responses"]


def test_openapi_without_middleware_or_methods_says_what_to_do() -> None:
    app = FastAPI()
    idempotency_openapi(app)
    with pytest.raises(RuntimeError, match="add_middleware"):
        app.openapi()
    explicit = FastAPI()
    idempotency_openapi(explicit, methods=["POST"], required=True)

    @explicit.post("/x")
    def x() -> dict[str, str]:
        return {}

    operation = explicit.openapi()["paths"]["/x"]["post"]
    assert [(p["name"], p["required"]) for p in header_parameters(operation)] == [
        ("Idempotency-Key", True)
    ]


def test_responses_for_a_route() -> None:
    responses = idempotency_responses()
    assert set(responses) == {status for status, _, _ in PROBLEM_TYPES.values()}
    assert {400, 409, 422, 500, 503} <= set(responses)
    assert "missing-key" in responses[400]["description"]
    assert "invalid-key" in responses[400]["description"]


def test_a_schema_generated_before_the_call_is_regenerated() -> None:
    app = FastAPI()
    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(MemoryStore()))

    @app.post("/orders")
    def create() -> dict[str, str]:
        return {}

    assert "409" not in app.openapi()["paths"]["/orders"]["post"]["responses"]
    idempotency_openapi(app)
    assert "409" in app.openapi()["paths"]["/orders"]["post"]["responses"]
