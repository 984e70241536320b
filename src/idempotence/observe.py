"""Observe idempotent calls: one :class:`Event` per call, handed to your observers.

Every front-end (the decorator, the HTTP middleware, the Lambda handler and batch
processing) drives the same protocol, and each call of any of them ends in exactly one
:class:`Event`::

    from idempotence import observe

    def on_event(event: observe.Event) -> None:
        print(event.outcome, event.namespace, event.store, event.duration)

    observe.subscribe(on_event)

An event carries the key's *namespace* (the part of the key before ``#``, e.g.
``orders.charge``), the :class:`Outcome`, the store kind (``"redis"``), the durations and
the class name of the exception the call raised. It never carries the key itself, the
payload, the result or an exception's message: a key is a hash of its material (an order
number, a user id), and a hash of a value from a small set is recovered by hashing
candidates, so it is treated as payload.

With no observer subscribed the cost is one attribute check per call. Observers run
synchronously on the calling thread (or task) when the call ends: keep them quick and free
of I/O. An observer that raises is logged (with its traceback, on the ``idempotence``
logger) and does not change the call's result.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._errors import (
    AlreadyInProgressError,
    KeyReuseError,
    LeaseLostError,
    ResultNotStoredError,
    StoreError,
)
from ._protocol import ClaimOp, Op, Plan, RunOp, SleepOp

__all__ = [
    "Event",
    "Observer",
    "Outcome",
    "log_events",
    "store_kind",
    "subscribe",
    "subscribed",
    "unsubscribe",
]

log = logging.getLogger("idempotence")


class Outcome(str, enum.Enum):
    """How one idempotent call ended (the value is the string used in logs and metrics)."""

    #: The key was claimed, the function ran and its result (or its stored error) was kept.
    EXECUTED = "executed"
    #: The key was claimed and the function raised: the key was released for a retry (or
    #: the error, listed in ``store_errors``, was kept for duplicates to replay).
    FAILED = "failed"
    #: A completed record answered the call (``Event.replayed_from``: store or cache); the
    #: function did not run. A replayed stored error is a replay too (``Event.error`` set).
    REPLAYED = "replayed"
    #: Another invocation held the key (``AlreadyInProgressError``, after waiting if
    #: ``on_in_progress='wait'``).
    IN_PROGRESS = "in_progress"
    #: The key was used before with a different payload (``KeyReuseError``).
    KEY_REUSE = "key_reuse"
    #: The lease lapsed while the function ran and another invocation took the key over
    #: (``LeaseLostError``).
    LEASE_LOST = "lease_lost"
    #: The store failed (``StoreError``): claiming (without ``fail_open``) or saving.
    STORE_ERROR = "store_error"
    #: The function ran but its result could not be kept (``ResultNotStoredError``).
    NOT_STORED = "not_stored"
    #: The store failed to claim and ``fail_open`` ran the function without idempotency.
    FAIL_OPEN = "fail_open"


@dataclass(frozen=True)
class Event:
    """One idempotent call, as it ended. Durations are in seconds (``time.perf_counter``).

    :ivar outcome: how the call ended.
    :ivar namespace: the key's namespace (the part before ``#``); never the key.
    :ivar store: the store kind: ``"memory"``, ``"sqlite"``, ``"redis"``, ``"postgres"``,
        ``"mysql"``, ``"dynamodb"`` (a custom store: its class name, lower case, without
        ``Store``; ``LargeResultStore``: the store it wraps).
    :ivar duration: the whole call, including waits and the function.
    :ivar store_duration: time spent in store operations (claim, complete, release).
    :ivar body_duration: time spent running the function (0.0 when it did not run).
    :ivar wait_duration: time spent polling while another invocation held the key.
    :ivar replayed_from: ``"store"`` or ``"cache"`` (the process-local cache) for a replay,
        else ``None``.
    :ivar error: the class name of the exception the call raised, else ``None`` (never
        its message: messages may name the key).
    """

    outcome: Outcome
    namespace: str
    store: str
    duration: float
    store_duration: float
    body_duration: float
    wait_duration: float = 0.0
    replayed_from: str | None = None
    error: str | None = None

    @property
    def replayed(self) -> bool:
        """Whether a stored record answered the call (the function did not run)."""
        return self.replayed_from is not None


@runtime_checkable
class Observer(Protocol):
    """An observer that also sees a call start (a tracer opens its span there).

    ``start`` runs before the call's first store operation, in the caller's context (a
    span made current there is the parent of spans the function opens); what it returns
    is handed back to ``end`` with the call's event, once, whatever the call did. A plain
    callable ``f(event)`` passed to :func:`subscribe` sees the end only.
    """

    def start(self, namespace: str, store: str) -> Any:
        """A call begins; return any state ``end`` needs."""

    def end(self, event: Event, state: Any) -> None:
        """The call ended with ``event``; ``state`` is what ``start`` returned."""


Subscriber = Callable[[Event], None] | Observer

#: The subscribers, replaced (never mutated) under ``_lock``: the shells read it once per call.
observers: tuple[Subscriber, ...] = ()
#: ``observers`` split once at subscription: those with ``start``/``end``, the plain callables.
_split: tuple[tuple[Observer, ...], tuple[Callable[[Event], None], ...]] = ((), ())
_lock = threading.Lock()


def _publish(subscribers: tuple[Subscriber, ...]) -> None:
    global observers, _split
    full = tuple(o for o in subscribers if isinstance(o, Observer))
    plain = tuple(o for o in subscribers if not isinstance(o, Observer))
    _split = (full, plain)
    observers = subscribers


def subscribe(observer: Subscriber) -> Callable[[], None]:
    """Call ``observer`` for every idempotent call of this process from now on.

    ``observer`` is a callable taking an :class:`Event`, or an :class:`Observer` (with
    ``start`` and ``end``). Subscribing the same observer twice is a no-op. Returns a
    function that unsubscribes it.
    """
    with _lock:
        if not any(o == observer for o in observers):  # bound methods: equal, not identical
            _publish((*observers, observer))
    return lambda: unsubscribe(observer)


def unsubscribe(observer: Subscriber) -> None:
    """Stop calling ``observer`` (no error if it was not subscribed)."""
    with _lock:
        _publish(tuple(o for o in observers if o != observer))


class subscribed:
    """``with subscribed(observer): ...`` subscribes ``observer`` for the block only."""

    def __init__(self, observer: Subscriber) -> None:
        self.observer = observer

    def __enter__(self) -> Subscriber:
        subscribe(self.observer)
        return self.observer

    def __exit__(self, *exc: object) -> None:
        unsubscribe(self.observer)


_KINDS: dict[type, str] = {}


def store_kind(store: object) -> str:
    """The store kind reported in events: ``RedisStore`` -> ``"redis"``; a store that wraps
    another as its ``store`` attribute (``LargeResultStore``) reports the wrapped one's."""
    inner = getattr(store, "store", None)
    if callable(getattr(inner, "claim", None)):  # a wrapped store (the engine imports none)
        return store_kind(inner)
    cls = type(store)
    kind = _KINDS.get(cls)
    if kind is None:
        name = cls.__name__
        base = name[: -len("Store")] if name.endswith("Store") and name != "Store" else name
        kind = _KINDS[cls] = {"DynamoDB": "dynamodb", "SQLite": "sqlite", "MySQL": "mysql"}.get(
            base, base.lower()
        )
    return kind


def _failure(
    exc: BaseException, ran: bool, body_failed: bool, store_failed: bool, fence: int | None
) -> Outcome:
    if ran and fence is None:
        return Outcome.FAIL_OPEN
    if body_failed:
        return Outcome.FAILED
    if isinstance(exc, LeaseLostError):
        return Outcome.LEASE_LOST
    if isinstance(exc, ResultNotStoredError) and ran:
        return Outcome.NOT_STORED
    if isinstance(exc, StoreError) and store_failed:
        return Outcome.STORE_ERROR
    if isinstance(exc, KeyReuseError):
        return Outcome.KEY_REUSE
    if isinstance(exc, AlreadyInProgressError):
        return Outcome.IN_PROGRESS
    return Outcome.REPLAYED  # a replayed stored error, or a record that cannot be replayed


def watch(machine: Generator[Op, Any, Any], plan: Plan, store: object) -> Generator[Op, Any, Any]:
    """Wrap one call's protocol generator: pass every operation through, time it, and
    report the call's :class:`Event` to the observers when it ends. Used by the shells
    only when an observer is subscribed."""
    full, plain = _split
    namespace = plan.key.partition("#")[0]
    kind = store_kind(store)
    states: list[tuple[Observer, Any]] = []
    for observer in full:
        try:
            states.append((observer, observer.start(namespace, kind)))
        except Exception:
            log.warning("an idempotence observer's start raised", exc_info=True)
    clock = time.perf_counter
    began = clock()
    store_time = body_time = wait_time = 0.0
    claimed = ran = body_failed = store_failed = False
    fence: int | None = None
    value: Any = None
    error: BaseException | None = None
    outcome = Outcome.EXECUTED
    raised: BaseException | None = None
    try:
        while True:
            try:
                op = machine.send(value) if error is None else machine.throw(error)
            except StopIteration as done:
                result = done.value
                if ran:
                    outcome = Outcome.EXECUTED if fence is not None else Outcome.FAIL_OPEN
                else:
                    outcome = Outcome.REPLAYED
                break
            value, error = None, None
            kind_of = type(op)
            if kind_of is RunOp:
                ran, fence = True, op.fence  # type: ignore[union-attr]
            elif kind_of is ClaimOp:
                claimed = True
            start = clock()
            try:
                value = yield op
            except GeneratorExit:
                machine.close()
                raise
            except BaseException as exc:
                error = exc
                if kind_of is RunOp:
                    body_failed = True
                elif isinstance(exc, StoreError):
                    store_failed = True
            elapsed = clock() - start
            if kind_of is RunOp:
                body_time += elapsed
            elif kind_of is SleepOp:
                wait_time += elapsed
            else:
                store_time += elapsed
    except GeneratorExit:
        _finish(states, plain, None)
        raise
    except BaseException as exc:
        raised = exc
        outcome = _failure(exc, ran, body_failed, store_failed, fence)
        result = None
    event = Event(
        outcome=outcome,
        namespace=namespace,
        store=kind,
        duration=clock() - began,
        store_duration=store_time,
        body_duration=body_time,
        wait_duration=wait_time,
        replayed_from=("store" if claimed else "cache") if outcome is Outcome.REPLAYED else None,
        error=None if raised is None else type(raised).__name__,
    )
    _finish(states, plain, event)
    if raised is not None:
        raise raised
    return result


def _finish(
    states: list[tuple[Observer, Any]],
    plain: tuple[Callable[[Event], None], ...],
    event: Event | None,
) -> None:
    for observer, state in states:
        try:
            if event is not None:
                observer.end(event, state)
            else:  # the call was abandoned (its driver was closed): end what start opened
                observer.end(_ABANDONED, state)
        except Exception:
            log.warning("an idempotence observer's end raised", exc_info=True)
    if event is None:
        return
    for callback in plain:
        try:
            callback(event)
        except Exception:
            log.warning("an idempotence observer raised", exc_info=True)


_ABANDONED = Event(Outcome.FAILED, "", "", 0.0, 0.0, 0.0, error="GeneratorExit")

# -- structured log records ---------------------------------------------------------------
#: Log level of each outcome for :func:`log_events`; outcomes not listed are not logged.
LEVELS: dict[Outcome, int] = {
    Outcome.REPLAYED: logging.DEBUG,
    Outcome.IN_PROGRESS: logging.WARNING,
    Outcome.KEY_REUSE: logging.WARNING,
    Outcome.LEASE_LOST: logging.WARNING,
    Outcome.NOT_STORED: logging.WARNING,
    Outcome.STORE_ERROR: logging.ERROR,
}

_MESSAGES = {
    Outcome.REPLAYED: "idempotent call in %s replayed from the %s",
    Outcome.IN_PROGRESS: "idempotent call in %s refused: another invocation holds the key",
    Outcome.KEY_REUSE: "idempotent call in %s refused: key reused with a different payload",
    Outcome.LEASE_LOST: "idempotent call in %s lost its lease; its result was not kept",
    Outcome.NOT_STORED: "idempotent call in %s ran but its result could not be kept",
    Outcome.STORE_ERROR: "idempotent call in %s failed: the %s store raised %s",
}


def extra(event: Event) -> dict[str, Any]:
    """The ``extra=`` fields of a log record about ``event`` (``idempotence_*`` keys)."""
    return {
        "idempotence_outcome": event.outcome.value,
        "idempotence_namespace": event.namespace,
        "idempotence_store": event.store,
        "idempotence_duration_ms": round(event.duration * 1000, 3),
        "idempotence_store_ms": round(event.store_duration * 1000, 3),
        "idempotence_replayed": event.replayed,
        "idempotence_error": event.error,
    }


def log_events(logger: logging.Logger | None = None) -> Callable[[], None]:
    """Log one record per notable call on ``logger`` (default: the ``idempotence``
    logger), with :func:`extra` fields for JSON formatters: replays at DEBUG; conflicts,
    key reuse, lost leases and results not stored at WARNING; store errors at ERROR. Calls
    that ran normally and fail-open calls (already logged at WARNING by the protocol) are
    not logged; no record carries a traceback, a key or a payload value. Returns a
    function that stops it."""
    target = logger or log

    def on_event(event: Event) -> None:
        level = LEVELS.get(event.outcome)
        if level is None or not target.isEnabledFor(level):
            return
        args: tuple[Any, ...] = (event.namespace,)
        if event.outcome is Outcome.REPLAYED:
            args = (event.namespace, event.replayed_from)
        elif event.outcome is Outcome.STORE_ERROR:
            args = (event.namespace, event.store, event.error)
        target.log(level, _MESSAGES[event.outcome], *args, extra=extra(event))

    return subscribe(on_event)
