"""Pure ASGI middleware: ``Idempotency-Key`` for Starlette, FastAPI or any ASGI app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._aws import event_principal
from ._base import MiddlewareBase
from ._core import HTTPRequest, HTTPResponse, _Streamed

__all__ = ["IdempotencyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type scope/messages as dict, Mapping or MutableMapping.
ASGIApp = Callable[..., Awaitable[None]]

# Extensions that let an app hand the body to the server without going through ``send``.
_BYPASS_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy")


def _user(scope: Scope) -> str | None:
    """The identity of an authenticated ``scope["user"]`` (Starlette's
    ``AuthenticationMiddleware`` and compatibles: ``is_authenticated``, then ``identity``,
    else ``display_name``); ``None`` when there is none or it is not authenticated."""
    user = scope.get("user")
    if user is None:
        return None
    try:
        if getattr(user, "is_authenticated", False) is not True:
            return None
    except Exception:  # a user object that cannot tell: not a verified principal
        return None
    for attribute in ("identity", "display_name"):
        try:
            name = getattr(user, attribute, None)
        except Exception:  # NotImplementedError on a BaseUser without it
            continue
        if isinstance(name, str) and name:
            return name
    return None


def _principal(scope: Scope) -> str | None:
    """The verified caller: an authenticated ``scope["user"]`` (see :func:`_user`), else
    the API Gateway authorizer identity when the app runs behind Mangum
    (``scope["aws.event"]``), as the Lambda adapter reads it
    (:func:`~idempotence.http.event_principal`); else ``None``."""
    user = _user(scope)
    if user is not None:
        return user
    event = scope.get("aws.event")
    if not isinstance(event, dict):
        return None
    return event_principal(event)


class IdempotencyMiddleware(MiddlewareBase[ASGIApp]):
    """ASGI middleware implementing draft-ietf-httpapi-idempotency-key-header.

    ::

        app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(url), required=True)

    Options: see :class:`~idempotence.http.HTTPIdempotency`. Lifespan and websocket scopes,
    methods outside ``methods``, and requests without the header (unless ``required``) go
    to the app untouched and streamed. For the others the middleware buffers the request
    body (and hands it to the app unchanged; a body over ``max_request_bytes`` gets 413
    as soon as its ``Content-Length`` or the bytes received say so, and the rest is not
    read), and **buffers the response** before sending it: a response is only replayable
    if it was kept whole, and it can only be kept after the app finished. Streaming
    responses (server-sent events, downloads) on idempotent routes are therefore delivered
    in one piece - up to ``max_body_bytes``: past that the buffered part and the rest are
    streamed to the client and the key completes as "not replayable".
    ``request.principal`` is the authenticated ``scope["user"]`` (Starlette's
    ``AuthenticationMiddleware``, which must run before this middleware), else the API
    Gateway authorizer's identity when the app runs behind Mangum, else ``None``; the
    default scope then falls back to the request's credentials (see
    :func:`~idempotence.http.request_scope`). State is per request (inside ``__call__``);
    the middleware is stateless.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        engine = self.engine
        if scope["type"] != "http" or not engine.applies_to(scope["method"]):
            await self.app(scope, receive, send)
            return
        header = engine.header.lower().encode("latin-1")
        if not engine.required and not any(k.lower() == header for k, _ in scope["headers"]):
            await self.app(scope, receive, send)
            return

        limit = engine.max_request_bytes
        if _declared_length(scope) > limit:
            await _send(send, engine.too_large())  # the body is not read
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to run
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # a chunked body past the limit: stop receiving
                await _send(send, engine.too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        request = HTTPRequest(
            method=scope["method"].upper(),
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=body,
            principal=_principal(scope),
        )
        inner_scope = dict(scope)
        extensions = scope.get("extensions")
        if extensions:
            inner_scope["extensions"] = {
                k: v for k, v in extensions.items() if k not in _BYPASS_EXTENSIONS
            }

        async def call() -> HTTPResponse:
            delivered = False

            async def replay_receive() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            status: int | None = None
            start: Message | None = None
            headers: list[tuple[str, str]] = []
            parts: list[bytes] = []
            size = 0
            complete = streaming = False
            limit = engine.max_body_bytes

            async def capture(message: Message) -> None:
                nonlocal status, start, headers, size, complete, streaming
                kind = message["type"]
                if kind == "http.response.start":
                    start = message
                    status = int(message["status"])
                    headers = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in message.get("headers", [])
                    ]
                elif kind == "http.response.body":
                    more = bool(message.get("more_body", False))
                    if not more:
                        complete = True
                    if streaming:
                        await send(message)
                        return
                    chunk = message.get("body", b"")
                    parts.append(chunk)
                    size += len(chunk)
                    if size > limit and start is not None:
                        # Too large to keep: stop buffering, stream it; never replayable.
                        streaming = True
                        await send(start)
                        buffered = b"".join(parts)
                        parts.clear()
                        await send({"type": kind, "body": buffered, "more_body": more})

            await self.app(inner_scope, replay_receive, capture)
            if status is None or not complete:
                raise RuntimeError("the ASGI app returned without sending a complete response")
            if streaming:
                return _Streamed(status, headers, b"")
            return HTTPResponse(status, headers, b"".join(parts))

        response = await engine.arun(request, call)
        if isinstance(response, _Streamed):
            return  # already sent
        await _send(send, response)


def _declared_length(scope: Scope) -> int:
    """The request's ``Content-Length`` (``-1`` when absent or unreadable)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


async def _send(send: Send, response: HTTPResponse) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    await send({"type": "http.response.start", "status": response.status, "headers": raw})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
