"""Fixtures of the Powertools compatibility tests: a moto DynamoDB table in Powertools'
layout (simple and composite key) and clients for it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests import moto_server

pytest.importorskip("boto3")
pytest.importorskip("aws_lambda_powertools")

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture

REGION = "us-east-1"


def make_client(endpoint: str) -> Any:
    import boto3

    return boto3.session.Session().client("dynamodb", region_name=REGION, endpoint_url=endpoint)


def _create(client: Any, keys: list[tuple[str, str]]) -> str:
    table = f"pt-{uuid.uuid4().hex[:12]}"
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": name, "KeyType": kind} for name, kind in keys],
        AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )
    return table


@pytest.fixture(scope="session")
def ddb(dynamodb_endpoint: str) -> Any:
    """A boto3 DynamoDB client on the moto server."""
    return make_client(dynamodb_endpoint)


@pytest.fixture(scope="session")
def pt_table(ddb: Any) -> str:
    """Powertools' default table: partition key ``id``."""
    return _create(ddb, [("id", "HASH")])


@pytest.fixture(scope="session")
def pt_composite_table(ddb: Any) -> str:
    """Powertools' composite-key table: ``pk`` + ``sk``."""
    return _create(ddb, [("pk", "HASH"), ("sk", "RANGE")])


@pytest.fixture
def function_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A unique AWS_LAMBDA_FUNCTION_NAME per test (keys never collide across tests)."""
    name = f"fn-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", name)
    return name


@pytest.fixture
def redis_client() -> Iterator[Any]:
    """A client on the test Redis (db 15); tests use keys unique to themselves."""
    from tests.conftest import REDIS_URL, redis_client_or_unavailable

    client = redis_client_or_unavailable(REDIS_URL)
    yield client
    client.close()
