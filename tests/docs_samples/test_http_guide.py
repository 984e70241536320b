"""The samples of docs/http.md. The page includes this file's sections and the texts under
docs/snippets/http/, so they are checked here: the request is sent with httpx to an app
behind the middleware, the problem document is compared with a real refusal, and the code
runs as written (a default SQLite store in a temporary directory; DynamoDB on moto)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request

from idempotence import Idempotency
from idempotence.http import HTTPIdempotency, HTTPRequest, HTTPResponse, IdempotencyMiddleware
from idempotence.stores import MemoryStore
from tests import moto_server

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "docs" / "snippets" / "http"
PAGE = (ROOT / "docs" / "http.md").read_text()

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture


def orders_app(calls: list[bytes]) -> FastAPI:
    app = FastAPI()

    @app.post("/orders", status_code=201)
    async def create(request: Request) -> dict[str, object]:
        calls.append(await request.body())
        return {"order": len(calls)}

    return app


def post(app: object, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, headers=headers, content=body)

    return asyncio.run(send())


def test_the_documented_request_is_replayed() -> None:
    assert '--8<-- "docs/snippets/http/request.http"' in PAGE
    head, _, body = (SNIPPETS / "request.http").read_text().partition("\n\n")
    request_line, *header_lines = head.splitlines()
    method, path, version = request_line.split()
    assert (method, version) == ("POST", "HTTP/1.1")
    headers = dict(line.split(": ", 1) for line in header_lines)
    assert json.loads(body) == {"item": "book", "quantity": 2}
    calls: list[bytes] = []
    app = orders_app(calls)
    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(MemoryStore()))
    first = post(app, path, headers, body.encode())
    retry = post(app, path, headers, body.encode())
    assert first.status_code == retry.status_code == 201
    assert retry.content == first.content
    assert retry.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert calls == [body.encode()]  # the app ran once


def test_the_documented_problem_is_the_real_refusal() -> None:
    assert '--8<-- "docs/snippets/http/problem-in-progress.json"' in PAGE
    documented = json.loads((SNIPPETS / "problem-in-progress.json").read_text())
    engine = HTTPIdempotency(Idempotency(MemoryStore()))
    request = HTTPRequest("POST", "/orders", "", [("idempotency-key", '"k-1"')], b"{}")
    refusals: list[HTTPResponse] = []

    def app() -> HTTPResponse:  # a retry arrives while the first request runs
        refusals.append(engine.run(request, lambda: HTTPResponse(201)))
        return HTTPResponse(201)

    assert engine.run(request, app).status == 201
    (refusal,) = refusals
    assert refusal.status == 409
    assert refusal.header("content-type") == "application/problem+json"
    assert refusal.header("retry-after") == "1"
    real = json.loads(refusal.body)
    assert documented.pop("detail") == "..."  # the page elides the sentence
    assert isinstance(real.pop("detail"), str)
    assert real == documented


def test_scope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # Idempotency(): the default SQLite file, here
    monkeypatch.delenv("IDEMPOTENCE_STORE", raising=False)
    calls: list[bytes] = []
    app = orders_app(calls)

    # fmt: off
    # --8<-- [start:scope]


    def tenant(request: HTTPRequest) -> str | None:
        # Set by your gateway or auth layer after verifying the caller; never a raw client value.
        return request.header("x-verified-tenant")


    app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(), scope=tenant)
    # --8<-- [end:scope]
    # fmt: on

    def send(tenant: str, token: str) -> httpx.Response:
        headers = {
            "Idempotency-Key": "k-1",
            "X-Verified-Tenant": tenant,
            "Authorization": f"Bearer {token}",
        }
        return post(app, "/orders", headers, b'{"item": "book"}')

    assert send("acme", "token-1").json() == {"order": 1}
    # the token was refreshed: the same tenant's retry is still a replay
    retry = send("acme", "token-2")
    assert retry.json() == {"order": 1}
    assert retry.headers["idempotent-replayed"] == "true"
    assert send("globex", "token-1").json() == {"order": 2}  # another tenant: its own key
    assert len(calls) == 2


@pytest.fixture
def dynamodb(dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", dynamodb_endpoint)
    Idempotency("dynamodb://idempotency").store.create_table()  # type: ignore[attr-defined]


def test_engine(dynamodb: None) -> None:
    calls: list[HTTPRequest] = []

    def my_app(request: HTTPRequest) -> HTTPResponse:
        calls.append(request)
        return HTTPResponse(201, [("content-type", "application/json")], b'{"order": 1}')

    # fmt: off
    # --8<-- [start:engine]
    from idempotence.http import HTTPIdempotency, HTTPRequest, HTTPResponse

    engine = HTTPIdempotency(Idempotency("dynamodb://idempotency"), required=True)

    def handle(request: HTTPRequest) -> HTTPResponse:
        return engine.run(request, lambda: my_app(request))   # or: await engine.arun(...)
    # --8<-- [end:engine]
    # fmt: on

    key = str(uuid.uuid4())
    request = HTTPRequest("POST", "/orders", "", [("idempotency-key", key)], b"{}")
    first, retry = handle(request), handle(request)
    assert first.status == retry.status == 201
    assert retry.body == first.body
    assert retry.header("idempotent-replayed") == "true"
    assert len(calls) == 1
    missing = handle(HTTPRequest("POST", "/orders", "", [], b"{}"))  # required=True
    assert missing.status == 400
    assert len(calls) == 1
