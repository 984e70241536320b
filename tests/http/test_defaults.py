"""The HTTP layer's defaults: callers never share a response (scope), which statuses are
kept, ``Retry-After``, request/response size limits, callback failures, hostile input and
corrupt records. In process (the engine, httpx's ASGI/WSGI transports) on every store, and
through real servers (uvicorn, waitress, wsgiref) with httpx."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from idempotence import Idempotency
from idempotence._codec import KIND_VALUE, envelope
from idempotence.http import (
    HTTPIdempotency,
    HTTPRequest,
    HTTPResponse,
    IdempotencyMiddleware,
    WSGIIdempotencyMiddleware,
    request_scope,
)
from idempotence.stores import MemoryStore, Store
from tests.conftest import Counter

K = {"Idempotency-Key": '"order-1"'}
ALICE = {**K, "Authorization": "Bearer alice-token"}
BOB = {**K, "Authorization": "Bearer bob-token"}


def problem_type(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    kind: str = response.json()["type"]
    return kind.removeprefix("urn:idempotence:problem:")


# -- apps -----------------------------------------------------------------------------------
def asgi_app(counter: Counter, status: int = 201) -> Starlette:
    async def create(request: Request) -> Response:
        n = counter.hit()
        return JSONResponse({"order": n}, status_code=status)

    async def stream(request: Request) -> Response:
        n = counter.hit()

        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"part{i}-{n};".encode() * 10

        return StreamingResponse(parts(), media_type="text/plain")

    return Starlette(
        routes=[
            Route("/orders", create, methods=["POST"]),
            Route("/stream", stream, methods=["POST"]),
        ]
    )


def wsgi_app(counter: Counter, status: int = 201) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        n = counter.hit()
        if environ["PATH_INFO"] == "/stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return (f"part{i}-{n};".encode() * 10 for i in range(5))
        payload = json.dumps({"order": n}).encode()
        start_response(f"{status} X", [("Content-Type", "application/json")])
        return [payload]

    return app


def asgi_client(app: Any, idem: Idempotency | Store, **options: Any) -> httpx.AsyncClient:
    wrapped = IdempotencyMiddleware(app, idem, **options)
    transport = httpx.ASGITransport(app=wrapped)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def wsgi_client(app: Any, idem: Idempotency | Store, **options: Any) -> httpx.Client:
    wrapped = WSGIIdempotencyMiddleware(app, idem, **options)
    return httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://test")


# -- 1. scope: never replay across callers ----------------------------------------------------
def req(**kw: Any) -> HTTPRequest:
    base: dict[str, Any] = {"method": "POST", "path": "/o", "query": "", "headers": [], "body": b""}
    base.update(kw)
    return HTTPRequest(**base)


def test_request_scope_order_and_no_raw_credential() -> None:
    token = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig"
    with_token = req(headers=[("Authorization", token)])
    scope = request_scope(with_token)
    assert scope is not None
    assert scope.startswith("credentials:")
    assert "eyJ" not in scope
    assert "alice" not in scope
    # A verified principal wins over credentials; an explicit one over request.principal.
    assert request_scope(req(headers=[("Authorization", token)], principal="u1")) == "principal:u1"
    assert request_scope(req(principal="u1"), "u2") == "principal:u2"
    # Another token of the same JWT subject is another scope: tokens are never decoded.
    other = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.other"
    assert request_scope(req(headers=[("authorization", other)])) != scope
    assert request_scope(req()) is None  # no credential, no principal: unscoped
    # X-Api-Key by default; other headers and cookies when configured; a secret keys it.
    assert request_scope(req(headers=[("X-Api-Key", "k1")])) != request_scope(
        req(headers=[("X-Api-Key", "k2")])
    )
    assert request_scope(req(headers=[("X-Tenant-Token", "t")])) is None
    assert request_scope(
        req(headers=[("X-Tenant-Token", "t")]), credential_headers=["x-tenant-token"]
    )
    cookies = [("Cookie", "theme=dark; session=abc")]
    assert request_scope(req(headers=cookies)) is None
    s1 = request_scope(req(headers=cookies), credential_cookies=["session"])
    s2 = request_scope(
        req(headers=[("Cookie", "theme=light; session=abc")]), credential_cookies=["session"]
    )
    assert s1 == s2
    assert s1 is not None
    assert "abc" not in s1
    assert request_scope(with_token, secret=b"s3cret") != scope
    assert request_scope(req(headers=[("Authorization", "\ud800")])) is not None  # no crash


async def test_asgi_callers_never_share_a_response(idem: Idempotency) -> None:
    counter = Counter()
    async with asgi_client(asgi_app(counter), idem) as client:
        a1 = await client.post("/orders", json={"item": "book"}, headers=ALICE)
        b1 = await client.post("/orders", json={"item": "book"}, headers=BOB)
        a2 = await client.post("/orders", json={"item": "book"}, headers=ALICE)
    assert (a1.json(), b1.json(), a2.json()) == ({"order": 1}, {"order": 2}, {"order": 1})
    assert "idempotent-replayed" not in b1.headers
    assert a2.headers["idempotent-replayed"] == "true"
    assert counter.n == 2


def test_wsgi_callers_never_share_a_response(idem: Idempotency) -> None:
    counter = Counter()
    with wsgi_client(wsgi_app(counter), idem) as client:
        a1 = client.post("/orders", json={}, headers=ALICE)
        b1 = client.post("/orders", json={}, headers=BOB)
        k1 = client.post("/orders", json={}, headers={**K, "X-Api-Key": "key-1"})
        a2 = client.post("/orders", json={}, headers=ALICE)
    assert [r.json()["order"] for r in (a1, b1, k1, a2)] == [1, 2, 3, 1]
    assert counter.n == 3


async def test_user_scope_overrides_and_unauthenticated_requests_stay_unscoped() -> None:
    counter = Counter()
    store = MemoryStore()
    async with asgi_client(
        asgi_app(counter), store, scope=lambda request: request.header("x-tenant")
    ) as client:
        a = await client.post("/orders", json={}, headers={**ALICE, "X-Tenant": "t1"})
        b = await client.post("/orders", json={}, headers={**BOB, "X-Tenant": "t1"})
    assert a.json() == b.json() == {"order": 1}  # one tenant: the user's scope decides
    async with asgi_client(asgi_app(counter), MemoryStore()) as client:
        c = await client.post("/orders", json={}, headers=K)
        d = await client.post("/orders", json={}, headers=K)
    assert c.json() == d.json() == {"order": 2}  # no credential: unscoped, as before


class TokenBackend(AuthenticationBackend):
    """Verifies ``Authorization: Bearer <user>.<anything>`` (a stand-in for a real check)."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        value = conn.headers.get("authorization", "")
        if not value.startswith("Bearer "):
            return None
        return AuthCredentials(["authenticated"]), SimpleUser(value[7:].split(".")[0])


def authenticated_app(counter: Counter, idem: Idempotency | Store) -> Starlette:
    app = asgi_app(counter)
    return Starlette(
        routes=app.routes,
        middleware=[  # outermost first: authentication runs before the idempotency layer
            Middleware(AuthenticationMiddleware, backend=TokenBackend()),
            Middleware(IdempotencyMiddleware, idempotency=idem),
        ],
    )


async def test_asgi_verified_user_is_the_scope() -> None:
    counter = Counter()
    app = authenticated_app(counter, MemoryStore())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first = await client.post(
            "/orders", json={}, headers={**K, "Authorization": "Bearer alice.t1"}
        )
        # A refreshed token of the same verified user: same scope, a replay.
        refreshed = await client.post(
            "/orders", json={}, headers={**K, "Authorization": "Bearer alice.t2"}
        )
        bob = await client.post("/orders", json={}, headers={**K, "Authorization": "Bearer bob.t1"})
    assert first.json() == refreshed.json() == {"order": 1}
    assert refreshed.headers["idempotent-replayed"] == "true"
    assert bob.json() == {"order": 2}


def test_wsgi_remote_user_is_the_scope() -> None:
    counter = Counter()
    inner = WSGIIdempotencyMiddleware(wsgi_app(counter), MemoryStore())

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["REMOTE_USER"] = environ.get("HTTP_X_USER", "")
        return inner(environ, start_response)

    with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as client:
        a = client.post("/orders", json={}, headers={**ALICE, "X-User": "alice"})
        b = client.post("/orders", json={}, headers={**BOB, "X-User": "alice"})
        c = client.post("/orders", json={}, headers={**ALICE, "X-User": "carol"})
    assert [r.json()["order"] for r in (a, b, c)] == [1, 1, 2]


# -- real servers -------------------------------------------------------------------------
def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def fastapi_server() -> Iterator[tuple[str, Counter]]:
    """A FastAPI app behind uvicorn, wrapped with the defaults, max_request_bytes=1000 and
    max_body_bytes=500."""
    import uvicorn
    from fastapi import FastAPI

    counter = Counter()
    app = FastAPI()
    app.add_middleware(
        IdempotencyMiddleware,
        idempotency=MemoryStore(),
        max_request_bytes=1000,
        max_body_bytes=500,
    )

    @app.post("/orders", status_code=201)
    async def create(order: dict[str, Any]) -> dict[str, int]:
        return {"order": counter.hit()}

    @app.post("/stream")
    async def stream() -> StreamingResponse:
        n = counter.hit()

        async def parts() -> AsyncIterator[bytes]:
            for i in range(5):
                yield f"{i}-{n};".encode() * 50

        return StreamingResponse(parts(), media_type="text/plain")

    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", counter
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def test_uvicorn_fastapi_callers_and_limits(fastapi_server: tuple[str, Counter]) -> None:
    base, counter = fastapi_server
    with httpx.Client(base_url=base, timeout=10) as client:
        a1 = client.post("/orders", json={"item": "book"}, headers=ALICE)
        b1 = client.post("/orders", json={"item": "book"}, headers=BOB)
        a2 = client.post("/orders", json={"item": "book"}, headers=ALICE)
        big = client.post(
            "/orders", content=b"x" * 5000, headers={**K, "Content-Type": "text/plain"}
        )

        def chunks() -> Iterator[bytes]:
            for _ in range(50):
                yield b"y" * 100

        chunked = client.post(
            "/orders", content=chunks(), headers={**ALICE, "Idempotency-Key": "c"}
        )
    assert [r.json()["order"] for r in (a1, b1, a2)] == [1, 2, 1]
    assert a2.headers["idempotent-replayed"] == "true"
    assert (big.status_code, problem_type(big)) == (413, "request-too-large")
    assert (chunked.status_code, problem_type(chunked)) == (413, "request-too-large")
    assert counter.n == 2
    with httpx.Client(base_url=base, timeout=10) as client:
        streamed = client.post("/stream", headers={**K, "Idempotency-Key": "s"})
        again = client.post("/stream", headers={**K, "Idempotency-Key": "s"})
    assert streamed.content == b"".join(f"{i}-3;".encode() * 50 for i in range(5))
    assert (again.status_code, problem_type(again)) == (500, "response-not-stored")
    assert counter.n == 3


@pytest.fixture(params=["waitress", "wsgiref"])
def wsgi_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, Counter, str]]:
    from tests.http.test_wsgi import _QuietHandler, _ThreadingWSGIServer

    counter = Counter()
    app = WSGIIdempotencyMiddleware(wsgi_app(counter), MemoryStore(), max_request_bytes=1000)
    if request.param == "waitress":
        import waitress.server
        from waitress import wasyncore

        server: Any = waitress.server.create_server(app, host="127.0.0.1", port=0, threads=4)
        port = server.effective_port
        stopping = threading.Event()

        def serve() -> None:
            while not stopping.is_set():
                wasyncore.loop(timeout=0.05, map=server._map, count=1)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()

        def stop() -> None:
            stopping.set()
            thread.join(10)
            server.task_dispatcher.shutdown()
            wasyncore.close_all(server._map)
    else:
        import wsgiref.simple_server

        server = wsgiref.simple_server.make_server(
            "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
        port = server.server_port
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

    try:
        yield f"http://127.0.0.1:{port}", counter, request.param
    finally:
        stop()
        thread.join(10)


def test_wsgi_server_callers_and_limits(wsgi_server: tuple[str, Counter, str]) -> None:
    base, counter, name = wsgi_server
    with httpx.Client(base_url=base, timeout=10) as client:
        a1 = client.post("/orders", json={"item": "book"}, headers=ALICE)
        b1 = client.post("/orders", json={"item": "book"}, headers=BOB)
        a2 = client.post("/orders", json={"item": "book"}, headers=ALICE)
        big = client.post("/orders", content=b"x" * 5000, headers=K)
    assert [r.json()["order"] for r in (a1, b1, a2)] == [1, 2, 1]
    assert (big.status_code, problem_type(big)) == (413, "request-too-large")
    if name == "waitress":  # wsgiref cannot read chunked request bodies
        with httpx.Client(base_url=base, timeout=10) as client:
            chunked = client.post(
                "/orders", content=iter([b"y" * 100] * 50), headers={**K, "Idempotency-Key": "c"}
            )
        assert (chunked.status_code, problem_type(chunked)) == (413, "request-too-large")
    assert counter.n == 2


# -- 2. what is kept; Retry-After ---------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403, 408, 425, 429, 500, 502, 503])
def test_refusals_and_server_errors_are_not_kept(status: int) -> None:
    counter = Counter()
    with wsgi_client(wsgi_app(counter, status), MemoryStore()) as client:
        first = client.post("/orders", json={}, headers=K)
        second = client.post("/orders", json={}, headers=K)
    assert (first.status_code, second.status_code) == (status, status)
    assert second.json() == {"order": 2}  # ran fresh
    assert "idempotent-replayed" not in second.headers


async def test_client_errors_are_kept(idem: Idempotency) -> None:
    for status in (400, 404, 409, 422):
        counter = Counter()
        async with asgi_client(asgi_app(counter, status), idem, namespace=f"s{status}") as client:
            await client.post("/orders", json={}, headers=K)
            second = await client.post("/orders", json={}, headers=K)
        assert (second.status_code, second.json()) == (status, {"order": 1})
        assert second.headers["idempotent-replayed"] == "true"


def duplicate_while_running(engine: HTTPIdempotency) -> HTTPResponse:
    """The answer to a duplicate sent while the first request with its key runs."""
    request = req(headers=[("Idempotency-Key", "k")])
    inner: list[HTTPResponse] = []

    def first() -> HTTPResponse:
        inner.append(engine.run(request, lambda: HTTPResponse(200)))
        return HTTPResponse(201)

    assert engine.run(request, first).status == 201
    return inner[0]


def test_in_progress_retry_after_is_a_short_hint() -> None:
    store = MemoryStore()
    default = duplicate_while_running(HTTPIdempotency(Idempotency(store, lease=600)))
    assert (default.status, default.header("retry-after")) == (409, "1")  # not the lease
    three = HTTPIdempotency(Idempotency(store, lease=600), namespace="ra", retry_after=3)
    assert duplicate_while_running(three).header("retry-after") == "3"
    with pytest.raises(ValueError, match="retry_after"):
        HTTPIdempotency(store, retry_after=0)


# -- 3. size limits -------------------------------------------------------------------------
def asgi_scope(
    headers: list[tuple[bytes, bytes]], path: str = "/orders", method: str = "POST"
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k"), *headers],
    }


async def call_asgi(
    app: Any, scope: dict[str, Any], bodies: list[bytes]
) -> tuple[list[dict[str, Any]], int]:
    """Run ``app``; returns the messages it sent and how many ``receive`` calls it made."""
    sent: list[dict[str, Any]] = []
    received = 0

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received > len(bodies):
            await asyncio.sleep(10)
            return {"type": "http.disconnect"}
        return {
            "type": "http.request",
            "body": bodies[received - 1],
            "more_body": received < len(bodies),
        }

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent, received


async def test_asgi_request_too_large_is_not_read() -> None:
    counter = Counter()
    app = IdempotencyMiddleware(asgi_app(counter), MemoryStore(), max_request_bytes=100)
    declared = asgi_scope([(b"content-length", b"1000000")])
    sent, received = await call_asgi(app, declared, [b"x" * 100] * 10_000)
    assert (sent[0]["status"], received) == (413, 0)
    assert json.loads(sent[1]["body"])["type"] == "urn:idempotence:problem:request-too-large"
    chunked = asgi_scope([(b"transfer-encoding", b"chunked")])
    sent, received = await call_asgi(app, chunked, [b"x" * 30] * 10_000)
    assert (sent[0]["status"], received) == (413, 4)  # stopped once past 100 bytes
    sent, received = await call_asgi(app, chunked, [b"x" * 30] * 3)
    assert sent[0]["status"] == 201
    assert counter.n == 1


def test_wsgi_request_too_large_is_not_read() -> None:
    counter = Counter()
    app = WSGIIdempotencyMiddleware(wsgi_app(counter), MemoryStore(), max_request_bytes=100)

    class Input(io.BytesIO):
        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            Input.reads += 1
            return super().read(size if size is not None and size >= 0 else None)

    statuses: list[str] = []

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    base = {"REQUEST_METHOD": "POST", "PATH_INFO": "/orders", "HTTP_IDEMPOTENCY_KEY": "k"}
    declared = {**base, "CONTENT_LENGTH": "1000000", "wsgi.input": Input(b"x" * 1_000_000)}
    body = b"".join(app(declared, start))
    assert (statuses[-1][:3], Input.reads) == ("413", 0)
    assert json.loads(body)["type"] == "urn:idempotence:problem:request-too-large"
    stream = Input(b"x" * 1_000_000)
    chunked = {**base, "wsgi.input_terminated": True, "wsgi.input": stream}
    b"".join(app(chunked, start))
    assert statuses[-1][:3] == "413"
    assert stream.tell() <= 100 + 64 * 1024  # one read past the limit, not the whole body
    assert counter.n == 0


async def test_asgi_large_response_is_streamed_and_not_replayable() -> None:
    counter = Counter()
    app = IdempotencyMiddleware(asgi_app(counter), MemoryStore(), max_body_bytes=100)
    sent, _ = await call_asgi(app, asgi_scope([], path="/stream"), [b""])
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert len(bodies) > 1  # streamed, not one buffered message
    assert b"".join(m["body"] for m in bodies) == b"".join(
        f"part{i}-1;".encode() * 10 for i in range(5)
    )
    sent, _ = await call_asgi(app, asgi_scope([], path="/stream"), [b""])
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["type"] == "urn:idempotence:problem:response-not-stored"
    assert counter.n == 1


def test_wsgi_large_response_is_streamed_and_not_replayable(idem: Idempotency) -> None:
    counter = Counter()
    app = WSGIIdempotencyMiddleware(wsgi_app(counter), idem, max_body_bytes=100)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/stream", "HTTP_IDEMPOTENCY_KEY": "k"}
    statuses: list[str] = []

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)

    result = app(dict(environ, **{"wsgi.input": io.BytesIO()}), start)
    assert not isinstance(result, list)  # an iterable streaming the rest
    assert b"".join(result) == b"".join(f"part{i}-1;".encode() * 10 for i in range(5))
    result.close()  # type: ignore[attr-defined]
    again = b"".join(app(dict(environ, **{"wsgi.input": io.BytesIO()}), start))
    assert statuses == ["200 OK", "500 Internal Server Error"]
    assert json.loads(again)["type"] == "urn:idempotence:problem:response-not-stored"
    assert counter.n == 1


# -- 4. callback failures -----------------------------------------------------------------
def test_callback_errors_are_logged_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    def bad_scope(request: HTTPRequest) -> str:
        raise RuntimeError("scope-secret-text")

    def bad_keep(response: HTTPResponse) -> bool:
        raise RuntimeError("keep-secret-text")

    counter = Counter()
    caplog.set_level(logging.ERROR, logger="idempotence")
    with wsgi_client(wsgi_app(counter), MemoryStore(), scope=bad_scope) as client:
        refused = client.post("/orders", json={}, headers=K)
    assert (refused.status_code, problem_type(refused)) == (500, "callback-failed")
    assert "secret" not in refused.text
    assert counter.n == 0
    with wsgi_client(wsgi_app(counter), MemoryStore(), keep=bad_keep) as client:
        first = client.post("/orders", json={}, headers=K)
        second = client.post("/orders", json={}, headers=K)
    assert first.json() == {"order": 1}  # the app ran: its response is the truth
    assert (second.status_code, problem_type(second)) == (500, "response-not-stored")
    assert "secret" not in second.text
    assert counter.n == 1
    assert "scope-secret-text" in caplog.text
    assert "keep-secret-text" in caplog.text


# -- 5. hostile input and corrupt records ------------------------------------------------------
async def test_asgi_lone_surrogate_in_path_is_400() -> None:
    counter = Counter()
    app = IdempotencyMiddleware(asgi_app(counter), MemoryStore())
    sent, _ = await call_asgi(app, asgi_scope([], path="/orders\ud800"), [b"{}"])
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["type"] == "urn:idempotence:problem:invalid-request"
    assert counter.n == 0


def test_engine_surrogates_in_method_path_query_are_400() -> None:
    engine = HTTPIdempotency(MemoryStore(), methods=("POST", "P\udcffST"))
    ran: list[int] = []
    for request in (
        req(path="/\ud800", headers=[("Idempotency-Key", "k")]),
        req(query="q=\udcff", headers=[("Idempotency-Key", "k")]),
        req(method="P\udcffST", headers=[("Idempotency-Key", "k")]),
    ):
        response = engine.run(request, lambda: ran.append(1) or HTTPResponse(201))
        assert response.status == 400
        assert json.loads(response.body)["type"] == "urn:idempotence:problem:invalid-request"
    assert ran == []


def test_wsgi_invalid_bytes_in_path_are_400() -> None:
    counter = Counter()
    app = WSGIIdempotencyMiddleware(wsgi_app(counter), MemoryStore())
    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": b"/\xff\xfe".decode("utf-8", "surrogateescape"),
        "HTTP_IDEMPOTENCY_KEY": "k",
        "wsgi.input": io.BytesIO(),
    }
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses[0].startswith("400")
    assert json.loads(body)["type"] == "urn:idempotence:problem:invalid-request"
    assert counter.n == 0


def _store_record(store: Store, engine: HTTPIdempotency, request: HTTPRequest, data: bytes) -> None:
    plan = engine.prepare(request)
    assert plan is not None
    assert not isinstance(plan, HTTPResponse)
    claim = store.claim(plan.key, plan.fingerprint, lease=30, ttl=600)
    assert claim.acquired
    assert store.complete(plan.key, claim.record.fence, data, ttl=600)


def _response_bytes(value: Any) -> bytes:
    from idempotence._codec import JSONSerializer

    return envelope(KIND_VALUE, JSONSerializer().encode(value))


CORRUPT = {
    "negative": {"status": -1, "headers": [], "body": b""},
    "boolean": {"status": True, "headers": [], "body": b""},
    "over-999": {"status": 1000, "headers": [], "body": b""},
    "string": {"status": "200", "headers": [], "body": b""},
    "float": {"status": 200.0, "headers": [], "body": b""},
    "bad-headers": {"status": 200, "headers": [["a"]], "body": b""},
    "unsendable-header": {"status": 200, "headers": [["a", "\u20ac"]], "body": b""},
    "not-a-dict": [1, 2, 3],
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_nonsensical_stored_response_is_record_corrupt(store: Store, name: str) -> None:
    engine = HTTPIdempotency(Idempotency(store), namespace="corrupt")
    request = req(headers=[("Idempotency-Key", name)])
    _store_record(store, engine, request, _response_bytes(CORRUPT[name]))
    response = engine.run(request, lambda: HTTPResponse(201))
    assert response.status == 500
    assert json.loads(response.body)["type"] == "urn:idempotence:problem:record-corrupt"


@pytest.mark.parametrize("depth", [1000, 100_000])
def test_deeply_nested_record_is_record_corrupt(
    store: Store, caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    engine = HTTPIdempotency(Idempotency(store), namespace=f"deep{depth}")
    request = req(headers=[("Idempotency-Key", "deep"), ("Authorization", "Bearer tok-secret")])
    nested = b'{"status":200,"headers":[],"body":' + b'{"a":' * depth + b"1" + b"}" * (depth + 1)
    _store_record(store, engine, request, envelope(KIND_VALUE, nested))
    caplog.set_level(logging.DEBUG, logger="idempotence")
    response = engine.run(request, lambda: HTTPResponse(201))
    assert response.status == 500
    assert json.loads(response.body)["type"] == "urn:idempotence:problem:record-corrupt"
    assert "tok-secret" not in caplog.text
    assert '{"a":' not in caplog.text


def test_logs_and_problems_never_echo_headers_or_body(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="idempotence")
    counter = Counter()
    secret = {"Authorization": "Bearer tok-secret", "X-Api-Key": "api-secret"}
    with wsgi_client(wsgi_app(counter), MemoryStore()) as client:
        client.post("/orders", content=b"body-secret", headers={**K, **secret})
        reused = client.post("/orders", content=b"other-secret", headers={**K, **secret})
        bad = client.post("/orders", content=b"body-secret", headers={"Idempotency-Key": '"x\\y"'})
    assert problem_type(reused) == "key-reused"
    assert problem_type(bad) == "invalid-key"
    texts = caplog.text + reused.text + bad.text
    assert not any(s in texts for s in ("tok-secret", "api-secret", "body-secret", "other-secret"))
