"""What handler and batch modes share: the lease from the Lambda context, the key, the plan."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from .._errors import MissingKeyError
from .._keys import digest, is_missing
from ..engine import Operation, Plan
from ..stores import Store
from ._sources import Source

__all__ = [
    "DEFAULT_LEASE_MARGIN",
    "AwaitableResultError",
    "is_async_callable",
    "lease_for",
    "plan_of",
    "sync_result",
]

#: Seconds added to the invocation's remaining time to get its lease.
DEFAULT_LEASE_MARGIN = 5.0


def lease_for(context: Any, fixed: float | None, fallback: float, margin: float) -> float:
    """The lease of one invocation.

    ``fixed`` (a ``lease=`` given to the handler or batch call) wins. Otherwise the Lambda
    context's remaining time plus ``margin``: the invocation cannot run longer, so once
    that lapses its claim is certainly dead and a retry may take the key over. Without a
    usable context (tests, other runtimes): ``fallback`` (the configured lease).
    """
    if fixed is not None:
        return fixed
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        try:
            millis = float(remaining())
        except (TypeError, ValueError):
            return fallback
        if millis > 0:
            return millis / 1000.0 + margin
    return fallback


def is_async_callable(fn: Any) -> bool:
    """Whether calling ``fn`` returns a coroutine by construction: an ``async def``
    function, a ``functools.partial`` of one, or an object whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - the method, not callable()
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


class AwaitableResultError(TypeError):
    """A synchronous handler returned an awaitable (see :func:`sync_result`)."""


def sync_result(value: Any, what: str) -> Any:
    """``value``, the result of a synchronous call; ``TypeError`` if it is awaitable (an
    ``async`` function given where a plain one is expected): a coroutine is not the
    result, and completing a key with it would record work that never ran. A coroutine is
    closed first, so no "never awaited" warning follows."""
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if callable(close):
            close()
        raise AwaitableResultError(
            f"{what} returned an awaitable, not a result: make it a plain function, or use "
            "the async API (aprocess_batch, an async def handler)"
        )
    return value


def plan_of(
    bound: Operation[Any, Any],
    store: Store,
    source: Source,
    payload: Any,
    lease: Callable[[], float],
    *,
    material_of: Callable[[Source, Any], Any],
    content_of: Callable[[Source, Any], Any],
    missing: str,
) -> Plan | None:
    """The protocol plan of one event or record (``payload``), keyed and fingerprinted as
    the function decorators do, with the invocation's ``lease()``; ``None`` runs it without
    idempotency (``key=`` selected nothing and the key is optional).

    Without ``key=`` / ``fingerprint=``, ``material_of`` / ``content_of`` give the source's
    own key and fingerprint material. ``missing(material)`` is the message of the
    :class:`~idempotence.MissingKeyError` of a required ``key=`` that selected nothing.
    """
    if bound.key_select is not None:
        material = bound.key_select(payload)
        if is_missing(material):
            if bound.config.required:
                raise MissingKeyError(missing)
            return None
    else:
        material = material_of(source, payload)
    if bound.config.fingerprint is None:  # the default: the source's own content
        fingerprint = digest(content_of(source, payload))
    else:  # fingerprint=False or a selector: as for any decorated function
        fingerprint = bound.fingerprint(payload)
    key = bound.key_of(material, payload)
    return bound.plan(key, fingerprint, store, lease())
