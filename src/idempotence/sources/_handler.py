"""``@idem.handler``: idempotent AWS Lambda handlers, with keys chosen by the event source.

One decorated ``handler(event, context)`` (sync or ``async def``) per function. Each
invocation detects its event's source (:func:`~idempotence.sources.detect`) and:

- **HTTP** (API Gateway REST/HTTP APIs, ALB, function URLs): converts the event to an
  :class:`~idempotence.http.HTTPRequest` and delegates to
  :class:`~idempotence.http.HTTPIdempotency`, so the ``Idempotency-Key`` header, the
  fingerprint (method + path + query + body), principal scoping, the 400/409/422/503
  problem responses and ``Idempotent-Replayed: true`` replays are exactly the HTTP
  adapters'. Refusals come back as proxy results, never as exceptions.
- **Records and events** (SQS, SNS, S3, Kinesis, DynamoDB Streams, EventBridge): the key
  is the source's stable id (the ordered list of record ids for a batch), the fingerprint
  what the records say (:mod:`._records`); per-delivery fields never count.
- **Anything else**: the whole event is the key material, as for plain functions.

Lease: ``lease=`` if given, else the invocation's remaining time
(``context.get_remaining_time_in_millis()``) plus ``lease_margin`` seconds: the claim lives
exactly as long as the invocation can. Heartbeats are off by default (the lease already
covers the whole invocation).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from .._config import IdempotencyConfig
from .._idempotency import Idempotency, _Bound, _disabled
from .._keys import digest, is_missing
from .._protocol import Plan
from .._shells import run_async, run_sync
from ..http import HTTPIdempotency, HTTPRequest, HTTPResponse
from ..stores._base import Store
from ._common import DEFAULT_LEASE_MARGIN, lease_for, plan_of
from ._detect import HTTP_SOURCES, Source, detect
from ._http import to_proxy_result, to_request, to_response
from ._records import event_content, event_key_material

__all__ = ["Handler", "decorate_handler"]

Handler = typing.TypeVar("Handler", bound=Callable[..., Any])

_HTTP_OPTIONS = frozenset(
    {"methods", "header", "keep", "replay_headers", "replay_set_cookie", "max_body_bytes"}
)


class _Configured(Idempotency):
    """``parent``'s store with the handler's own options."""

    def __init__(self, parent: Idempotency, config: IdempotencyConfig) -> None:
        self._parent = parent
        self.config = config

    @property
    def store(self) -> Store:
        return self._parent.store


class _Handler:
    """Per decorated handler: options, selectors and the HTTP engine. Decides, runs no I/O
    except through the shells."""

    def __init__(self, idem: Idempotency, fn: Callable[..., Any], options: dict[str, Any]):
        options = dict(options)
        self.lease_margin = float(options.pop("lease_margin", DEFAULT_LEASE_MARGIN))
        required: bool | None = options.pop("required", None)
        http_options = {k: options.pop(k) for k in list(options) if k in _HTTP_OPTIONS}
        options.setdefault("heartbeat", False)
        options["payload"] = None
        self.fixed_lease = "lease" in options
        config = idem.config.replace(**options)
        if required is not None:
            config = config.replace(required=required)
        self.idem = idem
        self.fn = fn
        self.bound: _Bound[Any, Any] = _Bound(
            fn, config, idem.namespace_for(fn, options.get("namespace"))
        )
        self.config = config
        self.http = HTTPIdempotency(
            _Configured(idem, config),
            required=bool(required),
            namespace=self.bound.namespace,
            **http_options,
        )

    def lease(self, context: Any) -> float:
        fixed = self.config.lease_s if self.fixed_lease else None
        return lease_for(context, fixed, self.config.lease_s, self.lease_margin)

    # -- HTTP -----------------------------------------------------------------------------
    def request(self, source: Source, event: Any) -> HTTPRequest:
        scope = self.config.scope
        if callable(scope):
            scope = scope(event)
        request = to_request(source, event, scope)
        if self.bound.key_select is None:
            return request
        # key= replaces the client's header: the engine reads the derived key instead, from
        # the header it is configured to read (``header=``).
        name = self.http.header
        headers = [(k, v) for k, v in request.headers if k.lower() != name.lower()]
        material = self.bound.key_select(event)
        if not is_missing(material):
            headers.append((name, digest([self.bound.key_spec, material])))
        return dataclasses.replace(request, headers=headers)

    # -- other sources --------------------------------------------------------------------
    def plan(self, source: Source, event: Any, context: Any) -> Plan | None:
        """The plan of a non-HTTP invocation; ``None`` runs it without idempotency."""
        return plan_of(
            self.bound,
            self.idem.store,
            source,
            event,
            lambda: self.lease(context),
            material_of=event_key_material,
            content_of=event_content,
            missing=lambda material: (
                f"no idempotency key in this event for {self.fn.__qualname__}: key="
                f"{self.bound.key_spec!r} selected {material!r}"
            ),
        )

    def passthrough(self) -> bool:
        if not _disabled():
            return False
        warnings.warn(
            f"IDEMPOTENCE_DISABLED is set: {self.fn.__qualname__} runs without idempotency",
            RuntimeWarning,
            stacklevel=4,
        )
        return True


def _result(
    first: list[tuple[HTTPResponse, Any]], response: HTTPResponse, source: Source, event: Any
) -> Any:
    """The handler's own result when the engine returned the response it just produced;
    otherwise (a replay, a refusal) ``response`` as a proxy result."""
    if first and first[0][0] is response:
        return first[0][1]
    return to_proxy_result(source, response, event)


def decorate_handler(idem: Idempotency, fn: Handler, options: dict[str, Any]) -> Handler:
    """Make ``fn(event, context)`` idempotent (see the module docstring)."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"{fn.__qualname__} is a generator; a Lambda handler returns a value")
    h = _Handler(idem, fn, options)
    wrapper: Any
    if inspect.iscoroutinefunction(fn):
        afn = typing.cast(Callable[..., Awaitable[Any]], fn)

        @functools.wraps(fn)
        async def wrapper(event: Any, context: Any = None) -> Any:
            if h.passthrough():
                return await afn(event, context)
            source = detect(event)
            if source in HTTP_SOURCES:
                request = h.request(source, event)
                first: list[tuple[HTTPResponse, Any]] = []

                async def call() -> HTTPResponse:
                    result = await afn(event, context)
                    response = to_response(result)
                    first.append((response, result))
                    return response

                response = await h.http.arun(request, call, lease=h.lease(context))
                return _result(first, response, source, event)
            plan = h.plan(source, event, context)
            if plan is None:
                return await afn(event, context)
            return await run_async(
                plan, idem.store, lambda: afn(event, context), heartbeat=h.config.heartbeat
            )

    else:

        @functools.wraps(fn)
        def wrapper(event: Any, context: Any = None) -> Any:
            if h.passthrough():
                return fn(event, context)
            source = detect(event)
            if source in HTTP_SOURCES:
                request = h.request(source, event)
                first: list[tuple[HTTPResponse, Any]] = []

                def call() -> HTTPResponse:
                    result = fn(event, context)
                    response = to_response(result)
                    first.append((response, result))
                    return response

                response = h.http.run(request, call, lease=h.lease(context))
                return _result(first, response, source, event)
            plan = h.plan(source, event, context)
            if plan is None:
                return fn(event, context)
            return run_sync(
                plan, idem.store, lambda: fn(event, context), heartbeat=h.config.heartbeat
            )

    wrapper.idempotency_config = h.config
    return typing.cast(Handler, wrapper)
