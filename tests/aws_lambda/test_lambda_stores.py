"""The Lambda adapters' store-touching guarantees on every backend (memory, SQLite,
Redis, PostgreSQL, MariaDB, DynamoDB on moto): callers never share a key, an unconvertible result
completes as not stored, an awaitable from a sync record handler releases its claim."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency
from idempotence.stores import Store
from tests import moto_server
from tests.aws_lambda.events import FakeContext, load
from tests.aws_lambda.test_lambda_http import anonymous, headers_of, is_problem, set_header
from tests.http.conftest import BACKENDS, make_store, mysql_admin, postgres_admin, redis_ok

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture
__all__ = ["dynamodb_endpoint", "mysql_admin", "postgres_admin", "redis_ok"]  # fixtures by name


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made = make_store(request.param, request, tmp_path)
    yield made
    made.close()


def test_callers_never_share_a_key(store: Store) -> None:
    idem = Idempotency(store)
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return {"statusCode": 201, "headers": {"X-N": str(len(calls))}, "body": "{}"}

    alice = set_header(anonymous("apigw_http"), "Authorization", "Bearer a")
    bob = set_header(anonymous("apigw_http"), "Authorization", "Bearer b")
    handler(alice, FakeContext())
    assert "idempotent-replayed" not in headers_of(handler(bob, FakeContext()))
    assert headers_of(handler(alice, FakeContext()))["x-n"] == "1"
    rest = load("apigw_rest")  # authorizer principal "user|a1b2c3d4"
    handler(rest, FakeContext())
    rest["requestContext"]["authorizer"]["principalId"] = "user|other"
    assert "idempotent-replayed" not in headers_of(handler(rest, FakeContext()))
    assert calls == [1, 1, 1, 1]


def test_unconvertible_result_is_not_run_twice(store: Store) -> None:
    idem = Idempotency(store)
    calls: list[int] = []

    @idem.handler
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        calls.append(1)
        return {"statusCode": 201, "body": {"not": "a string"}}

    handler(load("apigw_rest"), FakeContext())
    again = handler(load("apigw_rest"), FakeContext())
    assert is_problem(again, 500, "response-not-stored")
    assert calls == [1]


def test_awaitable_record_result_releases_the_claim(store: Store) -> None:
    idem = Idempotency(store)

    async def later() -> None: ...

    def broken(record: dict[str, Any]) -> Any:
        return later()

    with pytest.raises(TypeError, match="awaitable"):
        idem.process_batch(load("sqs"), broken, context=FakeContext(), namespace="charge")
    seen: list[str] = []

    def fixed(record: dict[str, Any]) -> None:
        seen.append(record["messageId"])

    response = idem.process_batch(load("sqs"), fixed, context=FakeContext(), namespace="charge")
    assert response == {"batchItemFailures": []}
    assert len(seen) == 2
