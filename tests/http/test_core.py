"""The sans-I/O HTTP engine: header parsing, records, and ``HTTPIdempotency`` on every store."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from idempotence import Idempotency, InvalidKeyError
from idempotence._codec import KIND_NOT_STORED, envelope
from idempotence.http import (
    PROBLEM_TYPES,
    HTTPIdempotency,
    HTTPRequest,
    HTTPResponse,
    parse_idempotency_key,
    problem,
)
from idempotence.stores import MemoryStore, Store


# -- the header ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "key"),
    [
        (None, None),
        ('"abc"', "abc"),
        ("abc", "abc"),
        ('  "8e03978e-40d5-43e8-bc93-6894a57f9324"\t', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"a b"', "a b"),
        ('"a\\"b\\\\c"', 'a"b\\c'),
        ('"' + "x" * 255 + '"', "x" * 255),
        ("x" * 255, "x" * 255),
        ("key:with/punct~!", "key:with/punct~!"),
    ],
)
def test_parse_valid(value: str | None, key: str | None) -> None:
    assert parse_idempotency_key(value) == key


@pytest.mark.parametrize(
    "value",
    [
        "",
        '""',
        '"abc',
        '"abc"x',
        '"a\\nb"',
        '"caf\u00e9"',
        '"tab\there"',
        "a b",
        "a,b",
        '"a", "b"',
        'a"b',
        "x" * 256,
        '"' + "x" * 256 + '"',
        "caf\u00e9",
    ],
)
def test_parse_invalid(value: str) -> None:
    with pytest.raises(InvalidKeyError):
        parse_idempotency_key(value)


# -- records ------------------------------------------------------------------------------
def test_response_round_trip_byte_for_byte() -> None:
    body = bytes(range(256)) * 3
    response = HTTPResponse(201, [("X-A", "1"), ("x-a", "2"), ("Content-Type", "a/b")], body)
    data = response.encode()
    assert data[:2] == b"\x01V"  # the function-result envelope, kind VALUE
    assert HTTPResponse.decode(data) == response


@pytest.mark.parametrize(
    "data",
    [b"", b"\x09V{}", b"\x01V{}", b'\x01V{"status":"x","headers":[],"body":1}', b"\x01Vnot json"],
)
def test_decode_refuses_garbage(data: bytes) -> None:
    from idempotence import CorruptRecordError

    with pytest.raises(CorruptRecordError):
        HTTPResponse.decode(data)


def test_problem_shape() -> None:
    response = problem("in-progress", "wait", retry_after=0.2)
    assert response.status == 409
    assert response.header("content-type") == "application/problem+json"
    assert response.header("retry-after") == "1"
    doc = json.loads(response.body)
    assert doc == {
        "type": "urn:idempotence:problem:in-progress",
        "title": PROBLEM_TYPES["in-progress"][1],
        "status": 409,
        "detail": "wait",
        "retry_same_key": True,
    }
    assert int(response.header("content-length") or 0) == len(response.body)


# -- the engine ---------------------------------------------------------------------------
def req(
    key: str | None = '"k1"',
    body: bytes = b'{"item":"book","qty":1}',
    *,
    method: str = "POST",
    path: str = "/orders",
    query: str = "",
    ctype: str = "application/json",
    principal: str | None = None,
    extra: list[tuple[str, str]] | None = None,
) -> HTTPRequest:
    headers = [("Content-Type", ctype)]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    return HTTPRequest(method, path, query, headers + (extra or []), body, principal)


class App:
    """Counts executions; answers ``status`` with a body naming the execution."""

    def __init__(self, status: int = 201, body: bytes | None = None) -> None:
        self.calls = 0
        self.status = status
        self.body = body
        self.lock = threading.Lock()

    def __call__(self) -> HTTPResponse:
        with self.lock:
            self.calls += 1
            n = self.calls
        body = self.body if self.body is not None else json.dumps({"run": n}).encode()
        return HTTPResponse(
            self.status,
            [
                ("Content-Type", "application/json"),
                ("Set-Cookie", "session=secret"),
                ("Connection", "close, X-Private"),
                ("X-Private", "p"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Proxy-Authenticate", "Basic"),
                ("X-Order", "42"),
            ],
            body,
        )

    async def acall(self) -> HTTPResponse:
        return self()


def doc(response: HTTPResponse) -> dict[str, Any]:
    assert response.header("content-type") == "application/problem+json"
    value: dict[str, Any] = json.loads(response.body)
    return value


def test_replay_is_byte_for_byte_and_marked(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    first = engine.run(req(), app)
    assert first.status == 201
    assert first.header("set-cookie") == "session=secret"  # the original is untouched
    second = engine.run(req(), app)
    assert app.calls == 1
    assert (second.status, second.body) == (first.status, first.body)
    assert second.header("Idempotent-Replayed") == "true"
    assert second.headers == [
        ("Content-Type", "application/json"),
        ("X-Order", "42"),
        ("Idempotent-Replayed", "true"),
    ]


def test_quoted_and_bare_keys_are_the_same_key(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    engine.run(req('"same"'), app)
    assert engine.run(req("same"), app).header("idempotent-replayed") == "true"
    assert app.calls == 1


def test_json_body_fingerprint_is_canonical(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    engine.run(req(body=b'{"a": 1, "b": [1, 2]}'), app)
    replay = engine.run(req(body=b'{"b":[1,2],\n "a":1}'), app)
    assert replay.status == 201
    assert app.calls == 1


@pytest.mark.parametrize(
    "other",
    [
        req(body=b'{"item":"book","qty":2}'),
        req(method="PATCH"),
        req(path="/orders/2"),
        req(query="dry_run=1"),
        req(body=b"item=book&qty=1", ctype="application/x-www-form-urlencoded"),
    ],
)
def test_other_payload_is_422(idem: Idempotency, other: HTTPRequest) -> None:
    engine, app = HTTPIdempotency(idem), App()
    engine.run(req(), app)
    response = engine.run(other, app)
    assert response.status == 422
    assert doc(response)["type"] == "urn:idempotence:problem:key-reused"
    assert doc(response)["retry_same_key"] is False
    assert app.calls == 1


def test_raw_body_fingerprint(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    form = {"ctype": "application/x-www-form-urlencoded"}
    engine.run(req(body=b"a=1&b=2", **form), app)  # type: ignore[arg-type]
    assert engine.run(req(body=b"a=1&b=2", **form), app).status == 201  # type: ignore[arg-type]
    assert engine.run(req(body=b"b=2&a=1", **form), app).status == 422  # type: ignore[arg-type]
    # a body declared JSON that does not parse is hashed raw
    engine.run(req('"k2"', body=b"{not json"), app)
    assert engine.run(req('"k2"', body=b"{not json"), app).header("idempotent-replayed")
    assert app.calls == 2


def test_missing_key_optional_runs_every_time(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    assert engine.run(req(None), app).status == 201
    assert engine.run(req(None), app).status == 201
    assert app.calls == 2


def test_missing_key_required_is_400(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem, required=True), App()
    response = engine.run(req(None), app)
    assert response.status == 400
    assert doc(response)["type"] == "urn:idempotence:problem:missing-key"
    assert app.calls == 0


@pytest.mark.parametrize("extra", [[], [("Idempotency-Key", '"k2"')]])
def test_malformed_or_repeated_key_is_400(idem: Idempotency, extra: list[Any]) -> None:
    engine, app = HTTPIdempotency(idem), App()
    bad = req('"unterminated' if not extra else '"k1"', extra=extra)
    response = engine.run(bad, app)
    assert response.status == 400
    assert doc(response)["type"] == "urn:idempotence:problem:invalid-key"
    assert app.calls == 0


def test_get_is_untouched(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    engine.run(req(method="GET"), app)
    engine.run(req(method="GET"), app)
    assert app.calls == 2
    assert engine.prepare(req(method="GET")) is None


def test_5xx_is_not_kept(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App(status=503)
    assert engine.run(req(), app).status == 503
    assert engine.run(req(), app).status == 503
    assert app.calls == 2
    app.status = 201
    assert engine.run(req(), app).status == 201
    assert engine.run(req(), app).header("idempotent-replayed") == "true"
    assert app.calls == 3


def test_4xx_is_kept_and_keep_is_configurable(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App(status=404)
    engine.run(req(), app)
    assert engine.run(req(), app).header("idempotent-replayed") == "true"
    picky = HTTPIdempotency(idem, keep=lambda r: r.status < 400, namespace="picky")
    picky.run(req(), app)
    picky.run(req(), app)
    assert app.calls == 3


def test_exception_propagates_and_releases(idem: Idempotency, store: Store) -> None:
    engine, app = HTTPIdempotency(idem), App()

    def boom() -> HTTPResponse:
        raise ZeroDivisionError("app bug")

    with pytest.raises(ZeroDivisionError):
        engine.run(req(), boom)
    assert engine.run(req(), app).status == 201  # released: the retry runs
    assert app.calls == 1


def test_app_idempotency_errors_propagate_unchanged(idem: Idempotency) -> None:
    from idempotence import KeyReuseError

    engine = HTTPIdempotency(idem)

    def inner() -> HTTPResponse:
        raise KeyReuseError("from the app's own decorator")

    with pytest.raises(KeyReuseError, match="app's own"):
        engine.run(req(), inner)


def test_set_cookie_opt_in(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem, replay_set_cookie=True), App()
    engine.run(req(), app)
    assert engine.run(req(), app).header("set-cookie") == "session=secret"


def test_replay_headers_allowlist(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem, replay_headers=["content-type", "connection"]), App()
    engine.run(req(), app)
    assert engine.run(req(), app).headers == [
        ("Content-Type", "application/json"),
        ("Idempotent-Replayed", "true"),
    ]


def test_large_response_is_not_replayable(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem, max_body_bytes=9), App()
    first = engine.run(req(), app)
    assert first.status == 201  # the first caller gets its response
    second = engine.run(req(), app)
    assert second.status == 500
    assert doc(second)["type"] == "urn:idempotence:problem:response-not-stored"
    assert doc(second)["retry_same_key"] is False
    assert app.calls == 1


def test_scope_isolates_tenants(idem: Idempotency) -> None:
    engine, app = HTTPIdempotency(idem), App()
    a = engine.run(req(principal="tenant-a"), app)
    b = engine.run(req(principal="tenant-b"), app)
    assert app.calls == 2
    assert a.body != b.body
    assert engine.run(req(principal="tenant-a"), app).body == a.body
    by_header = HTTPIdempotency(idem, scope=lambda r: r.header("x-tenant"), namespace="h")
    by_header.run(req(extra=[("X-Tenant", "a")]), app)
    by_header.run(req(extra=[("X-Tenant", "b")]), app)
    assert app.calls == 4


def test_in_progress_is_409_with_retry_after(idem: Idempotency) -> None:
    engine = HTTPIdempotency(idem)
    entered, release = threading.Event(), threading.Event()

    def slow() -> HTTPResponse:
        entered.set()
        release.wait(10)
        return HTTPResponse(201, [], b"done")

    worker = threading.Thread(target=engine.run, args=(req(), slow))
    worker.start()
    try:
        assert entered.wait(10)
        response = engine.run(req(), App())
        assert response.status == 409
        assert 1 <= int(response.header("retry-after") or 0) <= 30
        assert doc(response)["retry_same_key"] is True
    finally:
        release.set()
        worker.join()
    assert engine.run(req(), App()).body == b"done"


def test_on_in_progress_wait_replays(idem: Idempotency) -> None:
    engine = HTTPIdempotency(idem, on_in_progress="wait")
    entered, release = threading.Event(), threading.Event()

    def slow() -> HTTPResponse:
        entered.set()
        release.wait(10)
        return HTTPResponse(201, [], b"done")

    worker = threading.Thread(target=engine.run, args=(req(), slow))
    worker.start()
    assert entered.wait(10)
    threading.Timer(0.2, release.set).start()
    response = engine.run(req(), App())
    worker.join()
    assert (response.status, response.body) == (201, b"done")
    assert response.header("idempotent-replayed") == "true"


class DownStore(MemoryStore):
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Any:
        raise ConnectionError("store is down")


def test_store_down_is_503_fail_closed() -> None:
    engine, app = HTTPIdempotency(DownStore()), App()
    response = engine.run(req(), app)
    assert response.status == 503
    assert response.header("retry-after") == "1"
    assert doc(response)["type"] == "urn:idempotence:problem:store-unavailable"
    assert doc(response)["retry_same_key"] is True
    assert app.calls == 0


def test_store_down_fail_open_runs() -> None:
    engine, app = HTTPIdempotency(Idempotency(DownStore(), fail_open=True)), App()
    assert engine.run(req(), app).status == 201
    assert app.calls == 1


class CompleteFails(MemoryStore):
    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        raise ConnectionError("lost the connection")


def test_store_failing_after_the_app_ran_returns_its_response() -> None:
    engine, app = HTTPIdempotency(CompleteFails()), App()
    response = engine.run(req(), app)
    assert response.status == 201
    assert app.calls == 1


def test_corrupt_and_not_stored_records(store: Store) -> None:
    engine = HTTPIdempotency(store)
    plan = engine.prepare(req())
    assert plan is not None
    assert not isinstance(plan, HTTPResponse)
    claim = store.claim(plan.key, plan.fingerprint, lease=30, ttl=60)
    store.complete(plan.key, claim.record.fence, b"\x01Vgarbage", ttl=60)
    response = engine.run(req(), App())
    assert response.status == 500
    assert doc(response)["type"] == "urn:idempotence:problem:record-corrupt"
    store.delete(plan.key)
    claim = store.claim(plan.key, plan.fingerprint, lease=30, ttl=60)
    store.complete(plan.key, claim.record.fence, envelope(KIND_NOT_STORED, b"why"), ttl=60)
    assert doc(engine.run(req(), App()))["type"] == "urn:idempotence:problem:response-not-stored"


def test_disabled_env_passes_through(idem: Idempotency, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")
    engine, app = HTTPIdempotency(idem), App()
    engine.run(req(), app)
    engine.run(req(), app)
    assert app.calls == 2


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="on_in_progress"):
        HTTPIdempotency(MemoryStore(), on_in_progress="later")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="replay_headers"):
        HTTPIdempotency(MemoryStore(), replay_headers="content-type")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_body_bytes"):
        HTTPIdempotency(MemoryStore(), max_body_bytes=-1)
    with pytest.raises(TypeError, match="HTTPResponse"):
        HTTPIdempotency(MemoryStore()).run(req(), lambda: "no")  # type: ignore[arg-type,return-value]


# -- async --------------------------------------------------------------------------------
async def test_arun_replays_and_concurrent_duplicates_run_once(idem: Idempotency) -> None:
    engine = HTTPIdempotency(idem)
    calls = 0

    async def slow() -> HTTPResponse:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return HTTPResponse(201, [("X", "1")], b"ok")

    results = await asyncio.gather(*(engine.arun(req(), slow) for _ in range(8)))
    assert calls == 1
    statuses = sorted(r.status for r in results)
    assert statuses == [201] + [409] * 7
    replay = await engine.arun(req(), slow)
    assert replay.body == b"ok"
    assert replay.header("idempotent-replayed") == "true"


async def test_arun_refusals_and_exceptions(idem: Idempotency) -> None:
    engine = HTTPIdempotency(idem, required=True)

    async def boom() -> HTTPResponse:
        raise KeyError("x")

    assert (await engine.arun(req(None), boom)).status == 400
    with pytest.raises(KeyError):
        await engine.arun(req(), boom)
    ok = App()
    assert (await engine.arun(req(), ok.acall)).status == 201
    assert (await engine.arun(req(body=b"{}"), ok.acall)).status == 422
    assert (await HTTPIdempotency(DownStore()).arun(req(), ok.acall)).status == 503
    assert ok.calls == 1


def test_json_body_fingerprint_keeps_the_precision_of_numbers(idem: Idempotency) -> None:
    """A retry whose amount differs in the 17th digit is another request (422), while
    another spelling of the same number (``1.50``, ``15e-1``) is the same one."""
    engine, app = HTTPIdempotency(idem), App()
    engine.run(req(body=b'{"amount": 1.0}'), app)
    assert engine.run(req(body=b'{"amount": 1.0000000000000001}'), app).status == 422
    assert engine.run(req(body=b'{"amount": 1.00}'), app).status == 201  # a replay
    assert app.calls == 1
    engine.run(req('"k2"', body=b'{"amount": 1.5}'), app)
    assert engine.run(req('"k2"', body=b'{"amount": 15e-1}'), app).status == 201
    assert app.calls == 2
