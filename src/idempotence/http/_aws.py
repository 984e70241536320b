"""The verified caller of an AWS proxy event (API Gateway REST and HTTP APIs, function
URLs, ALB): what the Lambda adapter and the ASGI middleware behind Mangum
(``scope["aws.event"]``) scope keys by. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._keys import digest

__all__ = ["event_principal"]


def _get(value: Any, *path: str) -> Any:
    """``value[path[0]][path[1]]...``, or ``None`` where a step is missing or no mapping."""
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _authorizer_context(context: Any, drop: Iterable[str] = ()) -> str | None:
    """``"authorizer-context:<digest>"`` of a verified authorizer context without a
    principal, or ``None`` when it is empty (or cannot be canonicalised)."""
    if not isinstance(context, Mapping):
        return None
    dropped = set(drop)
    kept = {k: v for k, v in context.items() if k not in dropped}
    if not kept:
        return None
    try:
        return f"authorizer-context:{digest(kept)}"
    except ValueError:  # InvalidKeyError: not JSON-representable; no scope from it
        return None


def event_principal(event: Any, *, rest: bool | None = None) -> str | None:
    """The authenticated caller, from what API Gateway or the function URL verified and put
    in ``requestContext`` (never from client-sent headers, never by decoding a token).
    First match wins:

    1. Cognito / JWT ``sub``: REST ``authorizer.claims.sub``; HTTP API and function URLs
       ``authorizer.jwt.claims.sub``;
    2. Lambda authorizer principal: REST ``authorizer.principalId``; HTTP API
       ``authorizer.lambda.principalId`` (or ``.sub``);
    3. IAM: REST ``identity.userArn`` / ``identity.caller`` / ``identity.cognitoIdentityId``;
       HTTP API and function URLs ``authorizer.iam.userArn`` / ``.callerId`` / ``.userId``
       / ``.cognitoIdentity.identityId``;
    4. an authorizer context without any of these (a Lambda authorizer returning only a
       context, JWT claims without ``sub``): ``"authorizer-context:<digest>"``, the
       canonical hash of the whole context (REST: without ``integrationLatency``, which
       changes per request);
    5. ``None`` (ALB never has an authorizer).

    ``rest`` says whether the event is a REST API (payload format 1.0) event; ``None``
    tells it from the event's shape (``httpMethod`` outside a 2.0 event) and an ALB event
    (``requestContext.elb``) from an API Gateway one.
    """
    if rest is None:
        if isinstance(_get(event, "requestContext", "elb"), Mapping):
            return None
        version_2 = isinstance(event, Mapping) and event.get("version") == "2.0"
        http_2 = version_2 and isinstance(_get(event, "requestContext", "http"), Mapping)
        rest = not http_2 and isinstance(_get(event, "httpMethod"), str)
    auth = _get(event, "requestContext", "authorizer")
    if rest:
        candidates: tuple[tuple[Any, ...], ...] = (
            (auth, "claims", "sub"),
            (auth, "principalId"),
            (event, "requestContext", "identity", "userArn"),
            (event, "requestContext", "identity", "caller"),
            (event, "requestContext", "identity", "cognitoIdentityId"),
        )
    else:
        candidates = (
            (auth, "jwt", "claims", "sub"),
            (auth, "lambda", "principalId"),
            (auth, "lambda", "sub"),
            (auth, "iam", "userArn"),
            (auth, "iam", "callerId"),
            (auth, "iam", "userId"),
            (auth, "iam", "cognitoIdentity", "identityId"),
        )
    for root, *path in candidates:
        found = _text(_get(root, *path))
        if found is not None:
            return found
    if rest:
        return _authorizer_context(auth, ("integrationLatency", "principalId"))
    return _authorizer_context(_get(auth, "lambda")) or _authorizer_context(_get(auth, "jwt"))
