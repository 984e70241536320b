"""API Gateway (REST and HTTP APIs), ALB and function URL events as HTTP requests, and
proxy results as HTTP responses. Pure conversions for :mod:`idempotence.http`'s engine.

Request: method, path, query and headers from the event; the body base64-decoded when
``isBase64Encoded``; the principal from the authorizer (see :func:`principal`).
Response: a proxy result (``statusCode``, ``headers``/``multiValueHeaders``, ``cookies``,
``body``, ``isBase64Encoded``) to :class:`~idempotence.http.HTTPResponse` and back, in the
format the event's source expects.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

from ..http import HTTPRequest, HTTPResponse
from ._detect import Source
from ._records import _get

__all__ = ["principal", "to_proxy_result", "to_request", "to_response"]


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def principal(source: Source, event: Any) -> str | None:
    """The authenticated caller, from the authorizer API Gateway or the function URL put in
    ``requestContext`` (never from client-sent headers):

    - REST API: ``authorizer.principalId`` (Lambda authorizer), else ``authorizer.claims.sub``
      (Cognito user pools);
    - HTTP API and function URLs: ``authorizer.jwt.claims.sub`` (JWT), else
      ``authorizer.lambda.principalId`` / ``.sub`` (Lambda authorizer), else
      ``authorizer.iam.userArn`` / ``.userId`` (IAM);
    - ALB: none (pass ``scope=`` if the app authenticates callers itself).
    """
    auth = _get(event, "requestContext", "authorizer")
    if not isinstance(auth, Mapping) or source is Source.ALB:
        return None
    candidates: tuple[tuple[str, ...], ...]
    if source is Source.API_GATEWAY_REST:
        candidates = (("principalId",), ("claims", "sub"))
    else:
        candidates = (
            ("jwt", "claims", "sub"),
            ("lambda", "principalId"),
            ("lambda", "sub"),
            ("iam", "userArn"),
            ("iam", "userId"),
        )
    for path in candidates:
        found = _text(_get(auth, *path))
        if found is not None:
            return found
    return None


def _headers(event: Any) -> list[tuple[str, str]]:
    multi = event.get("multiValueHeaders")
    if isinstance(multi, Mapping) and multi:
        return [(str(k), str(v)) for k, vs in multi.items() for v in (vs or ())]
    single = event.get("headers")
    if isinstance(single, Mapping):
        return [(str(k), str(v)) for k, v in single.items() if v is not None]
    return []


def _query(source: Source, event: Any) -> str:
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        return str(event.get("rawQueryString") or "")
    multi = event.get("multiValueQueryStringParameters")
    pairs: list[tuple[str, str]]
    if isinstance(multi, Mapping) and multi:
        pairs = [(str(k), str(v)) for k, vs in multi.items() for v in (vs or ())]
    else:
        single = event.get("queryStringParameters")
        pairs = [(str(k), str(v)) for k, v in (single or {}).items()]
    # ALB passes query parameters as sent (percent-encoded); API Gateway decodes them.
    quote_via = (lambda s, *_: s) if source is Source.ALB else quote
    return urlencode(sorted(pairs), quote_via=quote_via)


def _body(event: Any) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(str(body), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"isBase64Encoded is set but the body is not base64: {exc}") from exc
    return str(body).encode("utf-8")


def to_request(source: Source, event: Any, scope: str | None = None) -> HTTPRequest:
    """The :class:`HTTPRequest` of a proxy event; ``principal`` is ``scope`` when given,
    else the authorizer's principal (:func:`principal`)."""
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        method = str(_get(event, "requestContext", "http", "method") or "")
        path = str(event.get("rawPath") or _get(event, "requestContext", "http", "path") or "/")
        headers = _headers(event)
        cookies = event.get("cookies")
        if isinstance(cookies, list) and cookies:
            headers.append(("cookie", "; ".join(str(c) for c in cookies)))
    else:
        method = str(event.get("httpMethod") or "")
        path = str(event.get("path") or "/")
        headers = _headers(event)
    return HTTPRequest(
        method=method.upper(),
        path=path,
        query=_query(source, event),
        headers=headers,
        body=_body(event),
        principal=scope if scope is not None else principal(source, event),
    )


def to_response(result: Any) -> HTTPResponse:
    """The :class:`HTTPResponse` of a handler's proxy result. A result without
    ``statusCode`` is answered as HTTP APIs do: 200, ``application/json``, the result as
    JSON (a string as it is)."""
    if not isinstance(result, Mapping) or "statusCode" not in result:
        text = result if isinstance(result, str) else json.dumps(result)
        return HTTPResponse(200, [("content-type", "application/json")], text.encode("utf-8"))
    headers: list[tuple[str, str]] = []
    multi = result.get("multiValueHeaders") or {}
    for name, value in (result.get("headers") or {}).items():
        if name not in multi:
            headers.append((str(name), str(value)))
    for name, values in multi.items():
        headers.extend((str(name), str(v)) for v in values or ())
    headers.extend(("set-cookie", str(c)) for c in result.get("cookies") or ())
    raw = result.get("body")
    body: bytes
    if raw is None:
        body = b""
    elif result.get("isBase64Encoded"):
        body = base64.b64decode(str(raw))
    else:
        body = str(raw).encode("utf-8")
    return HTTPResponse(int(result["statusCode"]), headers, body)


def to_proxy_result(source: Source, response: HTTPResponse, event: Any) -> dict[str, Any]:
    """``response`` as the proxy result ``source`` expects: REST APIs get
    ``multiValueHeaders``; HTTP APIs and function URLs ``headers`` (repeated names joined
    with ``,``) and ``cookies``; ALB ``multiValueHeaders`` when the target group sends them
    (the event has them), else ``headers``, plus ``statusDescription``. A body that is not
    UTF-8 is base64-encoded."""
    try:
        body, b64 = response.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, b64 = base64.b64encode(response.body).decode("ascii"), True
    out: dict[str, Any] = {"statusCode": response.status}
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        joined: dict[str, str] = {}
        cookies = []
        for name, value in response.headers:
            if name.lower() == "set-cookie":
                cookies.append(value)
            elif name in joined:
                joined[name] = f"{joined[name]},{value}"
            else:
                joined[name] = value
        out["headers"] = joined
        if cookies:
            out["cookies"] = cookies
    elif source is Source.API_GATEWAY_REST or "multiValueHeaders" in event:
        multi: dict[str, list[str]] = {}
        for name, value in response.headers:
            multi.setdefault(name, []).append(value)
        out["multiValueHeaders"] = multi
    else:
        out["headers"] = dict(response.headers)
    if source is Source.ALB:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        out["statusDescription"] = f"{response.status} {phrase}".strip()
    out["body"] = body
    out["isBase64Encoded"] = b64
    return out
