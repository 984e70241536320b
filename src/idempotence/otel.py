"""OpenTelemetry spans and metrics for idempotent calls (extra ``[otel]``: opentelemetry-api).

:func:`instrument` subscribes an :class:`~idempotence.observe.Observer` that, for every
idempotent call (decorator, HTTP middleware, Lambda handler, batch record):

- opens one span, ``idempotent <namespace>``, a child of the span current when the call
  starts (the HTTP server's or the Lambda function's); spans the function opens are its
  children. Attributes: ``idempotence.outcome``, ``idempotence.namespace``,
  ``idempotence.store``, ``idempotence.replayed`` (and ``error.type``, the exception's
  class name, when the call raised). Its status is ERROR when the call raised, with the
  class name as description; the exception's message is not recorded (it may name the key).
- counts the call in ``idempotence.calls`` (attributes: outcome, namespace, store);
- records its store time in the ``idempotence.store.duration`` histogram (seconds) and its
  whole duration in ``idempotence.call.duration``;
- counts calls refused because another invocation held the key in
  ``idempotence.conflicts``.

The SDK (exporters, processors, readers) is yours to configure; without one the API's
no-op providers make this free of output.
"""

from __future__ import annotations

from typing import Any

from . import observe
from ._lazy import require

__all__ = ["instrument", "uninstrument"]

_installed: _OtelObserver | None = None


class _OtelObserver:
    """The span and metric observer :func:`instrument` subscribes."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        require("opentelemetry.trace", "otel")
        from opentelemetry import context, metrics, trace

        self._context = context
        self._trace = trace
        self._tracer = trace.get_tracer("idempotence", tracer_provider=tracer_provider)
        meter = metrics.get_meter("idempotence", meter_provider=meter_provider)
        self._calls = meter.create_counter(
            "idempotence.calls", unit="{call}", description="Idempotent calls, by outcome"
        )
        self._conflicts = meter.create_counter(
            "idempotence.conflicts",
            unit="{call}",
            description="Calls refused because another invocation held the key",
        )
        self._store = meter.create_histogram(
            "idempotence.store.duration",
            unit="s",
            description="Time one idempotent call spent in store operations",
        )
        self._duration = meter.create_histogram(
            "idempotence.call.duration",
            unit="s",
            description="Duration of one idempotent call, waits and the function included",
        )

    def start(self, namespace: str, store: str) -> Any:
        span = self._tracer.start_span(
            f"idempotent {namespace}",
            attributes={"idempotence.namespace": namespace, "idempotence.store": store},
        )
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end(self, event: observe.Event, state: Any) -> None:
        span, token = state
        try:
            self._context.detach(token)
        finally:
            self._end_span(span, event)
        if not event.namespace:  # an abandoned call: the span is closed, nothing to count
            return
        attributes = {
            "idempotence.outcome": event.outcome.value,
            "idempotence.namespace": event.namespace,
            "idempotence.store": event.store,
        }
        self._calls.add(1, attributes)
        self._store.record(event.store_duration, attributes)
        self._duration.record(event.duration, attributes)
        if event.outcome is observe.Outcome.IN_PROGRESS:
            self._conflicts.add(1, attributes)

    def _end_span(self, span: Any, event: observe.Event) -> None:
        span.set_attribute("idempotence.outcome", event.outcome.value)
        span.set_attribute("idempotence.replayed", event.replayed)
        if event.replayed_from is not None:
            span.set_attribute("idempotence.replayed_from", event.replayed_from)
        if event.error is not None:
            span.set_attribute("error.type", event.error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error))
        span.end()


def instrument(tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Trace and measure every idempotent call of this process (see the module docs).

    ``tracer_provider`` / ``meter_provider`` default to OpenTelemetry's global providers.
    Calling it again replaces the previous instrumentation. Raises
    :class:`~idempotence.MissingDependencyError` without ``opentelemetry-api``
    (``pip install 'idempotence[otel]'``).
    """
    global _installed
    observer = _OtelObserver(tracer_provider, meter_provider)
    uninstrument()
    _installed = observer
    observe.subscribe(observer)


def uninstrument() -> None:
    """Stop tracing and measuring (no error if :func:`instrument` was not called)."""
    global _installed
    if _installed is not None:
        observe.unsubscribe(_installed)
        _installed = None
