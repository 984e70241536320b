"""Lock the public API of ``idempotence.http``."""

from __future__ import annotations

import idempotence.http


def test_exported_members() -> None:
    assert sorted(idempotence.http.__all__) == [
        "DEFAULT_CREDENTIAL_HEADERS",
        "HOP_BY_HOP_HEADERS",
        "HTTPIdempotency",
        "HTTPRequest",
        "HTTPResponse",
        "IdempotencyMiddleware",
        "NEVER_KEPT_STATUSES",
        "PROBLEM_TYPES",
        "REPLAYED_HEADER",
        "WSGIIdempotencyMiddleware",
        "event_principal",
        "parse_idempotency_key",
        "problem",
        "request_scope",
    ]
    for name in idempotence.http.__all__:
        assert getattr(idempotence.http, name) is not None
