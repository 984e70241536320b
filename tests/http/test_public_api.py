"""Lock the public API of ``idempotence.http``."""

from __future__ import annotations

import idempotence.http


def test_exported_members() -> None:
    assert sorted(idempotence.http.__all__) == [
        "HOP_BY_HOP_HEADERS",
        "HTTPIdempotency",
        "HTTPRequest",
        "HTTPResponse",
        "IdempotencyMiddleware",
        "PROBLEM_TYPES",
        "REPLAYED_HEADER",
        "WSGIIdempotencyMiddleware",
        "parse_idempotency_key",
        "problem",
    ]
    for name in idempotence.http.__all__:
        assert getattr(idempotence.http, name) is not None
