"""What the ASGI and WSGI middleware share: building the engine from their options.

Twin kept: :class:`MiddlewareBase`'s option list repeats :class:`HTTPIdempotency`'s
signature on purpose: both are documented signatures with their defaults, and the shared
alternative (``**options: Unpack[TypedDict]``) needs ``typing_extensions`` on Python 3.10
(the core depends on ``jmespath`` only) and would show no defaults in the API reference. The
engine is built in one place (``HTTPIdempotency(idempotency, **options)``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, Generic, Literal, TypeVar

from ..base import IdempotencyBase
from ..stores import Store
from ._core import DEFAULT_CREDENTIAL_HEADERS, HTTPIdempotency, HTTPRequest, HTTPResponse

AppT = TypeVar("AppT")


class MiddlewareBase(Generic[AppT]):
    """Holds the wrapped ``app`` and the :class:`HTTPIdempotency` engine.

    ``idempotency`` is an :class:`HTTPIdempotency` (used as is; then pass no other option),
    or what :class:`HTTPIdempotency` accepts (an ``Idempotency``, a store, a store URL or
    ``None``) together with its options.
    """

    def __init__(
        self,
        app: AppT,
        idempotency: HTTPIdempotency | IdempotencyBase | Store | str | None = None,
        *,
        methods: Collection[str] = ("POST", "PATCH"),
        header: str = "Idempotency-Key",
        required: bool = False,
        scope: Callable[[HTTPRequest], str | None] | None = None,
        keep: Callable[[HTTPResponse], bool] | None = None,
        replay_headers: Literal["all"] | Collection[str] = "all",
        replay_set_cookie: bool = False,
        max_body_bytes: int = 1024 * 1024,
        on_in_progress: Literal["raise", "wait"] | None = None,
        namespace: str = "http",
        credential_headers: Collection[str] = DEFAULT_CREDENTIAL_HEADERS,
        credential_cookies: Collection[str] = (),
        scope_secret: bytes | str | None = None,
        retry_after: float = 1,
        max_request_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.app = app
        options: dict[str, Any] = {
            "methods": methods,
            "header": header,
            "required": required,
            "scope": scope,
            "keep": keep,
            "replay_headers": replay_headers,
            "replay_set_cookie": replay_set_cookie,
            "max_body_bytes": max_body_bytes,
            "on_in_progress": on_in_progress,
            "namespace": namespace,
            "credential_headers": credential_headers,
            "credential_cookies": credential_cookies,
            "scope_secret": scope_secret,
            "retry_after": retry_after,
            "max_request_bytes": max_request_bytes,
        }
        if isinstance(idempotency, HTTPIdempotency):
            defaults = MiddlewareBase.__init__.__kwdefaults__ or {}
            changed = sorted(k for k, v in options.items() if v != defaults.get(k))
            if changed:
                raise TypeError(
                    f"options {changed} given together with an HTTPIdempotency; set them on "
                    "the HTTPIdempotency instead"
                )
            self.engine = idempotency
        else:
            self.engine = HTTPIdempotency(idempotency, **options)
