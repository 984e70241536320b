"""API Gateway (REST and HTTP APIs), ALB and function URL events as HTTP requests, and
proxy results as HTTP responses. Pure conversions for :mod:`idempotence.http`'s engine.

Request: method, path, query and headers from the event; the body base64-decoded when
``isBase64Encoded``; the principal from the authorizer (see :func:`principal`). An event
that is not a well-formed proxy event (a header value that is not a string, a
``multiValueHeaders`` entry that is not a list, a body that is not base64 although
``isBase64Encoded``, text that is not valid Unicode) raises :class:`MalformedEventError`,
which the handler answers with a 400 problem.
Response: a proxy result (``statusCode``, ``headers``/``multiValueHeaders``, ``cookies``,
``body``, ``isBase64Encoded``) to :class:`~idempotence.http.HTTPResponse` and back, in the
format the event's source expects; a result that is not one raises ``TypeError`` or
``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

from ..http import HTTPRequest, HTTPResponse, event_principal
from ._sources import Source, _get

__all__ = [
    "SHAPE_HEADER",
    "MalformedEventError",
    "principal",
    "to_proxy_result",
    "to_request",
    "to_response",
]

#: Internal response header recording which header field (``headers`` or
#: ``multiValueHeaders``) a REST API handler returned, so its replays keep that shape.
#: Stored with the response, never sent to a client.
SHAPE_HEADER = "x-idempotence-proxy-headers"


class MalformedEventError(ValueError):
    """A proxy event that does not follow the documented format. The message names the
    field, never its value."""


def principal(source: Source, event: Any) -> str | None:
    """The authenticated caller of an HTTP ``event`` of ``source`` (see
    :func:`idempotence.http.event_principal`); ``None`` for ALB."""
    if source is Source.ALB:
        return None
    return event_principal(event, rest=source is Source.API_GATEWAY_REST)


def _checked(value: Any, what: str) -> str:
    """``value`` if it is a string of valid Unicode (no lone surrogates), else
    :class:`MalformedEventError`."""
    if not isinstance(value, str):
        raise MalformedEventError(f"{what} is not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedEventError(f"{what} is not valid Unicode") from None
    return value


def _pairs(event: Any, multi_field: str, single_field: str) -> list[tuple[str, str]]:
    """``(name, value)`` pairs of a ``multiValue...`` field (lists of strings) or, when it
    is absent or empty, of its single-valued twin (``None`` values skipped)."""
    multi = event.get(multi_field)
    if multi is not None and not isinstance(multi, Mapping):
        raise MalformedEventError(f"{multi_field} is not an object")
    if multi:
        out: list[tuple[str, str]] = []
        for name, values in multi.items():
            _checked(name, f"a {multi_field} name")
            if values is None:
                continue
            if not isinstance(values, list):
                raise MalformedEventError(f"a {multi_field} entry is not a list")
            out.extend((name, _checked(v, f"a {multi_field} value")) for v in values)
        return out
    single = event.get(single_field)
    if single is None:
        return []
    if not isinstance(single, Mapping):
        raise MalformedEventError(f"{single_field} is not an object")
    return [
        (_checked(k, f"a {single_field} name"), _checked(v, f"a {single_field} value"))
        for k, v in single.items()
        if v is not None
    ]


def _query(source: Source, event: Any) -> str:
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        raw = event.get("rawQueryString")
        return "" if raw is None else _checked(raw, "rawQueryString")
    pairs = _pairs(event, "multiValueQueryStringParameters", "queryStringParameters")
    # ALB passes query parameters as sent (percent-encoded); API Gateway decodes them.
    quote_via = (lambda s, *_: s) if source is Source.ALB else quote
    return urlencode(sorted(pairs), quote_via=quote_via)


def _body(event: Any) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    _checked(body, "body")
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedEventError("isBase64Encoded is set but the body is not base64") from None
    return str(body).encode("utf-8")


def method_of(source: Source, event: Any) -> str | None:
    """The request method of a proxy event, upper-cased, or ``None`` if it has none."""
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        method = _get(event, "requestContext", "http", "method")
    else:
        method = event.get("httpMethod") if isinstance(event, Mapping) else None
    return method.upper() if isinstance(method, str) and method.isascii() else None


def to_request(source: Source, event: Any, scope: str | None = None) -> HTTPRequest:
    """The :class:`HTTPRequest` of a proxy event; ``principal`` is ``scope`` when given,
    else the authorizer's principal (:func:`principal`). Raises
    :class:`MalformedEventError` for an event that is not a well-formed proxy event."""
    method = method_of(source, event)
    if method is None:
        raise MalformedEventError("the event has no ASCII request method")
    headers = _pairs(event, "multiValueHeaders", "headers")
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        path = event.get("rawPath") or _get(event, "requestContext", "http", "path") or "/"
        cookies = event.get("cookies")
        if cookies is not None and not isinstance(cookies, list):
            raise MalformedEventError("cookies is not a list")
        if cookies:
            headers.append(("cookie", "; ".join(_checked(c, "a cookie") for c in cookies)))
    else:
        path = event.get("path") or "/"
    return HTTPRequest(
        method=method,
        path=_checked(path, "the path"),
        query=_query(source, event),
        headers=headers,
        body=_body(event),
        principal=scope if scope is not None else principal(source, event),
    )


_SCALARS = (str, int, float, bool)


def _header_text(value: Any, what: str) -> str:
    if not isinstance(value, _SCALARS):
        raise TypeError(f"a {what} value is a {type(value).__name__}, not a string")
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        return _checked(text, f"a {what} value")
    except MalformedEventError as exc:
        raise ValueError(str(exc)) from None


def _field(result: Mapping[str, Any], name: str, kind: type) -> Any:
    value = result.get(name)
    if value is None:
        return {} if kind is Mapping else []
    if not isinstance(value, kind):
        raise TypeError(f"the result's {name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def shape_of(result: Any) -> str:
    """Which header field a proxy result uses: ``"multiValueHeaders"`` or ``"headers"``."""
    if isinstance(result, Mapping) and result.get("multiValueHeaders"):
        return "multiValueHeaders"
    return "headers"


def to_response(result: Any) -> HTTPResponse:
    """The :class:`HTTPResponse` of a handler's proxy result. A result without
    ``statusCode`` is answered as HTTP APIs do: 200, ``application/json``, the result as
    JSON (a string as it is). Raises ``TypeError`` / ``ValueError`` (naming the field,
    never its value) for a result that is not a proxy response: a ``statusCode`` that is
    not an HTTP status, headers that are not strings, a body that is not a string or not
    base64 although ``isBase64Encoded``, a value JSON cannot represent."""
    if not isinstance(result, Mapping) or "statusCode" not in result:
        if isinstance(result, str):
            text = result
        else:
            try:
                text = json.dumps(result, allow_nan=False)
            except (TypeError, ValueError, RecursionError) as exc:
                raise TypeError(
                    f"the handler's result cannot be sent as JSON ({type(exc).__name__})"
                ) from None
        return HTTPResponse(200, [("content-type", "application/json")], text.encode("utf-8"))
    status = result["statusCode"]
    if isinstance(status, str) and status.isascii() and status.isdigit():
        status = int(status)
    if type(status) is not int or not 100 <= status <= 599:
        raise ValueError("the result's statusCode is not an HTTP status code (100-599)")
    headers: list[tuple[str, str]] = []
    multi = _field(result, "multiValueHeaders", Mapping)
    for name, value in _field(result, "headers", Mapping).items():
        if name not in multi:
            headers.append((_header_text(name, "header name"), _header_text(value, "header")))
    for name, values in multi.items():
        if values is None:
            continue
        if not isinstance(values, list):
            raise TypeError("a multiValueHeaders entry of the result is not a list")
        name = _header_text(name, "header name")
        headers.extend((name, _header_text(v, "multiValueHeaders")) for v in values)
    headers.extend(
        ("set-cookie", _header_text(c, "cookie")) for c in _field(result, "cookies", list)
    )
    raw = result.get("body")
    body: bytes
    if raw is None:
        body = b""
    elif not isinstance(raw, str):
        raise TypeError(f"the result's body is a {type(raw).__name__}, not a string")
    elif result.get("isBase64Encoded"):
        try:
            body = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("isBase64Encoded is set but the result's body is not base64") from None
    else:
        body = raw.encode("utf-8")  # UnicodeEncodeError (a ValueError) on lone surrogates
    return HTTPResponse(status, headers, body)


def to_proxy_result(source: Source, response: HTTPResponse, event: Any) -> dict[str, Any]:
    """``response`` as the proxy result ``source`` expects: REST APIs get the header field
    the handler returned (recorded in :data:`SHAPE_HEADER`; ``multiValueHeaders`` when
    unknown, e.g. for problem responses); HTTP APIs and function URLs ``headers`` (repeated
    names joined with ``,``) and ``cookies``; ALB ``multiValueHeaders`` when the target
    group sends them (the event has them), else ``headers``, plus ``statusDescription``. A
    body that is not UTF-8 is base64-encoded."""
    try:
        body, b64 = response.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, b64 = base64.b64encode(response.body).decode("ascii"), True
    shape = response.header(SHAPE_HEADER)
    pairs = [(k, v) for k, v in response.headers if k.lower() != SHAPE_HEADER]
    out: dict[str, Any] = {"statusCode": response.status}
    if source in (Source.API_GATEWAY_HTTP, Source.FUNCTION_URL):
        joined: dict[str, str] = {}
        cookies = []
        for name, value in pairs:
            if name.lower() == "set-cookie":
                cookies.append(value)
            elif name in joined:
                joined[name] = f"{joined[name]},{value}"
            else:
                joined[name] = value
        out["headers"] = joined
        if cookies:
            out["cookies"] = cookies
    elif source is Source.API_GATEWAY_REST and shape == "headers":
        # Single values in ``headers`` as the handler returned them; a name repeated (e.g.
        # by a replay header) goes to ``multiValueHeaders``, which API Gateway merges.
        counts: dict[str, int] = {}
        for name, _ in pairs:
            counts[name] = counts.get(name, 0) + 1
        single = {name: value for name, value in pairs if counts[name] == 1}
        repeated: dict[str, list[str]] = {}
        for name, value in pairs:
            if counts[name] > 1:
                repeated.setdefault(name, []).append(value)
        out["headers"] = single
        if repeated:
            out["multiValueHeaders"] = repeated
    elif source is Source.API_GATEWAY_REST or "multiValueHeaders" in event:
        multi: dict[str, list[str]] = {}
        for name, value in pairs:
            multi.setdefault(name, []).append(value)
        out["multiValueHeaders"] = multi
    else:
        out["headers"] = dict(pairs)
    if source is Source.ALB:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = ""
        out["statusDescription"] = f"{response.status} {phrase}".strip()
    out["body"] = body
    out["isBase64Encoded"] = b64
    return out
