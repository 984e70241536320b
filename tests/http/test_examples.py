"""The example apps (examples/fastapi_app, flask_app, django_app), in process; and the
FastAPI app on AWS Lambda through Mangum with API Gateway HTTP API (v2) events."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import sys
import types
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from idempotence import Idempotency
from idempotence.stores import MemoryStore, Store

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(relative: str, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / relative)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def close_mangum_loop() -> None:
    """Mangum sets a global event loop it never closes; close it (warnings are errors)."""
    policy = asyncio.get_event_loop_policy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            loop = policy.get_event_loop()
    except RuntimeError:
        return
    if not loop.is_running():
        loop.close()
        policy.set_event_loop(None)


@pytest.fixture
def mangum_loop() -> Iterator[None]:
    yield
    close_mangum_loop()


def new_key() -> dict[str, str]:
    return {"Idempotency-Key": f'"{uuid.uuid4()}"'}


# -- FastAPI ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fastapi_example() -> types.ModuleType:
    module = load("fastapi_app/app.py", "example_fastapi_app")
    close_mangum_loop()  # its module-level handler is not used by these tests
    return module


async def test_fastapi_example(fastapi_example: types.ModuleType, store: Store) -> None:
    app = fastapi_example.create_app(Idempotency(store))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        key = new_key()
        first = await client.post("/orders", json={"item": "book", "quantity": 2}, headers=key)
        second = await client.post("/orders", json={"quantity": 2, "item": "book"}, headers=key)
        other = await client.post("/orders", json={"item": "pen"}, headers=key)
        missing = await client.post("/orders", json={"item": "book"})
        fetched = await client.get(f"/orders/{first.json()['id']}")
    assert first.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert (other.status_code, missing.status_code) == (422, 400)
    assert fetched.json() == first.json()
    assert len(app.state.orders) == 1


def apigw_v2_event(body: dict[str, Any], key: str | None, sub: str | None = None) -> dict[str, Any]:
    headers = {"content-type": "application/json", "host": "abc123.execute-api.aws"}
    if key is not None:
        headers["idempotency-key"] = key
    context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "abc123",
        "domainName": "abc123.execute-api.aws",
        "domainPrefix": "abc123",
        "http": {
            "method": "POST",
            "path": "/orders",
            "protocol": "HTTP/1.1",
            "sourceIp": "203.0.113.7",
            "userAgent": "test",
        },
        "requestId": str(uuid.uuid4()),  # differs on every delivery: never part of the key
        "routeKey": "POST /orders",
        "stage": "$default",
        "time": "01/Jan/2025:00:00:00 +0000",
        "timeEpoch": 1735689600000,
    }
    if sub is not None:
        context["authorizer"] = {"jwt": {"claims": {"sub": sub}, "scopes": None}}
    return {
        "version": "2.0",
        "routeKey": "POST /orders",
        "rawPath": "/orders",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": context,
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "isBase64Encoded": True,
    }


def lambda_context() -> Any:
    return types.SimpleNamespace(
        function_name="orders",
        aws_request_id=str(uuid.uuid4()),
        get_remaining_time_in_millis=lambda: 30_000,
    )


def test_fastapi_on_lambda_through_mangum(
    fastapi_example: types.ModuleType, mangum_loop: None
) -> None:
    app = fastapi_example.create_app(Idempotency(MemoryStore()))
    handler = fastapi_example.create_handler(app)
    event = apigw_v2_event({"item": "book"}, '"lambda-key-1"')
    first = handler(event, lambda_context())
    second = handler(apigw_v2_event({"item": "book"}, '"lambda-key-1"'), lambda_context())
    assert first["statusCode"] == second["statusCode"] == 201
    assert second["body"] == first["body"]
    assert second["headers"]["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first["headers"]
    assert len(app.state.orders) == 1
    other = handler(apigw_v2_event({"item": "pen"}, '"lambda-key-1"'), lambda_context())
    assert other["statusCode"] == 422
    assert other["isBase64Encoded"] is False
    assert json.loads(other["body"])["type"] == "urn:idempotence:problem:key-reused"
    assert handler(apigw_v2_event({"item": "x"}, None), lambda_context())["statusCode"] == 400


def test_mangum_authorizer_principal_scopes_keys(
    fastapi_example: types.ModuleType, mangum_loop: None
) -> None:
    app = fastapi_example.create_app(Idempotency(MemoryStore()))
    handler = fastapi_example.create_handler(app)
    alice = handler(apigw_v2_event({"item": "book"}, "k", sub="alice"), lambda_context())
    bob = handler(apigw_v2_event({"item": "book"}, "k", sub="bob"), lambda_context())
    again = handler(apigw_v2_event({"item": "book"}, "k", sub="alice"), lambda_context())
    assert alice["body"] != bob["body"]
    assert again["body"] == alice["body"]
    assert len(app.state.orders) == 2


def test_fastapi_module_app_uses_default_store(
    monkeypatch: pytest.MonkeyPatch, mangum_loop: None
) -> None:
    monkeypatch.setenv("IDEMPOTENCE_STORE", "memory://")
    module = load("fastapi_app/app.py", "example_fastapi_app_default")
    response = module.handler(apigw_v2_event({"item": "book"}, "k"), lambda_context())
    assert response["statusCode"] == 201


# -- Flask --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flask_example() -> types.ModuleType:
    return load("flask_app/app.py", "example_flask_app")


def test_flask_example(flask_example: types.ModuleType, store: Store) -> None:
    app = flask_example.create_app(Idempotency(store))
    transport = httpx.WSGITransport(app=app)
    with httpx.Client(transport=transport, base_url="http://test") as client:
        key = new_key()
        first = client.post("/orders", json={"item": "book"}, headers=key)
        second = client.post("/orders", json={"item": "book"}, headers=key)
        other = client.post("/orders", json={"item": "pen"}, headers=key)
        missing = client.post("/orders", json={"item": "book"})
        fetched = client.get(f"/orders/{first.json()['id']}")
    assert first.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert (other.status_code, missing.status_code) == (422, 400)
    assert fetched.json() == first.json()
    assert len(app.extensions["orders"]) == 1


# -- Django -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def django_example() -> types.ModuleType:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IDEMPOTENCE_STORE", "memory://")
        module = load("django_app/app.py", "example_django_app")
        assert isinstance(module.idempotency.store, MemoryStore)  # resolved now, under the env
    return module


def test_django_example_wsgi(django_example: types.ModuleType) -> None:
    transport = httpx.WSGITransport(app=django_example.application)
    before = len(django_example.ORDERS)
    with httpx.Client(transport=transport, base_url="http://test") as client:
        key = new_key()
        first = client.post("/orders", json={"item": "book"}, headers=key)
        second = client.post("/orders", json={"item": "book"}, headers=key)
        other = client.post("/orders", json={"item": "pen"}, headers=key)
        missing = client.post("/orders", json={"item": "book"})
        listed = client.get("/orders")
    assert first.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert (other.status_code, missing.status_code) == (422, 400)
    assert first.json() in listed.json()
    assert len(django_example.ORDERS) == before + 1


async def test_django_example_asgi(django_example: types.ModuleType) -> None:
    transport = httpx.ASGITransport(app=django_example.asgi_application)
    before = len(django_example.ORDERS)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        key = new_key()
        first = await client.post("/orders", json={"item": "book"}, headers=key)
        second = await client.post("/orders", json={"item": "book"}, headers=key)
    assert first.status_code == 201
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"
    assert len(django_example.ORDERS) == before + 1


# -- the docs quote these files -----------------------------------------------------------
def test_docs_quote_the_examples_verbatim() -> None:
    """Every python block of docs/http.md introduced by an example's path is an excerpt."""
    import re

    text = (EXAMPLES.parent / "docs" / "http.md").read_text()
    checked = 0
    for block in re.finditer(r"```python\n(.*?)```", text, re.DOTALL):
        before = text[max(0, block.start() - 400) : block.start()]
        paths = re.findall(r"`(examples/[\w/]+\.py)`", before)
        if not paths:
            continue
        source = (EXAMPLES.parent / paths[-1]).read_text()
        assert block.group(1) in source, f"docs/http.md drifted from {paths[-1]}"
        checked += 1
    assert checked >= 4
