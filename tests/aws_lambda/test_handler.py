"""@idem.handler: source-keyed Lambda handlers, HTTP proxy mode, sync and async."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import pytest

from idempotence import AlreadyInProgressError, Idempotency, KeyReuseError, MissingKeyError
from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock
from tests.aws_lambda.events import FakeContext, load, redeliver

HTTP_SAMPLES = ["apigw_rest", "apigw_http", "alb", "function_url"]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def idem(store: MemoryStore) -> Idempotency:
    return Idempotency(store)


def created(body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def headers_of(result: dict[str, Any]) -> dict[str, str]:
    """Response headers, lower-cased, whatever the proxy format."""
    out = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    for k, vs in (result.get("multiValueHeaders") or {}).items():
        out[k.lower()] = ",".join(vs)
    return out


def set_key(event: dict[str, Any], value: str | None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for field in ("headers", "multiValueHeaders"):
        hs = event.get(field)
        if not hs:
            continue
        for name in [n for n in hs if n.lower() == "idempotency-key"]:
            del hs[name]
        if value is not None:
            hs["Idempotency-Key"] = [value] if field == "multiValueHeaders" else value
    return event


def set_body(event: dict[str, Any], body: bytes, *, b64: bool) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["body"] = base64.b64encode(body).decode() if b64 else body.decode()
    event["isBase64Encoded"] = b64
    return event


# -- non-HTTP sources -----------------------------------------------------------------------
def test_sqs_batch_handler_runs_once_across_redelivery(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        calls.append(len(event["Records"]))
        return {"processed": len(event["Records"])}

    event = load("sqs")
    assert handler(event, FakeContext()) == {"processed": 2}
    assert handler(redeliver(event), FakeContext()) == {"processed": 2}
    assert calls == [2]
    other = copy.deepcopy(event)
    other["Records"] = other["Records"][:1]
    handler(other, FakeContext())  # another list of ids: another key
    assert calls == [2, 1]


@pytest.mark.parametrize("name", ["sns", "s3", "kinesis", "dynamodb_stream", "eventbridge"])
def test_each_source_event_runs_once(idem: Idempotency, name: str) -> None:
    calls: list[Any] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> None:
        calls.append(event)

    handler(load(name), FakeContext())
    handler(load(name), FakeContext(remaining_ms=1_000))
    assert len(calls) == 1


def test_unknown_event_is_keyed_by_the_whole_event(idem: Idempotency) -> None:
    calls: list[Any] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> int:
        calls.append(event)
        return len(calls)

    assert handler({"order_id": "o-1"}, None) == 1
    assert handler({"order_id": "o-1"}, None) == 1
    assert handler({"order_id": "o-2"}, None) == 2


def test_user_key_on_an_event(idem: Idempotency) -> None:
    calls: list[Any] = []

    @idem.handler(key="detail.order_id")
    def handler(event: dict[str, Any], context: Any) -> str:
        calls.append(event["id"])
        return event["id"]

    first = load("eventbridge")
    second = copy.deepcopy(first)
    second["id"] = "another-event-id"
    assert handler(first, None) == first["id"]
    # same key, different event content -> reuse error
    with pytest.raises(KeyReuseError):
        handler(second, None)
    assert calls == [first["id"]]
    with pytest.raises(MissingKeyError):
        handler({"detail": {}}, None)


def test_async_handler_with_asyncio_run_per_invocation(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler
    async def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        await asyncio.sleep(0)
        calls.append(1)
        return {"n": len(event["Records"])}

    event = load("kinesis")
    assert asyncio.run(handler(event, FakeContext())) == {"n": 2}
    assert asyncio.run(handler(copy.deepcopy(event), FakeContext())) == {"n": 2}
    assert calls == [1]


def test_http_lease_comes_from_the_context(
    idem: Idempotency, store: MemoryStore, clock: ManualClock
) -> None:
    seen: list[float] = []

    def lease_now() -> None:
        record = next(r for r in store._records.values() if r.status.value == "IN_PROGRESS")
        seen.append(record.lease_expires_at - clock())

    @idem.handler(lease_margin=2)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        lease_now()
        return created({"ok": True})

    @idem.handler(lease_margin=3)
    async def ahandler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        lease_now()
        return created({"ok": True})

    handler(set_key(load("apigw_rest"), "lease-sync"), FakeContext(remaining_ms=12_500))
    asyncio.run(
        ahandler(set_key(load("apigw_rest"), "lease-async"), FakeContext(remaining_ms=12_500))
    )
    assert seen == [pytest.approx(14.5), pytest.approx(15.5)]


def test_lease_comes_from_the_context(
    idem: Idempotency, store: MemoryStore, clock: ManualClock
) -> None:
    seen: list[float] = []

    @idem.handler(lease_margin=2)
    def handler(event: dict[str, Any], context: Any) -> None:
        (record,) = store._records.values()
        seen.append(record.lease_expires_at - clock())

    handler(load("sns"), FakeContext(remaining_ms=12_500))
    assert seen == [pytest.approx(14.5)]

    @idem.handler(lease=42)
    def fixed(event: dict[str, Any], context: Any) -> None:
        record = next(r for r in store._records.values() if r.status.value == "IN_PROGRESS")
        seen.append(record.lease_expires_at - clock())

    fixed(load("sns"), FakeContext(remaining_ms=12_500))
    assert seen[-1] == pytest.approx(42)

    @idem.handler
    def no_context(event: dict[str, Any], context: Any) -> None:
        record = next(r for r in store._records.values() if r.status.value == "IN_PROGRESS")
        seen.append(record.lease_expires_at - clock())

    no_context(load("sns"), None)
    assert seen[-1] == pytest.approx(idem.config.lease_s)


def test_handler_heartbeat_is_off_by_default(idem: Idempotency) -> None:
    @idem.handler
    def handler(event: Any, context: Any) -> None: ...

    assert handler.idempotency_config.heartbeat is False  # type: ignore[attr-defined]


def test_event_in_progress_elsewhere_raises(idem: Idempotency) -> None:
    inner: list[BaseException] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> str:
        try:
            handler(redeliver(load("sqs")), context)
        except AlreadyInProgressError as exc:
            inner.append(exc)
        return "done"

    assert handler(load("sqs"), FakeContext()) == "done"
    assert len(inner) == 1


def test_failed_invocation_releases_the_key(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ok"

    with pytest.raises(RuntimeError):
        handler(load("sns"), FakeContext())
    assert handler(load("sns"), FakeContext()) == "ok"
    assert len(calls) == 2


# -- HTTP -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_http_duplicate_replays_with_header(idem: Idempotency, name: str) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return created({"order_id": "ord-1001", "n": len(calls)})

    event = load(name)
    first = handler(event, FakeContext())
    assert first == created({"order_id": "ord-1001", "n": 1})  # the handler's own result
    again = handler(load(name), FakeContext())
    assert calls == [1]
    assert again["statusCode"] == 201
    assert json.loads(again["body"]) == {"order_id": "ord-1001", "n": 1}
    assert headers_of(again)["idempotent-replayed"] == "true"
    assert headers_of(again)["content-type"] == "application/json"
    if name == "alb":
        assert again["statusDescription"] == "201 Created"
    if name == "apigw_rest":  # the handler returned ``headers``: so does the replay
        assert again["headers"]["Content-Type"] == "application/json"
        assert "multiValueHeaders" not in again


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_http_refusals(idem: Idempotency, name: str) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:  # a duplicate arrives while the first is still running
            busy = handler(load(name), context)
            assert busy["statusCode"] == 409
            assert int(headers_of(busy)["retry-after"]) >= 1
            assert headers_of(busy)["content-type"] == "application/problem+json"
            assert json.loads(busy["body"])["type"].endswith(":in-progress")
        return created({"ok": True})

    assert handler(load(name), FakeContext())["statusCode"] == 201
    # same key, another body -> 422
    other = set_body(load(name), b'{"order_id": "ord-9999"}', b64=False)
    reused = handler(other, FakeContext())
    assert reused["statusCode"] == 422
    assert json.loads(reused["body"])["type"].endswith(":key-reused")
    # malformed key -> 400
    bad = handler(set_key(load(name), '"unterminated'), FakeContext())
    assert bad["statusCode"] == 400
    assert json.loads(bad["body"])["type"].endswith(":invalid-key")
    assert calls == [1]


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_http_missing_key_optional_or_required(idem: Idempotency, name: str) -> None:
    calls: list[int] = []

    def app(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return created({})

    optional = idem.handler(app)
    required = idem.handler(required=True)(app)
    no_key = set_key(load(name), None)
    assert optional(no_key, None)["statusCode"] == 201
    assert optional(no_key, None)["statusCode"] == 201
    assert len(calls) == 2  # no header: no idempotency
    refused = required(no_key, None)
    assert refused["statusCode"] == 400
    assert json.loads(refused["body"])["type"].endswith(":missing-key")
    assert len(calls) == 2


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_http_5xx_is_not_kept(idem: Idempotency, name: str) -> None:
    statuses = [503, 201]

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return created({}, status=statuses.pop(0))

    assert handler(load(name), None)["statusCode"] == 503
    assert handler(load(name), None)["statusCode"] == 201
    assert handler(load(name), None)["statusCode"] == 201
    assert statuses == []


def test_http_store_failure_is_503(store: MemoryStore) -> None:
    class Broken(MemoryStore):
        def claim(self, *args: Any, **kwargs: Any) -> Any:
            from idempotence import StoreError

            raise StoreError("down")

    idem = Idempotency(Broken())

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise AssertionError("must not run")

    result = handler(load("apigw_http"), None)
    assert result["statusCode"] == 503
    assert "retry-after" in headers_of(result)


@pytest.mark.parametrize("name", ["alb", "function_url"])
def test_base64_bodies_fingerprint_by_content(idem: Idempotency, name: str) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return created({})

    event = load(name)
    assert event["isBase64Encoded"] is True
    handler(event, None)
    raw = base64.b64decode(event["body"])
    # the same bytes sent as text: the same request
    assert headers_of(handler(set_body(event, raw, b64=False), None))["idempotent-replayed"]
    # another payload, base64-encoded: key reuse
    other = set_body(event, b'{"order_id": "ord-1002"}', b64=True)
    assert handler(other, None)["statusCode"] == 422
    assert calls == [1]


def test_binary_response_round_trips_base64(idem: Idempotency) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\xff"

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {
            "statusCode": 200,
            "headers": {"content-type": "image/png"},
            "body": base64.b64encode(png).decode(),
            "isBase64Encoded": True,
        }

    handler(load("apigw_http"), None)
    again = handler(load("apigw_http"), None)
    assert again["isBase64Encoded"] is True
    assert base64.b64decode(again["body"]) == png


@pytest.mark.parametrize("name", ["apigw_rest", "apigw_http", "function_url"])
def test_principals_scope_keys(idem: Idempotency, name: str) -> None:
    calls: list[str] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append("run")
        return created({})

    alice = load(name)
    bob = copy.deepcopy(alice)
    auth = bob["requestContext"]["authorizer"]
    if "principalId" in auth:
        auth["principalId"] = "user|bob"
    elif "jwt" in auth:
        auth["jwt"]["claims"]["sub"] = "bob-sub"
    else:
        auth["iam"]["userArn"] = "arn:aws:iam::111122223333:user/bob"
    handler(alice, None)
    assert "idempotent-replayed" not in headers_of(handler(bob, None))
    assert len(calls) == 2
    assert headers_of(handler(copy.deepcopy(bob), None))["idempotent-replayed"] == "true"
    assert len(calls) == 2


def test_rest_cognito_claims_scope_keys(idem: Idempotency) -> None:
    from idempotence.aws_lambda._http import principal
    from idempotence.aws_lambda._sources import Source

    event = load("apigw_rest")
    event["requestContext"]["authorizer"] = {"claims": {"sub": "cognito-sub-1"}}
    assert principal(Source.API_GATEWAY_REST, event) == "cognito-sub-1"
    event = load("apigw_http")
    event["requestContext"]["authorizer"] = {"lambda": {"principalId": "tenant-7"}}
    assert principal(Source.API_GATEWAY_HTTP, event) == "tenant-7"
    assert principal(Source.ALB, load("alb")) is None


def test_http_get_passes_through(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return {"statusCode": 200, "body": "ok"}

    event = load("apigw_http")
    event["requestContext"]["http"]["method"] = "GET"
    handler(event, None)
    handler(event, None)
    assert calls == [1, 1]


def test_http_user_key_from_the_body(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler(key="powertools_json(body).order_id")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return created({"n": len(calls)})

    first = set_key(load("apigw_rest"), None)
    second = set_key(load("apigw_rest"), "a-client-key-that-is-ignored")
    handler(first, None)
    again = handler(second, None)
    assert headers_of(again)["idempotent-replayed"] == "true"
    assert calls == [1]


def test_http_user_key_from_the_body_with_a_custom_header_name(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler(key="powertools_json(body).order_id", header="X-Order-Key")
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return created({"n": len(calls)})

    handler(set_key(load("apigw_rest"), None), None)
    again = handler(set_key(load("apigw_rest"), None), None)
    assert headers_of(again)["idempotent-replayed"] == "true"
    assert calls == [1]


def test_http_plain_result_is_a_200_json(idem: Idempotency) -> None:
    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"order_id": "ord-1001"}

    assert handler(load("apigw_http"), None) == {"order_id": "ord-1001"}
    again = handler(load("apigw_http"), None)
    assert again["statusCode"] == 200
    assert json.loads(again["body"]) == {"order_id": "ord-1001"}


def test_http_async_handler(idem: Idempotency) -> None:
    calls: list[int] = []

    @idem.handler
    async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return created({"n": 1})

    assert asyncio.run(handler(load("apigw_rest"), FakeContext()))["statusCode"] == 201
    again = asyncio.run(handler(load("apigw_rest"), FakeContext()))
    assert headers_of(again)["idempotent-replayed"] == "true"
    other = set_body(load("apigw_rest"), b"{}", b64=False)
    assert asyncio.run(handler(other, FakeContext()))["statusCode"] == 422
    assert calls == [1]


def test_http_lease_from_context(idem: Idempotency, store: MemoryStore, clock: ManualClock) -> None:
    seen: list[float] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        (record,) = store._records.values()
        seen.append(record.lease_expires_at - clock())
        return created({})

    handler(load("apigw_http"), FakeContext(remaining_ms=3_000))
    assert seen == [pytest.approx(8.0)]


def test_disabled_runs_without_idempotency(
    idem: Idempotency, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> None:
        calls.append(1)

    monkeypatch.setenv("IDEMPOTENCE_DISABLED", "1")
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="IDEMPOTENCE_DISABLED"):
            handler(load("sns"), None)
    assert calls == [1, 1]


def test_module_level_idempotent_handler() -> None:
    import idempotence

    @idempotence.idempotent_handler(ttl=60)
    def handler(event: dict[str, Any], context: Any) -> None: ...

    assert handler.idempotency_config.ttl == 60  # type: ignore[attr-defined]
    assert handler.__name__ == "handler"
