"""HTTP idempotency (draft-ietf-httpapi-idempotency-key-header) for any transport.

- :class:`HTTPIdempotency`: the sans-I/O engine (header parsing, keys, fingerprints,
  replays, problem responses) shared by every adapter.
- :class:`IdempotencyMiddleware`: pure ASGI middleware (Starlette, FastAPI, Django ASGI...).
- :class:`WSGIIdempotencyMiddleware`: WSGI middleware (Flask, Django WSGI...).

See ``docs/http.md``.
"""

from __future__ import annotations

from ._asgi import IdempotencyMiddleware
from ._aws import event_principal
from ._core import (
    DEFAULT_CREDENTIAL_HEADERS,
    HOP_BY_HOP_HEADERS,
    NEVER_KEPT_STATUSES,
    PROBLEM_TYPES,
    REPLAYED_HEADER,
    HTTPIdempotency,
    HTTPRequest,
    HTTPResponse,
    parse_idempotency_key,
    problem,
    request_scope,
)
from ._wsgi import WSGIIdempotencyMiddleware

__all__ = [
    "DEFAULT_CREDENTIAL_HEADERS",
    "HOP_BY_HOP_HEADERS",
    "NEVER_KEPT_STATUSES",
    "PROBLEM_TYPES",
    "REPLAYED_HEADER",
    "HTTPIdempotency",
    "HTTPRequest",
    "HTTPResponse",
    "IdempotencyMiddleware",
    "WSGIIdempotencyMiddleware",
    "event_principal",
    "parse_idempotency_key",
    "problem",
    "request_scope",
]
