"""What handler and batch modes share: the lease from the Lambda context, the key, the plan."""

from __future__ import annotations

from typing import Any

from .._idempotency import _Bound, _not_stored
from .._keys import digest
from .._protocol import Plan
from ..stores._base import Store

__all__ = ["DEFAULT_LEASE_MARGIN", "lease_for", "make_key", "make_plan"]

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


def make_key(bound: _Bound[Any, Any], scope_payload: Any, material: Any) -> str:
    """``namespace#digest([key spec, scope, material])``, as the function decorators build
    keys; ``scope`` (a string or a function of ``scope_payload``) comes from the config."""
    scope = bound.config.scope
    if callable(scope):
        scope = scope(scope_payload)
    return f"{bound.namespace}#{digest([bound.key_spec, scope, material])}"


def make_plan(
    bound: _Bound[Any, Any], store: Store, key: str, fingerprint: str, lease: float
) -> Plan:
    """The protocol plan of one event or record: ``bound``'s codec and options, with the
    source's own fingerprint and the invocation's lease."""
    c = bound.config
    return Plan(
        key=key,
        fingerprint=fingerprint,
        lease=lease,
        ttl=c.ttl_s,
        encode=bound.encode(store),
        replay=bound.replay,
        encode_not_stored=_not_stored,
        encode_error=bound.encode_error if c.store_errors else None,
        store_errors=c.store_errors,
        should_store=c.should_store,
        wait=c.on_in_progress == "wait",
        wait_timeout=c.wait_timeout_s,
        cache=bound.cache,
        fail_open=c.fail_open,
    )
