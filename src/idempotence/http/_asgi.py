"""Pure ASGI middleware: ``Idempotency-Key`` for Starlette, FastAPI or any ASGI app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._base import MiddlewareBase
from ._core import HTTPRequest, HTTPResponse

__all__ = ["IdempotencyMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# Loose on purpose: frameworks type scope/messages as dict, Mapping or MutableMapping.
ASGIApp = Callable[..., Awaitable[None]]

# Extensions that let an app hand the body to the server without going through ``send``.
_BYPASS_EXTENSIONS = ("http.response.pathsend", "http.response.zerocopy")


def _principal(scope: Scope) -> str | None:
    """The API Gateway authorizer identity when the app runs behind Mangum
    (``scope["aws.event"]``), as the Lambda adapter reads it
    (:func:`idempotence.sources._http.principal`); else ``None``."""
    event = scope.get("aws.event")
    if not isinstance(event, dict):
        return None
    # Imported here: the Lambda sources import this package.
    from ..sources._detect import detect
    from ..sources._http import principal

    return principal(detect(event), event)


class IdempotencyMiddleware(MiddlewareBase[ASGIApp]):
    """ASGI middleware implementing draft-ietf-httpapi-idempotency-key-header.

    ::

        app.add_middleware(IdempotencyMiddleware, idempotency=Idempotency(url), required=True)

    Options: see :class:`~idempotence.http.HTTPIdempotency`. Lifespan and websocket scopes,
    methods outside ``methods``, and requests without the header (unless ``required``) go
    to the app untouched and streamed. For the others the middleware buffers the request
    body (and hands it to the app unchanged), and **buffers the whole response** before
    sending it: a response is only replayable if it was kept whole, and it can only be kept
    after the app finished. Streaming responses (server-sent events, large downloads) on
    idempotent routes are therefore delivered in one piece; keep them off those routes or
    out of ``methods``. ``request.principal`` is the API Gateway authorizer's identity when
    the app runs behind Mangum, else ``None``; pass ``scope=`` to key by another verified
    identity. State is per request (inside ``__call__``); the middleware is stateless.
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

        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before sending its body: nothing to run
            chunks.append(message.get("body", b""))
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
            headers: list[tuple[str, str]] = []
            parts: list[bytes] = []
            complete = False

            async def capture(message: Message) -> None:
                nonlocal status, headers, complete
                kind = message["type"]
                if kind == "http.response.start":
                    status = int(message["status"])
                    headers = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in message.get("headers", [])
                    ]
                elif kind == "http.response.body":
                    parts.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        complete = True

            await self.app(inner_scope, replay_receive, capture)
            if status is None or not complete:
                raise RuntimeError("the ASGI app returned without sending a complete response")
            return HTTPResponse(status, headers, b"".join(parts))

        response = await engine.arun(request, call)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
