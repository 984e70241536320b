"""Redis Streams fixtures: db 13, flushed around each test that uses it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import redis_client_or_unavailable

#: The consumer tests' own database (streams and records): flushed before and after each test.
STREAMS_URL = os.environ.get("IDEMPOTENCE_TEST_STREAMS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def rds() -> Iterator[Any]:
    client = redis_client_or_unavailable(STREAMS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
