"""Shared test helpers.

Backends (Redis, PostgreSQL, DynamoDB via moto server) are real services. On a machine
without one, its tests skip with the reason; with ``CI=true`` a missing backend fails the
run instead, so CI can never pass by skipping a backend.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def backend_unavailable(reason: str) -> NoReturn:
    """Skip (developer machine) or fail (CI) because a backend service is not reachable."""
    if IN_CI:
        pytest.fail(f"backend unavailable in CI (a skip would hide it): {reason}", pytrace=False)
    pytest.skip(reason)
