"""``WSGIIdempotencyMiddleware``: in process (httpx.WSGITransport) on every store, and behind
real WSGI servers (waitress, wsgiref) with concurrent duplicates."""

from __future__ import annotations

import concurrent.futures
import json
import socketserver
import threading
import time
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest

from idempotence import Idempotency
from idempotence.http import WSGIIdempotencyMiddleware
from idempotence.stores import MemoryStore, Store
from tests.conftest import Counter
from tests.http.conftest import post_concurrently


def make_app(
    counter: Counter, gate: threading.Event | None = None, delay: float = 0.0
) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        n = counter.hit()
        if gate is not None:
            gate.wait(10)
        if delay:
            time.sleep(delay)
        if method == "GET":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [f"read {n}".encode()]
        if path == "/fail":
            raise RuntimeError("app bug")
        if path == "/unavailable":
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [f"busy {n}".encode()]
        if path == "/big":
            start_response("201 Created", [("Content-Type", "text/plain")])
            return [b"x" * 5000, str(n).encode()]
        payload = json.dumps({"order": n, "echo": body.decode()}).encode()
        start_response(
            "201 Created",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("Set-Cookie", f"session=s{n}"),
                ("X-Run", str(n)),
            ],
        )
        return [payload[:5], payload[5:]]  # several chunks

    return app


def client_for(app: Any, **options: Any) -> httpx.Client:
    wrapped = WSGIIdempotencyMiddleware(app, options.pop("idempotency"), **options)
    return httpx.Client(transport=httpx.WSGITransport(app=wrapped), base_url="http://test")


K = {"Idempotency-Key": '"order-1"'}


def test_replay_byte_for_byte(idem: Idempotency) -> None:
    counter = Counter()
    with client_for(make_app(counter), idempotency=idem) as client:
        first = client.post("/orders", json={"item": "book"}, headers=K)
        second = client.post("/orders", json={"item": "book"}, headers=K)
        bare = client.post("/orders", json={"item": "book"}, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == second.status_code == 201
    assert first.json() == {"order": 1, "echo": '{"item":"book"}'}
    assert second.content == first.content == bare.content
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["x-run"] == "1"
    assert first.headers["set-cookie"] == "session=s1"
    assert "set-cookie" not in second.headers
    assert counter.n == 1


def test_set_cookie_opt_in(idem: Idempotency) -> None:
    counter = Counter()
    with client_for(make_app(counter), idempotency=idem, replay_set_cookie=True) as client:
        client.post("/orders", json={}, headers=K)
        assert client.post("/orders", json={}, headers=K).headers["set-cookie"] == "session=s1"


def test_statuses(idem: Idempotency) -> None:
    counter = Counter()
    with client_for(make_app(counter), idempotency=idem, required=True) as client:
        assert client.post("/orders", json={}).status_code == 400
        assert (
            client.post("/orders", json={}, headers={"Idempotency-Key": "a b"}).status_code == 400
        )
        assert client.post("/orders", json={"a": 1}, headers=K).status_code == 201
        reuse = client.post("/orders", json={"a": 2}, headers=K)
        assert reuse.status_code == 422
        assert reuse.headers["content-type"] == "application/problem+json"
        assert client.get("/orders").text == "read 2"
        assert client.get("/orders", headers=K).text == "read 3"
        key = {"Idempotency-Key": "u"}
        assert client.post("/unavailable", headers=key).text == "busy 4"
        assert client.post("/unavailable", headers=key).text == "busy 5"
        with pytest.raises(RuntimeError):
            client.post("/fail", headers={"Idempotency-Key": "f"})
        with pytest.raises(RuntimeError):
            client.post("/fail", headers={"Idempotency-Key": "f"})
    assert counter.n == 7


def test_large_response_not_replayable(idem: Idempotency) -> None:
    counter = Counter()
    with client_for(make_app(counter), idempotency=idem, max_body_bytes=100) as client:
        assert len(client.post("/big", headers=K).content) == 5001
        second = client.post("/big", headers=K)
    assert second.status_code == 500
    assert second.json()["type"] == "urn:idempotence:problem:response-not-stored"
    assert counter.n == 1


def test_in_progress_409(idem: Idempotency) -> None:
    counter, gate = Counter(), threading.Event()
    app = WSGIIdempotencyMiddleware(make_app(counter, gate), idem)

    def post() -> httpx.Response:
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://t") as c:
            return c.post("/orders", json={}, headers=K)

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(post)
        while counter.n == 0:
            time.sleep(0.01)
        busy = post()
        gate.set()
        assert first.result().status_code == 201
    assert busy.status_code == 409
    assert int(busy.headers["retry-after"]) >= 1
    assert counter.n == 1


def test_scope_and_remote_user(idem: Idempotency) -> None:
    counter = Counter()
    app = WSGIIdempotencyMiddleware(make_app(counter), idem)

    def post(user: str) -> int:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/orders",
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": "2",
            "HTTP_IDEMPOTENCY_KEY": "k",
            "REMOTE_USER": user,
            "wsgi.input": __import__("io").BytesIO(b"{}"),
        }
        out = b"".join(app(environ, lambda status, headers, exc_info=None: None))
        return int(json.loads(out)["order"])

    assert [post("alice"), post("bob"), post("alice")] == [1, 2, 1]


def test_store_down_503() -> None:
    class Down(MemoryStore):
        def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
            raise OSError("down")

    counter = Counter()
    with client_for(make_app(counter), idempotency=Down()) as client:
        response = client.post("/orders", json={}, headers=K)
    assert (response.status_code, response.headers["retry-after"]) == (503, "1")
    assert counter.n == 0


# -- real servers -------------------------------------------------------------------------
class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(params=["waitress", "wsgiref"])
def wsgi_server(request: pytest.FixtureRequest, store: Store) -> Iterator[tuple[str, Counter]]:
    """The app behind a real WSGI server on a free loopback port, in a thread."""
    counter = Counter()
    app = WSGIIdempotencyMiddleware(make_app(counter, delay=0.3), Idempotency(store, lease=30))
    if request.param == "waitress":
        import waitress.server
        from waitress import wasyncore

        server: Any = waitress.server.create_server(app, host="127.0.0.1", port=0, threads=16)
        port = server.effective_port
        stopping = threading.Event()

        def serve() -> None:  # server.run() cannot be stopped without racing its sockets
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
        yield f"http://127.0.0.1:{port}", counter
    finally:
        stop()
        thread.join(10)


def test_real_server_concurrent_duplicates_run_once(wsgi_server: tuple[str, Counter]) -> None:
    base, counter = wsgi_server
    headers = {"Idempotency-Key": '"concurrent-1"'}
    responses = post_concurrently(base, headers)
    assert counter.n == 1
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) >= 1
    assert set(statuses) <= {201, 409}
    assert all("retry-after" in r.headers for r in responses if r.status_code == 409)
    with httpx.Client(base_url=base) as client:
        replay = client.post("/orders", json={"item": "book"}, headers=headers)
    assert replay.json() == {"order": 1, "echo": '{"item":"book"}'}
    assert replay.headers["idempotent-replayed"] == "true"
    assert counter.n == 1
