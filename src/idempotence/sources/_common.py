"""What handler and batch modes share: the lease from the Lambda context, the key, the plan."""

from __future__ import annotations

from typing import Any

from .._idempotency import _Bound
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
    """The key of an event or record, built as the function decorators build keys."""
    return bound.key_of(material, scope_payload)


def make_plan(
    bound: _Bound[Any, Any], store: Store, key: str, fingerprint: str, lease: float
) -> Plan:
    """The protocol plan of one event or record: ``bound``'s codec and options, with the
    source's own fingerprint and the invocation's lease."""
    return bound.plan_for(key, fingerprint, store, lease)
