"""CloudWatch metrics from AWS Lambda without a client: Embedded Metric Format lines.

:func:`enable` subscribes an observer that prints one EMF JSON line per idempotent call to
standard output, which Lambda sends to CloudWatch Logs; CloudWatch extracts the metrics
from it (no API call, no dependency). Each line looks like::

    {"_aws": {"Timestamp": 1764460800000,
              "CloudWatchMetrics": [{"Namespace": "Idempotence",
                                     "Dimensions": [["KeyNamespace", "Outcome"]],
                                     "Metrics": [{"Name": "Calls", "Unit": "Count"},
                                                 {"Name": "Duration", "Unit": "Milliseconds"},
                                                 {"Name": "StoreDuration",
                                                  "Unit": "Milliseconds"}]}]},
     "KeyNamespace": "orders.charge", "Outcome": "replayed", "Store": "dynamodb",
     "Calls": 1, "Duration": 3.2, "StoreDuration": 2.9, "ReplayedFrom": "store"}

Dimension values are the key's namespace, the outcome and the store kind (see
:class:`~idempotence.observe.Event`): never a key or a payload value.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from . import observe

__all__ = ["DIMENSIONS", "disable", "enable", "line"]

#: The dimension names an event provides.
DIMENSIONS = ("KeyNamespace", "Outcome", "Store")

_stop: Callable[[], None] | None = None


def line(
    event: observe.Event,
    namespace: str = "Idempotence",
    dimensions: Iterable[Iterable[str]] = (("KeyNamespace", "Outcome"),),
    properties: Mapping[str, str] | None = None,
    timestamp: float | None = None,
) -> str:
    """The EMF JSON document (one line) for ``event``.

    ``namespace`` is the CloudWatch metric namespace; ``dimensions`` the dimension sets
    (each a list of names from :data:`DIMENSIONS` or ``properties``); ``properties``
    constant dimension values added to the line (e.g. ``{"Service": "orders"}``);
    ``timestamp`` seconds since the epoch (default: now).
    """
    sets = [list(names) for names in dimensions]
    values: dict[str, Any] = {
        "KeyNamespace": event.namespace,
        "Outcome": event.outcome.value,
        "Store": event.store,
        **(properties or {}),
    }
    unknown = sorted({name for names in sets for name in names} - values.keys())
    if unknown:
        raise ValueError(
            f"unknown EMF dimension(s) {unknown}: use {list(DIMENSIONS)} or a key of properties"
        )
    document: dict[str, Any] = {
        "_aws": {
            "Timestamp": int((time.time() if timestamp is None else timestamp) * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": sets,
                    "Metrics": [
                        {"Name": "Calls", "Unit": "Count"},
                        {"Name": "Duration", "Unit": "Milliseconds"},
                        {"Name": "StoreDuration", "Unit": "Milliseconds"},
                    ],
                }
            ],
        },
        **values,
        "Calls": 1,
        "Duration": round(event.duration * 1000, 3),
        "StoreDuration": round(event.store_duration * 1000, 3),
    }
    if event.replayed_from is not None:
        document["ReplayedFrom"] = event.replayed_from
    if event.error is not None:
        document["Error"] = event.error
    return json.dumps(document, separators=(",", ":"))


def enable(
    namespace: str = "Idempotence",
    dimensions: Iterable[Iterable[str]] = (("KeyNamespace", "Outcome"),),
    properties: Mapping[str, str] | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print one EMF line (see :func:`line`) per idempotent call to ``stream`` (default:
    the current ``sys.stdout``). Calling it again replaces the previous settings. Checks
    the dimension names now (``ValueError``)."""
    global _stop
    sets = tuple(tuple(names) for names in dimensions)
    known = {*DIMENSIONS, *(properties or {})}
    unknown = sorted({name for names in sets for name in names} - known)
    if unknown or not all(sets):
        raise ValueError(
            f"invalid EMF dimensions {[list(s) for s in sets]}: each set is a non-empty list "
            f"of names from {sorted(known)}"
        )
    frozen = dict(properties or {})

    def emit(event: observe.Event) -> None:
        out = stream if stream is not None else sys.stdout
        out.write(line(event, namespace, sets, frozen) + "\n")
        out.flush()

    disable()
    _stop = observe.subscribe(emit)


def disable() -> None:
    """Stop printing EMF lines (no error if :func:`enable` was not called)."""
    global _stop
    if _stop is not None:
        _stop()
        _stop = None
