"""``@idem.handler``: idempotent AWS Lambda handlers, with keys chosen by the event source.

One decorated ``handler(event, context)`` (sync or ``async def``) per function. Each
invocation detects its event's source (:func:`~idempotence.aws_lambda.detect`) and:

- **HTTP** (API Gateway REST/HTTP APIs, ALB, function URLs): converts the event to an
  :class:`~idempotence.http.HTTPRequest` and delegates to
  :class:`~idempotence.http.HTTPIdempotency`, so the ``Idempotency-Key`` header, the
  fingerprint (method + path + query + body), principal scoping, the 400/409/422/503
  problem responses and ``Idempotent-Replayed: true`` replays are exactly the HTTP
  adapters'. Refusals come back as proxy results, never as exceptions; so does an event
  that cannot be read (malformed, a bad base64 body, a ``key=`` that fails on it: 400).
  Keys are scoped to the caller by default: the authorizer's verified principal
  (:func:`~idempotence.aws_lambda._http.principal`), else the engine's keyed hash of the
  credentials the request carries (``credential_headers``, ``credential_cookies``,
  ``scope_secret``; see :func:`idempotence.http.request_scope`). A result that is not a
  proxy response is returned as it is but completes its key as "not stored": a retry gets
  a 500 problem and the handler never runs twice.
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
import logging
import typing
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from .._codec import UnencodableError
from .._config import IdempotencyConfig
from .._keys import digest, is_missing
from ..base import IdempotencyBase
from ..engine import Operation, Plan, arun, is_disabled, run
from ..http import HTTPIdempotency, HTTPRequest, HTTPResponse, problem
from ..stores import Store
from ._common import DEFAULT_LEASE_MARGIN, lease_for, plan_of, sync_result
from ._http import (
    SHAPE_HEADER,
    MalformedEventError,
    method_of,
    shape_of,
    to_proxy_result,
    to_request,
    to_response,
)
from ._sources import HTTP_SOURCES, Source, detect, event_content, event_key_material

__all__ = ["Handler", "decorate_handler"]

log = logging.getLogger("idempotence")

Handler = typing.TypeVar("Handler", bound=Callable[..., Any])

_HTTP_OPTIONS = frozenset(
    {
        "methods",
        "header",
        "keep",
        "replay_headers",
        "replay_set_cookie",
        "max_body_bytes",
        "max_request_bytes",
        "retry_after",
        "credential_headers",
        "credential_cookies",
        "scope_secret",
    }
)

#: Errors of converting a handler's result to an HTTP response (see ``to_response``).
_CONVERSION_ERRORS = (TypeError, ValueError, RecursionError, OverflowError)


class _Configured(IdempotencyBase):
    """``parent``'s store with the handler's own options."""

    def __init__(self, parent: IdempotencyBase, config: IdempotencyConfig) -> None:
        self._parent = parent
        self.config = config

    @property
    def store(self) -> Store:
        return self._parent.store


@dataclasses.dataclass(frozen=True)
class _Unconvertible(HTTPResponse):
    """Stands for a handler result that is not a proxy response: never stored (its key
    completes as "not stored"), and the caller gets the handler's own result."""

    reason: str = ""


def _reason(exc: BaseException) -> str:
    """Why a result could not be converted, without quoting it (a ``UnicodeError``'s
    message quotes the offending character)."""
    if isinstance(exc, UnicodeError):
        return f"{type(exc).__name__}: text that is not valid Unicode"
    return f"{type(exc).__name__}: {exc}"


def _check_signature(fn: Callable[..., Any]) -> None:
    name = getattr(fn, "__qualname__", type(fn).__qualname__)
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"{name} is a generator; a Lambda handler returns a value")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no introspectable signature (some builtins)
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"{name} cannot be called as handler(event, context); a Lambda handler takes "
            "the event and the context as its two positional arguments"
        ) from None


class _Handler:
    """Per decorated handler: options, selectors and the HTTP engine. Decides, runs no I/O
    except through the shells."""

    def __init__(self, idem: IdempotencyBase, fn: Callable[..., Any], options: dict[str, Any]):
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
        self.name: str = getattr(fn, "__qualname__", type(fn).__qualname__)
        # The context differs on every delivery: never part of the payload (the event is).
        self.bound: Operation[Any, Any] = Operation(
            fn, config, idem.namespace_for(fn, options.get("namespace")), exclude=("context",)
        )
        self.config = config
        self.http = HTTPIdempotency(
            _Configured(idem, config),
            required=bool(required),
            namespace=self.bound.namespace,
            **http_options,
        )
        if self.http.replay_headers is not None:  # keep the REST header shape in replays
            self.http.replay_headers = self.http.replay_headers | {SHAPE_HEADER}

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

    def http_plan(self, source: Source, event: Any, context: Any) -> Plan | HTTPResponse | None:
        """What to do with an HTTP event: ``None`` (run the handler without idempotency),
        a refusal to answer as it is, or the plan to run."""
        method = method_of(source, event)
        if method is not None and not self.http.applies_to(method):
            return None
        try:
            request = self.request(source, event)
        except MalformedEventError as exc:
            return problem(
                "invalid-request", f"this is not a well-formed {source.value} event: {exc}"
            )
        except Exception as exc:  # key= (or a scope= function) failed on this request
            log.warning(
                "%s: key=/scope= could not be applied to a %s request (%s); answered 400",
                self.name,
                source.value,
                type(exc).__name__,
            )
            return problem(
                "invalid-request",
                "no idempotency key can be derived from this request "
                f"({type(exc).__name__}); check that its body has the expected format",
            )
        prepared = self.http.prepare(request, lease=self.lease(context))
        if not isinstance(prepared, Plan):
            return prepared
        return _guarded(prepared)

    def response(self, source: Source, result: Any) -> HTTPResponse:
        """The HTTP response of a handler's result; an :class:`_Unconvertible` when it is no
        proxy response. REST API responses record their header shape (:data:`SHAPE_HEADER`)."""
        try:
            response = to_response(result)
        except _CONVERSION_ERRORS as exc:
            log.error(
                "%s returned a result that is not a proxy response (%s); its key is completed "
                "as not stored, so retries get a 500 problem",
                self.name,
                _reason(exc),
            )
            return _Unconvertible(200, reason=_reason(exc))
        if source is Source.API_GATEWAY_REST:
            headers = [*response.headers, (SHAPE_HEADER, shape_of(result))]
            response = dataclasses.replace(response, headers=headers)
        return response

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
            missing=(
                f"no idempotency key in this event for {self.name}: key="
                f"{self.bound.key_spec!r} selected nothing"
            ),
        )

    def passthrough(self) -> bool:
        if not is_disabled():
            return False
        warnings.warn(
            f"IDEMPOTENCE_DISABLED is set: {self.name} runs without idempotency",
            RuntimeWarning,
            stacklevel=4,
        )
        return True


def _guarded(plan: Plan) -> Plan:
    """``plan``, completing the key as "not stored" for an :class:`_Unconvertible` result
    (the handler ran: it must not run again) instead of keeping or releasing it."""
    encode, keep = plan.encode, plan.should_store

    def should_store(result: Any) -> bool:
        return isinstance(result, _Unconvertible) or keep is None or keep(result)

    def encode_result(result: Any) -> bytes:
        if isinstance(result, _Unconvertible):
            raise UnencodableError(
                f"the handler's result is not a proxy response ({result.reason})"
            )
        return encode(result)

    return plan._replace(encode=encode_result, should_store=should_store)


def _result(
    first: list[tuple[HTTPResponse, Any]], response: HTTPResponse, source: Source, event: Any
) -> Any:
    """The handler's own result when the engine returned the response it just produced;
    otherwise (a replay, a refusal) ``response`` as a proxy result."""
    if first and first[0][0] is response:
        return first[0][1]
    return to_proxy_result(source, response, event)


def decorate_handler(idem: IdempotencyBase, fn: Handler, options: dict[str, Any]) -> Handler:
    """Make ``fn(event, context)`` idempotent (see the module docstring). Raises
    ``TypeError`` for a function that cannot be called as ``fn(event, context)``."""
    _check_signature(fn)
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
                decided = h.http_plan(source, event, context)
                if decided is None:
                    return await afn(event, context)
                if isinstance(decided, HTTPResponse):
                    return to_proxy_result(source, decided, event)
                first: list[tuple[HTTPResponse, Any]] = []

                async def call() -> HTTPResponse:
                    result = await afn(event, context)
                    response = h.response(source, result)
                    first.append((response, result))
                    return response

                response = await h.http.aexecute(decided, call)
                return _result(first, response, source, event)
            plan = h.plan(source, event, context)
            if plan is None:
                return await afn(event, context)
            return await arun(
                plan, idem.store, lambda: afn(event, context), heartbeat=h.config.heartbeat
            )

    else:

        def invoke(event: Any, context: Any) -> Any:
            return sync_result(fn(event, context), f"the handler {h.name}")

        @functools.wraps(fn)
        def wrapper(event: Any, context: Any = None) -> Any:
            if h.passthrough():
                return fn(event, context)
            source = detect(event)
            if source in HTTP_SOURCES:
                decided = h.http_plan(source, event, context)
                if decided is None:
                    return fn(event, context)
                if isinstance(decided, HTTPResponse):
                    return to_proxy_result(source, decided, event)
                first: list[tuple[HTTPResponse, Any]] = []

                def call() -> HTTPResponse:
                    result = invoke(event, context)
                    response = h.response(source, result)
                    first.append((response, result))
                    return response

                response = h.http.execute(decided, call)
                return _result(first, response, source, event)
            plan = h.plan(source, event, context)
            if plan is None:
                return fn(event, context)
            return run(
                plan, idem.store, lambda: invoke(event, context), heartbeat=h.config.heartbeat
            )

    wrapper.idempotency_config = h.config
    return typing.cast(Handler, wrapper)
