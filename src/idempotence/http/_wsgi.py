"""WSGI middleware: ``Idempotency-Key`` for Flask, Django or any WSGI app."""

from __future__ import annotations

import http
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ._base import MiddlewareBase
from ._core import HTTPRequest, HTTPResponse, _Streamed

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


_CHUNK = 64 * 1024


def _read_body(environ: Environ, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is larger than ``limit`` bytes: a declared
    ``CONTENT_LENGTH`` over the limit is not read at all, a terminated (chunked) input is
    read only until it passes the limit."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        return None
    if length > 0:
        return bytes(stream.read(length))
    if environ.get("wsgi.input_terminated"):
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = bytes(stream.read(_CHUNK))
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
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
    others the request body is read (the app gets it back as ``wsgi.input``; a body over
    ``max_request_bytes`` gets 413: a larger ``CONTENT_LENGTH`` is not read at all, a
    chunked body only up to the limit) and the response is buffered before it is returned
    (a response is replayable only if kept whole). Past ``max_body_bytes`` the response is
    streamed instead (the buffered part, then the rest of the app's iterable) and its key
    completes as "not replayable". The status line keeps the code; its reason phrase is
    the standard one. ``request.principal`` is ``REMOTE_USER`` (set by the server's
    authentication), else ``None``; the default scope then falls back to the request's
    credentials (see :func:`~idempotence.http.request_scope`).
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

        body = _read_body(environ, engine.max_request_bytes)
        if body is None:
            return _respond(start_response, engine.too_large())
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
            parts: list[bytes] = []

            def capture(
                status: str, response_headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Callable[[bytes], object]:
                captured[:] = [(status, list(response_headers))]
                return parts.append

            result = self.app(inner, capture)
            iterator = iter(result)
            size = 0
            try:
                for chunk in iterator:
                    parts.append(chunk)
                    size += len(chunk)
                    if size > engine.max_body_bytes:  # too large to keep: stream the rest
                        rest.append(_Rest(parts, iterator, result))
                        break
            finally:
                if not rest:
                    _close(result)
            if not captured:
                raise RuntimeError("the WSGI app returned without calling start_response")
            status, response_headers = captured[0]
            code = int(status.split(" ", 1)[0])
            if rest:
                return _Streamed(code, response_headers, b"")
            return HTTPResponse(code, response_headers, b"".join(parts))

        captured: list[tuple[str, list[tuple[str, str]]]] = []
        rest: list[Iterable[bytes]] = []
        try:
            response = engine.run(request, call)
        except BaseException:
            for stream in rest:
                _close(stream)
            raise
        if isinstance(response, _Streamed):
            start_response(captured[0][0], captured[0][1])
            return rest[0]
        for stream in rest:  # pragma: no cover - a streamed response is always returned
            _close(stream)
        return _respond(start_response, response)


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _Rest:
    """The rest of a response too large to keep: the buffered parts, then the app's
    iterator; ``close()`` closes the app's iterable."""

    def __init__(self, parts: list[bytes], iterator: Iterator[bytes], result: object) -> None:
        self.parts, self.iterator, self.result = list(parts), iterator, result
        parts.clear()

    def __iter__(self) -> Iterator[bytes]:
        yield b"".join(self.parts)
        self.parts = []
        yield from self.iterator

    def close(self) -> None:
        _close(self.result)


def _respond(start_response: StartResponse, response: HTTPResponse) -> Iterable[bytes]:
    start_response(_status_line(response.status), list(response.headers))
    return [response.body]
