"""Lambda HTTP mode: caller scoping, REST replay shapes, 400 problems for unreadable
events, results that are not proxy responses, the handler signature."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.aws_lambda import Source
from idempotence.aws_lambda._http import principal
from idempotence.stores import MemoryStore
from idempotence.testing import ManualClock
from tests.aws_lambda.events import FakeContext, load

HTTP_SAMPLES = ["apigw_rest", "apigw_http", "alb", "function_url"]
PROBLEM = "application/problem+json"


@pytest.fixture
def idem() -> Idempotency:
    return Idempotency(MemoryStore(clock=ManualClock()))


def ok(n: int, shape: str = "headers") -> dict[str, Any]:
    result: dict[str, Any] = {"statusCode": 201, "body": json.dumps({"n": n})}
    if shape == "headers":
        result["headers"] = {"Content-Type": "application/json", "X-Order": "ord-1"}
    else:
        result["multiValueHeaders"] = {"Content-Type": ["application/json"], "X-Order": ["ord-1"]}
    return result


def counting(idem: Idempotency, **options: Any) -> tuple[Any, list[int]]:
    calls: list[int] = []

    @idem.handler(**options)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return ok(len(calls))

    return handler, calls


def anonymous(name: str) -> dict[str, Any]:
    """Sample ``name`` without any authorizer or IAM identity (an open route)."""
    event = load(name)
    context = event["requestContext"]
    context.pop("authorizer", None)
    context.pop("identity", None)
    return event


def set_header(event: dict[str, Any], name: str, value: str | None) -> dict[str, Any]:
    """``event`` with header ``name`` set (or removed), in every header field it has."""
    event = copy.deepcopy(event)
    for field in ("headers", "multiValueHeaders"):
        hs = event.get(field)
        if hs is None:
            continue
        for n in [n for n in hs if n.lower() == name.lower()]:
            del hs[n]
        if value is not None:
            hs[name] = [value] if field == "multiValueHeaders" else value
    return event


def headers_of(result: dict[str, Any]) -> dict[str, str]:
    out = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
    for k, vs in (result.get("multiValueHeaders") or {}).items():
        out[k.lower()] = ",".join(vs)
    return out


def is_problem(result: dict[str, Any], status: int, name: str) -> bool:
    body = json.loads(result["body"])
    return (
        result["statusCode"] == status
        and headers_of(result)["content-type"] == PROBLEM
        and body["type"] == f"urn:idempotence:problem:{name}"
    )


# -- 1. never replay across callers -------------------------------------------------------
@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_different_authorization_headers_both_run(idem: Idempotency, name: str) -> None:
    handler, calls = counting(idem)
    alice = set_header(anonymous(name), "Authorization", "Bearer alice-token")
    mallory = set_header(anonymous(name), "Authorization", "Bearer mallory-token")
    assert json.loads(handler(alice, FakeContext())["body"]) == {"n": 1}
    stolen = handler(mallory, FakeContext())  # same key and body, another caller
    assert json.loads(stolen["body"]) == {"n": 2}
    assert "idempotent-replayed" not in headers_of(stolen)
    again = handler(copy.deepcopy(alice), FakeContext())  # alice's retry: replayed
    assert headers_of(again)["idempotent-replayed"] == "true"
    assert json.loads(again["body"]) == {"n": 1}
    assert calls == [1, 1]


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_api_key_header_and_configured_cookie_scope_keys(idem: Idempotency, name: str) -> None:
    handler, calls = counting(idem, credential_cookies=["session"])
    a = set_header(anonymous(name), "x-api-key", "key-a")
    b = set_header(anonymous(name), "x-api-key", "key-b")
    handler(a, None)
    handler(b, None)
    assert calls == [1, 1]
    c1 = set_header(anonymous(name), "Cookie", "theme=dark; session=one")
    c2 = set_header(anonymous(name), "Cookie", "theme=dark; session=two")
    handler(c1, None)
    handler(c2, None)
    assert calls == [1, 1, 1, 1]
    assert headers_of(handler(copy.deepcopy(c1), None))["idempotent-replayed"] == "true"


def test_http_api_cookies_field_scopes_keys(idem: Idempotency) -> None:
    handler, calls = counting(idem, credential_cookies=["session"])
    one, two = anonymous("apigw_http"), anonymous("apigw_http")
    one["cookies"] = ["session=one"]
    two["cookies"] = ["session=two"]
    handler(one, None)
    handler(two, None)
    assert calls == [1, 1]


def test_unverified_tokens_are_not_decoded(idem: Idempotency) -> None:
    """Two unsigned JWTs claiming the same ``sub``: the library never trusts their claims,
    so they are two callers (a forged token cannot join someone else's scope)."""

    def jwt(sig: str) -> str:
        part = base64.urlsafe_b64encode(json.dumps({"sub": "alice"}).encode()).decode()
        return f"eyJhbGciOiJub25lIn0.{part}.{sig}"

    handler, calls = counting(idem)
    handler(set_header(anonymous("apigw_http"), "Authorization", f"Bearer {jwt('a')}"), None)
    handler(set_header(anonymous("apigw_http"), "Authorization", f"Bearer {jwt('b')}"), None)
    assert calls == [1, 1]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("apigw_rest", ("authorizer", "claims", "sub")),
        ("apigw_rest", ("authorizer", "principalId")),
        ("apigw_rest", ("identity", "userArn")),
        ("apigw_http", ("authorizer", "jwt", "claims", "sub")),
        ("apigw_http", ("authorizer", "lambda", "principalId")),
        ("apigw_http", ("authorizer", "iam", "userArn")),
        ("function_url", ("authorizer", "iam", "userArn")),
    ],
)
def test_authorizer_principals_scope_keys(
    idem: Idempotency, name: str, path: tuple[str, ...]
) -> None:
    def with_principal(who: str, token: str) -> dict[str, Any]:
        event = anonymous(name)
        node = event["requestContext"]
        for step in path[:-1]:
            node = node.setdefault(step, {})
        node[path[-1]] = who
        return set_header(event, "Authorization", token)

    handler, calls = counting(idem)
    handler(with_principal("alice", "t1"), None)
    handler(with_principal("bob", "t1"), None)  # another principal: runs
    assert calls == [1, 1]
    # alice again, with a refreshed token: the verified principal is the scope, so replay
    again = handler(with_principal("alice", "t2"), None)
    assert headers_of(again)["idempotent-replayed"] == "true"
    assert calls == [1, 1]


def test_principal_order_and_sources() -> None:
    rest = anonymous("apigw_rest")
    rc = rest["requestContext"]
    assert principal(Source.API_GATEWAY_REST, rest) is None
    rc["identity"] = {"cognitoIdentityId": "us-east-1:pool-id", "caller": None}
    assert principal(Source.API_GATEWAY_REST, rest) == "us-east-1:pool-id"
    rc["identity"]["caller"] = "AROAEXAMPLE:session"
    assert principal(Source.API_GATEWAY_REST, rest) == "AROAEXAMPLE:session"
    rc["identity"]["userArn"] = "arn:aws:iam::123456789012:user/alice"
    assert principal(Source.API_GATEWAY_REST, rest) == "arn:aws:iam::123456789012:user/alice"
    rc["authorizer"] = {"principalId": "user|a1", "integrationLatency": 3}
    assert principal(Source.API_GATEWAY_REST, rest) == "user|a1"
    rc["authorizer"]["claims"] = {"sub": "cognito-sub"}
    assert principal(Source.API_GATEWAY_REST, rest) == "cognito-sub"

    http = anonymous("apigw_http")
    auth: dict[str, Any] = {"iam": {"callerId": "AIDA1", "userId": "U"}}
    http["requestContext"]["authorizer"] = auth
    assert principal(Source.API_GATEWAY_HTTP, http) == "AIDA1"
    auth["lambda"] = {"principalId": "tenant-7"}
    assert principal(Source.API_GATEWAY_HTTP, http) == "tenant-7"
    auth["jwt"] = {"claims": {"sub": "jwt-sub"}, "scopes": None}
    assert principal(Source.API_GATEWAY_HTTP, http) == "jwt-sub"
    assert principal(Source.ALB, load("alb")) is None


def test_authorizer_context_without_principal_is_hashed() -> None:
    def with_context(source: Source, name: str, context: dict[str, Any]) -> str | None:
        event = anonymous(name)
        if source is Source.API_GATEWAY_REST:
            event["requestContext"]["authorizer"] = context
        else:
            event["requestContext"]["authorizer"] = {"lambda": context}
        return principal(source, event)

    for source, name in [
        (Source.API_GATEWAY_REST, "apigw_rest"),
        (Source.API_GATEWAY_HTTP, "apigw_http"),
    ]:
        a = with_context(source, name, {"tenant": "a", "integrationLatency": 1})
        a_later = with_context(source, name, {"tenant": "a", "integrationLatency": 9})
        b = with_context(source, name, {"tenant": "b", "integrationLatency": 1})
        assert a is not None
        assert a.startswith("authorizer-context:")
        assert "tenant" not in a
        assert a != b
        if source is Source.API_GATEWAY_REST:  # integrationLatency changes per request
            assert a == a_later


def test_lambda_authorizer_context_scopes_keys(idem: Idempotency) -> None:
    handler, calls = counting(idem)
    for tenant in ("acme", "globex"):
        event = anonymous("apigw_http")
        event["requestContext"]["authorizer"] = {"lambda": {"tenant": tenant}}
        handler(event, None)
    assert calls == [1, 1]


@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_no_credential_and_no_principal_is_unscoped(idem: Idempotency, name: str) -> None:
    handler, calls = counting(idem)
    handler(anonymous(name), None)
    assert headers_of(handler(anonymous(name), None))["idempotent-replayed"] == "true"
    assert calls == [1]


# -- 2. REST replays keep the handler's header shape --------------------------------------
@pytest.mark.parametrize("shape", ["headers", "multiValueHeaders"])
def test_rest_replay_keeps_the_header_shape(idem: Idempotency, shape: str) -> None:
    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return ok(1, shape)

    first = handler(load("apigw_rest"), None)
    again = handler(load("apigw_rest"), None)
    assert set(first) == {"statusCode", "body", shape}
    other = "headers" if shape == "multiValueHeaders" else "multiValueHeaders"
    assert shape in again
    assert other not in again
    assert headers_of(again)["x-order"] == "ord-1"
    assert headers_of(again)["idempotent-replayed"] == "true"
    assert "x-idempotence-proxy-headers" not in headers_of(again)


def test_rest_shape_survives_a_replay_header_allow_list(idem: Idempotency) -> None:
    @idem.handler(replay_headers=["content-type"])
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return ok(1, "headers")

    handler(load("apigw_rest"), None)
    again = handler(load("apigw_rest"), None)
    assert again["headers"] == {"Content-Type": "application/json", "Idempotent-Replayed": "true"}


# -- 3. unreadable requests are 400 problems ----------------------------------------------
@pytest.mark.parametrize("name", HTTP_SAMPLES)
def test_key_from_a_non_json_body_is_a_400(idem: Idempotency, name: str) -> None:
    handler, calls = counting(idem, key="powertools_json(body).order_id")
    event = load(name)
    event["body"] = base64.b64encode(b"not json").decode() if event["isBase64Encoded"] else "<x/>"
    result = handler(event, FakeContext())
    assert is_problem(result, 400, "invalid-request")
    assert "not json" not in result["body"]
    assert "<x/>" not in result["body"]
    assert calls == []


def test_failing_key_function_is_a_400(idem: Idempotency) -> None:
    def key(event: dict[str, Any]) -> str:
        return str(json.loads(event["body"])["missing"])

    handler, calls = counting(idem, key=key)
    assert is_problem(handler(load("apigw_http"), None), 400, "invalid-request")
    assert calls == []


def _mutations() -> list[tuple[str, str, Any]]:
    return [
        ("apigw_rest", "multiValueHeaders", {"Idempotency-Key": "not-a-list"}),
        ("apigw_rest", "multiValueHeaders", ["a", "b"]),
        ("apigw_rest", "multiValueHeaders", {"X-N": [1]}),
        ("apigw_rest", "path", "/orders/\ud800"),
        ("apigw_rest", "multiValueQueryStringParameters", {"q": "v"}),
        ("apigw_http", "headers", {"idempotency-key": "k", "x-bad": "\udcff"}),
        ("apigw_http", "headers", "a string"),
        ("apigw_http", "rawPath", 42),
        ("apigw_http", "cookies", "session=x"),
        ("apigw_http", "rawQueryString", {"a": "b"}),
        ("apigw_http", "body", {"order_id": 1}),
        ("alb", "headers", {"idempotency-key": "k", "x-n": {"nested": True}}),
        ("alb", "body", "\ud83d"),
        ("function_url", "body", "%%% not base64 %%%"),
        ("function_url", "body", "bm90LWFzY2lp\u00e9"),
    ]


@pytest.mark.parametrize(("name", "field", "value"), _mutations())
def test_malformed_events_are_a_clean_400(
    idem: Idempotency, name: str, field: str, value: Any
) -> None:
    handler, calls = counting(idem)
    event = load(name)
    event[field] = value
    result = handler(event, None)
    assert is_problem(result, 400, "invalid-request")
    assert calls == []
    async_result = asyncio.run(_async_handler(idem)(copy.deepcopy(event), None))
    assert is_problem(async_result, 400, "invalid-request")


def _async_handler(idem: Idempotency) -> Any:
    @idem.handler
    async def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        raise AssertionError("must not run")

    return handler


def test_malformed_get_passes_through(idem: Idempotency) -> None:
    """Methods the header does not apply to are not read: the handler gets the event."""
    handler, calls = counting(idem)
    event = load("apigw_rest")
    event["httpMethod"] = "GET"
    event["multiValueHeaders"] = {"Accept": "text/html"}
    assert handler(event, None)["statusCode"] == 201
    assert calls == [1]


# -- 4. results that are not proxy responses; the handler's signature ---------------------
@pytest.mark.parametrize(
    "bad",
    [
        {"statusCode": "created"},
        {"statusCode": 201, "body": {"order_id": "ord-1"}},
        {"statusCode": 201, "headers": ["Content-Type"]},
        {"statusCode": 201, "body": "%%%", "isBase64Encoded": True},
        {"statusCode": 201, "body": "\ud800"},
        {"order": object()},
    ],
)
def test_unconvertible_result_completes_as_not_stored(idem: Idempotency, bad: Any) -> None:
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> Any:
        calls.append(1)
        return bad

    assert handler(load("apigw_http"), None) is bad  # the first caller gets it as it is
    again = handler(load("apigw_http"), None)
    assert is_problem(again, 500, "response-not-stored")
    assert calls == [1]  # never run twice


def test_sync_handler_returning_a_coroutine_releases_the_key(idem: Idempotency) -> None:
    async def work() -> dict[str, Any]:
        return ok(1)

    results: list[Any] = [work(), ok(2)]

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> Any:
        return results.pop(0)

    with pytest.raises(TypeError, match="awaitable"):
        handler(load("apigw_http"), None)
    assert json.loads(handler(load("apigw_http"), None)["body"]) == {"n": 2}
    results.append(work())
    with pytest.raises(TypeError, match="awaitable"):
        handler(load("sqs"), None)


def test_handler_must_take_event_and_context(idem: Idempotency) -> None:
    def one(event: Any) -> None: ...

    def three(event: Any, context: Any, extra: Any) -> None: ...

    def keyword_only(*, event: Any, context: Any) -> None: ...

    for fn in (one, three, keyword_only):
        with pytest.raises(TypeError, match=r"handler\(event, context\)"):
            idem.handler(fn)

    def fine(event: Any, context: Any = None, *rest: Any) -> None: ...

    def star(*args: Any) -> None: ...

    idem.handler(fine)
    idem.handler(star)
