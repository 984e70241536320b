"""Django: the ``Idempotency-Key`` header as a ``MIDDLEWARE`` entry, configured from settings.

::

    # settings.py
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "idempotence.http.django.IdempotencyMiddleware",   # after authentication
        ...,
    ]
    IDEMPOTENCE_HTTP = {
        "idempotency": "redis://cache:6379/0",   # an Idempotency, a Store, a URL, or None
        "required": True,                        # other keys: HTTPIdempotency's options
    }

The behaviour is that of :class:`~idempotence.http.HTTPIdempotency` (the same engine as
the ASGI and WSGI middleware): one execution per key, stored responses replayed with
``Idempotent-Replayed: true``, problem responses for refusals. The middleware works under
WSGI and ASGI (it is sync- and async-capable).

Keys are scoped to the caller: ``REMOTE_USER`` when the server authenticated the request,
else the authenticated Django user (``django-user:<pk>``) when ``AuthenticationMiddleware``
runs before this one, plus whatever the engine's default ``scope`` adds. Place it after
the authentication middleware, or pass a ``scope`` option.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .._errors import MissingDependencyError
from . import HTTPIdempotency, HTTPRequest, HTTPResponse

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.http import HttpRequest, HttpResponse, HttpResponseBase
except ImportError as exc:  # pragma: no cover - exercised only without Django
    raise MissingDependencyError(
        "'django' is not installed, and idempotence.http.django needs it: pip install django"
    ) from exc

__all__ = ["SETTING", "IdempotencyMiddleware", "engine_from_settings"]

SETTING = "IDEMPOTENCE_HTTP"
"""The Django setting read by :class:`IdempotencyMiddleware` (see :func:`engine_from_settings`)."""

_OPTIONS = frozenset(
    {
        "idempotency",
        "methods",
        "header",
        "required",
        "scope",
        "keep",
        "replay_headers",
        "replay_set_cookie",
        "max_body_bytes",
        "on_in_progress",
        "namespace",
    }
)


def engine_from_settings() -> HTTPIdempotency:
    """The :class:`~idempotence.http.HTTPIdempotency` described by ``settings.IDEMPOTENCE_HTTP``.

    The setting is a dict: ``"idempotency"`` (an :class:`~idempotence.Idempotency`, a store,
    a store URL, or absent for the default store from ``IDEMPOTENCE_STORE``) and any of
    :class:`~idempotence.http.HTTPIdempotency`'s options. It may also be an
    ``HTTPIdempotency`` itself. Raises ``ImproperlyConfigured`` for anything else or an
    unknown option name.
    """
    config = getattr(settings, SETTING, {})
    if isinstance(config, HTTPIdempotency):
        return config
    if not isinstance(config, dict):
        raise ImproperlyConfigured(
            f"settings.{SETTING} must be a dict of HTTPIdempotency options or an "
            f"HTTPIdempotency, not a {type(config).__name__}"
        )
    unknown = sorted(str(name) for name in set(config) - _OPTIONS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.{SETTING} has unknown options {unknown}; allowed: {sorted(_OPTIONS)}"
        )
    options = dict(config)
    idempotency = options.pop("idempotency", None)
    return HTTPIdempotency(idempotency, **options)


def _principal(request: HttpRequest, user: Any) -> str | None:
    remote = request.META.get("REMOTE_USER")
    if remote:
        return str(remote)
    if user is not None and getattr(user, "is_authenticated", False):
        return f"django-user:{user.pk}"
    return None


def _to_engine(request: HttpRequest, body: bytes, user: Any) -> HTTPRequest:
    return HTTPRequest(
        method=str(request.method).upper(),
        path=request.path,
        query=str(request.META.get("QUERY_STRING", "")),
        headers=[(str(k), str(v)) for k, v in request.headers.items()],
        body=body,
        principal=_principal(request, user),
    )


def _headers(response: HttpResponseBase) -> list[tuple[str, str]]:
    headers = [(str(k), str(v)) for k, v in response.items()]
    headers += [("Set-Cookie", morsel.OutputString()) for morsel in response.cookies.values()]
    return headers


def _from_django(response: HttpResponseBase) -> HTTPResponse:
    if getattr(response, "streaming", False):
        body = b"".join(response.streaming_content)
    else:
        body = response.content
    return HTTPResponse(response.status_code, _headers(response), body)


async def _afrom_django(response: HttpResponseBase) -> HTTPResponse:
    if getattr(response, "streaming", False) and getattr(response, "is_async", False):
        chunks = [chunk async for chunk in response.streaming_content]
        return HTTPResponse(response.status_code, _headers(response), b"".join(chunks))
    return _from_django(response)


def _to_django(response: HTTPResponse) -> HttpResponse:
    out = HttpResponse(content=response.body, status=response.status)
    del out["Content-Type"]  # only the stored headers
    for name, value in response.headers:
        if name.lower() == "set-cookie":
            out.cookies.load(value)
        elif name in out:
            out[name] = f"{out[name]}, {value}"
        else:
            out[name] = value
    return out


class IdempotencyMiddleware:
    """Django middleware implementing draft-ietf-httpapi-idempotency-key-header.

    Add ``"idempotence.http.django.IdempotencyMiddleware"`` to ``MIDDLEWARE`` (after
    ``AuthenticationMiddleware``) and configure it with ``settings.IDEMPOTENCE_HTTP`` (see
    :func:`engine_from_settings`); the engine is built once, when Django loads the
    middleware. Methods outside ``methods`` and requests without the header (unless
    ``required``) go to the view untouched. For the others the whole response is buffered
    (streaming responses arrive in one piece) and kept for replay; refusals are
    ``application/problem+json`` responses (400, 409, 422, 500, 503). An exception in the
    view becomes Django's error response inside ``get_response``; a 5xx is not kept, so a
    retry runs again.
    """

    sync_capable = True
    async_capable = True

    def __init__(
        self,
        get_response: Callable[[HttpRequest], HttpResponseBase]
        | Callable[[HttpRequest], Awaitable[HttpResponseBase]],
        engine: HTTPIdempotency | None = None,
    ) -> None:
        self.get_response = get_response
        self.engine = engine if engine is not None else engine_from_settings()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def _handles(self, request: HttpRequest) -> bool:
        engine = self.engine
        if not engine.applies_to(str(request.method)):
            return False
        return engine.required or engine.header in request.headers

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        get_response: Callable[[HttpRequest], HttpResponseBase] = self.get_response
        if not self._handles(request):
            return get_response(request)
        incoming = _to_engine(request, request.body, getattr(request, "user", None))
        response = self.engine.run(incoming, lambda: _from_django(get_response(request)))
        return _to_django(response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        if not self._handles(request):
            return await get_response(request)
        auser = getattr(request, "auser", None)
        user = await auser() if auser is not None else None
        incoming = _to_engine(request, request.body, user)

        async def call() -> HTTPResponse:
            return await _afrom_django(await get_response(request))

        return _to_django(await self.engine.arun(incoming, call))
