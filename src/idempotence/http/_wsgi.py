"""WSGI middleware: ``Idempotency-Key`` for Flask, Django or any WSGI app."""

from __future__ import annotations

import http
import io
from collections.abc import Callable, Iterable
from typing import Any

from ._base import MiddlewareBase
from ._core import HTTPRequest, HTTPResponse

__all__ = ["WSGIIdempotencyMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_UNPREFIXED = {"CONTENT_TYPE": "Content-Type", "CONTENT_LENGTH": "Content-Length"}


def _headers(environ: Environ) -> list[tuple[str, str]]:
    out = []
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            out.append((name[5:].replace("_", "-").title(), str(value)))
        elif name in _UNPREFIXED and value:
            out.append((_UNPREFIXED[name], str(value)))
    return out


def _read_body(environ: Environ) -> bytes:
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > 0:
        return bytes(stream.read(length))
    if environ.get("wsgi.input_terminated"):
        return bytes(stream.read())
    return b""


def _status_line(status: int) -> str:
    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Unknown"


class WSGIIdempotencyMiddleware(MiddlewareBase[WSGIApp]):
    """WSGI middleware implementing draft-ietf-httpapi-idempotency-key-header.

    ::

        app.wsgi_app = WSGIIdempotencyMiddleware(app.wsgi_app, Idempotency(url))

    Options: see :class:`~idempotence.http.HTTPIdempotency`. Methods outside ``methods`` and
    requests without the header (unless ``required``) go to the app untouched. For the
    others the request body is read (the app gets it back as ``wsgi.input``) and the whole
    response is buffered before it is returned (a response is replayable only if kept
    whole). The status line keeps the code; its reason phrase is the standard one.
    ``request.principal`` is ``REMOTE_USER`` (set by the server's authentication), else
    ``None``; pass ``scope=`` to key by another verified identity.
    """

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        engine = self.engine
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if not engine.applies_to(method):
            return self.app(environ, start_response)
        headers = _headers(environ)
        lname = engine.header.lower()
        if not engine.required and not any(k.lower() == lname for k, _ in headers):
            return self.app(environ, start_response)

        body = _read_body(environ)
        request = HTTPRequest(
            method=method,
            path=str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", "")),
            query=str(environ.get("QUERY_STRING", "")),
            headers=headers,
            body=body,
            principal=environ.get("REMOTE_USER") or None,
        )

        def call() -> HTTPResponse:
            inner = dict(environ)
            inner["wsgi.input"] = io.BytesIO(body)
            inner["CONTENT_LENGTH"] = str(len(body))
            captured: list[tuple[str, list[tuple[str, str]]]] = []
            parts: list[bytes] = []

            def capture(
                status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Callable[[bytes], object]:
                captured[:] = [(status, list(response_headers))]
                return parts.append

            result = self.app(inner, capture)
            try:
                parts.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            if not captured:
                raise RuntimeError("the WSGI app returned without calling start_response")
            status, response_headers = captured[0]
            return HTTPResponse(int(status.split(" ", 1)[0]), response_headers, b"".join(parts))

        response = engine.run(request, call)
        start_response(_status_line(response.status), list(response.headers))
        return [response.body]
