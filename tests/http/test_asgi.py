"""``IdempotencyMiddleware`` on a Starlette app: in process (httpx.ASGITransport) on every
store, and once behind a real uvicorn server with concurrent duplicates."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from idempotence import Idempotency
from idempotence.http import HTTPIdempotency, IdempotencyMiddleware
from idempotence.stores import MemoryStore, Store
from tests.aws_lambda.events import load
from tests.conftest import Counter
from tests.http.conftest import post_concurrently


def make_app(
    counter: Counter,
    gate: asyncio.Event | None = None,
    delay: float = 0.0,
    started: asyncio.Event | None = None,
) -> Starlette:
    async def create(request: Request) -> Response:
        body = await request.body()
        n = counter.hit()
        if started is not None:
            started.set()
        if gate is not None:
            await gate.wait()
        if delay:
            await asyncio.sleep(delay)
        response = JSONResponse(
            {"order": n, "echo": body.decode()}, status_code=201, headers={"X-Run": str(n)}
        )
        response.set_cookie("session", f"s{n}")
        return response

    async def read(request: Request) -> Response:
        return PlainTextResponse(f"read {counter.hit()}")

    async def fail(request: Request) -> Response:
        counter.hit()
        raise RuntimeError("app bug")

    async def unavailable(request: Request) -> Response:
        return PlainTextResponse(f"busy {counter.hit()}", status_code=503)

    async def big(request: Request) -> Response:
        return PlainTextResponse("x" * 5000 + str(counter.hit()), status_code=201)

    async def stream(request: Request) -> Response:
        n = counter.hit()

        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"part{i}-{n};".encode()

        return StreamingResponse(parts(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/orders", create, methods=["POST", "PATCH"]),
            Route("/orders", read, methods=["GET"]),
            Route("/fail", fail, methods=["POST"]),
            Route("/unavailable", unavailable, methods=["POST"]),
            Route("/big", big, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
        ]
    )


def client_for(app: Any, **options: Any) -> httpx.AsyncClient:
    wrapped = IdempotencyMiddleware(app, options.pop("idempotency"), **options)
    transport = httpx.ASGITransport(app=wrapped, raise_app_exceptions=True)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


K = {"Idempotency-Key": '"order-1"'}


async def test_replay_byte_for_byte(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem) as client:
        first = await client.post("/orders", json={"item": "book"}, headers=K)
        second = await client.post("/orders", json={"item": "book"}, headers=K)
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert json.loads(first.content) == {"order": 1, "echo": '{"item":"book"}'}
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert second.headers["x-run"] == "1"
    assert second.headers["content-length"] == first.headers["content-length"]
    assert first.headers["set-cookie"].startswith("session=s1")
    assert "set-cookie" not in second.headers
    assert counter.n == 1


async def test_bare_key_and_payload_reuse(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem) as client:
        await client.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": "bare"})
        replay = await client.post(
            "/orders",
            content=b'{ "item" : "book" }',
            headers={"Idempotency-Key": '"bare"', "Content-Type": "application/json"},
        )
        other = await client.post(
            "/orders", json={"item": "pen"}, headers={"Idempotency-Key": "bare"}
        )
    assert replay.headers["idempotent-replayed"] == "true"
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["type"] == "urn:idempotence:problem:key-reused"
    assert counter.n == 1


async def test_missing_key_optional_and_required(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem) as client:
        assert (await client.post("/orders", json={})).status_code == 201
        assert (await client.post("/orders", json={})).status_code == 201
    assert counter.n == 2
    async with client_for(make_app(counter), idempotency=idem, required=True) as client:
        response = await client.post("/orders", json={})
        assert response.status_code == 400
        assert response.json()["type"] == "urn:idempotence:problem:missing-key"
        bad = await client.post("/orders", json={}, headers={"Idempotency-Key": '"x'})
        assert bad.status_code == 400
        assert bad.json()["type"] == "urn:idempotence:problem:invalid-key"
        assert (await client.get("/orders")).status_code == 200  # GET needs no key
    assert counter.n == 3


async def test_get_untouched(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem) as client:
        a = await client.get("/orders", headers=K)
        b = await client.get("/orders", headers=K)
    assert (a.text, b.text) == ("read 1", "read 2")
    assert "idempotent-replayed" not in b.headers


async def test_5xx_not_kept_and_exception_releases(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem) as client:
        assert (await client.post("/unavailable", headers=K)).text == "busy 1"
        assert (await client.post("/unavailable", headers=K)).text == "busy 2"
        key = {"Idempotency-Key": "fail"}
        with pytest.raises(RuntimeError, match="app bug"):
            await client.post("/fail", headers=key)
        with pytest.raises(RuntimeError, match="app bug"):
            await client.post("/fail", headers=key)  # released: runs again
    assert counter.n == 4


async def test_large_response_not_replayable(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem, max_body_bytes=1000) as client:
        first = await client.post("/big", headers=K)
        second = await client.post("/big", headers=K)
    assert first.status_code == 201
    assert len(first.content) == 5001
    assert second.status_code == 500
    assert second.json()["type"] == "urn:idempotence:problem:response-not-stored"
    assert counter.n == 1


async def test_streaming_response_is_buffered_and_replayed(idem: Idempotency) -> None:
    counter = Counter()
    async with client_for(make_app(counter), idempotency=idem) as client:
        first = await client.post("/stream", headers=K)
        second = await client.post("/stream", headers=K)
    assert first.text == "".join(f"part{i}-1;" for i in range(5))
    assert second.content == first.content
    assert second.headers["idempotent-replayed"] == "true"


async def test_in_progress_409(idem: Idempotency) -> None:
    counter, gate, started = Counter(), asyncio.Event(), asyncio.Event()
    async with client_for(make_app(counter, gate, started=started), idempotency=idem) as client:
        first = asyncio.ensure_future(client.post("/orders", json={}, headers=K))
        await asyncio.wait_for(started.wait(), 10)
        busy = await client.post("/orders", json={}, headers=K)
        gate.set()
        done = await first
    assert busy.status_code == 409
    assert int(busy.headers["retry-after"]) >= 1
    assert busy.json()["retry_same_key"] is True
    assert done.status_code == 201
    assert counter.n == 1


async def test_scope_isolates_tenants(idem: Idempotency) -> None:
    counter = Counter()
    tenant = {"scope": lambda r: r.header("x-tenant")}
    async with client_for(make_app(counter), idempotency=idem, **tenant) as client:
        a = await client.post("/orders", json={}, headers={**K, "X-Tenant": "a"})
        b = await client.post("/orders", json={}, headers={**K, "X-Tenant": "b"})
        a2 = await client.post("/orders", json={}, headers={**K, "X-Tenant": "a"})
    assert (a.json()["order"], b.json()["order"]) == (1, 2)
    assert a2.content == a.content
    assert a2.headers["idempotent-replayed"] == "true"


async def test_store_down_503() -> None:
    class Down(MemoryStore):
        def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
            raise OSError("down")

    counter = Counter()
    async with client_for(make_app(counter), idempotency=Down()) as client:
        response = await client.post("/orders", json={}, headers=K)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert counter.n == 0


async def test_non_http_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = IdempotencyMiddleware(app, MemoryStore())

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        pass

    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "websocket", "headers": []}, receive, send)
    assert seen == ["lifespan", "websocket"]


async def test_principal_from_mangum_event(idem: Idempotency) -> None:
    runs: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": str(len(runs)).encode()})

    middleware = IdempotencyMiddleware(app, idem)

    async def call(principal: str) -> int:
        sent: list[Any] = []
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive() -> Any:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/orders",
            "query_string": b"",
            "headers": [(b"idempotency-key", b"k")],
            "aws.event": {
                "requestContext": {"authorizer": {"jwt": {"claims": {"sub": principal}}}}
            },
        }
        await middleware(scope, receive, send)
        return int(sent[1]["body"])

    assert [await call("alice"), await call("bob"), await call("alice")] == [1, 2, 1]
    assert runs == [b"{}", b"{}"]


def test_principal_is_read_as_the_lambda_adapter_reads_it() -> None:
    from idempotence.http._asgi import _principal

    rest = load("apigw_rest")  # a REST API behind a Cognito user pool authorizer
    rest["requestContext"]["authorizer"] = {"claims": {"sub": "alice"}}
    assert _principal({"aws.event": rest}) == "alice"
    http_api = load("apigw_http")
    http_api["requestContext"]["authorizer"] = {"jwt": {"claims": None}}
    # No claims: no crash, and what the Lambda adapter says (a hash of the context).
    from idempotence.aws_lambda._http import principal
    from idempotence.aws_lambda._sources import detect

    expected = principal(detect(http_api), http_api)
    assert _principal({"aws.event": http_api}) == expected
    assert expected is None or expected.startswith("authorizer-context:")
    assert _principal({"type": "http"}) is None  # not behind Mangum


def test_engine_and_options_are_exclusive() -> None:
    engine = HTTPIdempotency(MemoryStore())
    assert IdempotencyMiddleware(lambda *a: None, engine).engine is engine  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="required"):
        IdempotencyMiddleware(lambda *a: None, engine, required=True)  # type: ignore[arg-type]


# -- a real server ------------------------------------------------------------------------
@pytest.fixture
def uvicorn_server(store: Store) -> Iterator[tuple[str, Counter]]:
    """The app behind uvicorn on a free loopback port, in a thread; stopped after."""
    import uvicorn

    counter = Counter()
    app = IdempotencyMiddleware(make_app(counter, delay=0.3), Idempotency(store, lease=30))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", counter
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_uvicorn_concurrent_duplicates_run_once(uvicorn_server: tuple[str, Counter]) -> None:
    base, counter = uvicorn_server
    headers = {"Idempotency-Key": '"concurrent-1"'}
    responses = post_concurrently(base, headers)
    assert counter.n == 1
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    for r in responses:
        if r.status_code == 409:
            assert r.headers["content-type"] == "application/problem+json"
            assert "retry-after" in r.headers
    first = next(
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    )
    with httpx.Client(base_url=base) as client:
        replay = client.post("/orders", json={"item": "book"}, headers=headers)
    assert replay.content == first.content
    assert replay.headers["idempotent-replayed"] == "true"
    assert counter.n == 1
