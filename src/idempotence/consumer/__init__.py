"""Idempotent at-least-once consumers: run a message's handler at most once, record its
result, and only then acknowledge the message.

A broker that delivers at least once (Redis Streams, SQS, RabbitMQ, Kafka, NATS
JetStream...) redelivers a message whose consumer died before acknowledging it, and a
producer that retries publishes the same work twice. :class:`IdempotentConsumer` wraps a
handler so that each message is handled like this:

1. derive its key: the message's stable id (the default), or key material selected from the
   payload (``key=``, JMESPath or a function: duplicates *published* twice then share it);
2. claim the key in the :class:`~idempotence.Idempotency` store, run the handler, store
   its result (the protocol of :mod:`idempotence.engine`);
3. **only after the record is completed**, call the message's ``ack``. A duplicate delivery
   finds the completed record: the handler does not run, the stored result is replayed and
   the message is acknowledged again.

Every delivery ends in one :class:`Outcome` (see its members for which errors lead where):
acknowledged (``PROCESSED``, ``REPLAYED``, ``DEAD_LETTER``) or left unacknowledged for a
later redelivery (``RETRY``, ``REJECTED``). See ``docs/consumers.md`` and
:mod:`idempotence.consumer.redis_streams` for a ready-made Redis Streams loop.
"""

from __future__ import annotations

import enum
import inspect
import logging
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .. import (
    AlreadyInProgressError,
    CorruptRecordError,
    Idempotency,
    IdempotencyConfig,
    InvalidKeyError,
    KeyReuseError,
    MissingKeyError,
    ResultNotStoredError,
    StoredErrorReplay,
)
from ..engine import Operation, Plan, adrive, arun, drive, is_disabled, run

__all__ = ["Ack", "DeadLetter", "Delivery", "IdempotentConsumer", "Outcome"]

logger = logging.getLogger("idempotence.consumer")

#: The longest message id accepted.
MAX_MESSAGE_ID = 1024


class Outcome(str, enum.Enum):
    """How one delivery ended, and whether its message was acknowledged."""

    #: The handler ran now and its result (or an error listed in ``store_errors``, or the
    #: "result not stored" marker) is recorded; then the message was acknowledged.
    PROCESSED = "processed"
    #: A duplicate: the key's record was already completed, so the handler did not run;
    #: its result was replayed (:attr:`Delivery.result` / :attr:`Delivery.error`) and the
    #: message acknowledged again.
    REPLAYED = "replayed"
    #: Not acknowledged, to be delivered again: the handler raised (the key is released,
    #: the redelivery runs it), another delivery of the key is still running
    #: (:class:`~idempotence.AlreadyInProgressError`), the store failed
    #: (:class:`~idempotence.StoreError`) or the lease was lost
    #: (:class:`~idempotence.LeaseLostError`: another delivery took the key over; the
    #: redelivery replays its record).
    RETRY = "retry"
    #: A permanent failure (a redelivery would fail the same way) handed to the
    #: dead-letter callable, then acknowledged: the key was already used with another
    #: payload (:class:`~idempotence.KeyReuseError`), the payload has no key material
    #: (:class:`~idempotence.MissingKeyError`, :class:`~idempotence.InvalidKeyError`), the
    #: record cannot be read (:class:`~idempotence.CorruptRecordError`), or an adapter
    #: could not decode the message.
    DEAD_LETTER = "dead_letter"
    #: A permanent failure with no dead-letter callable: the message is **not**
    #: acknowledged (nothing is dropped silently) and an error is logged; it stays pending
    #: until someone forgets the key, fixes the message or configures a dead letter.
    REJECTED = "rejected"

    @property
    def acked(self) -> bool:
        """Whether a delivery with this outcome acknowledged its message."""
        return self in (Outcome.PROCESSED, Outcome.REPLAYED, Outcome.DEAD_LETTER)


@dataclass(frozen=True)
class Delivery:
    """The end of one delivery: its :class:`Outcome`, the handler's result (run now or
    replayed) or the error behind the outcome, and the idempotency key it ran under
    (``None``: no key, it ran without idempotency)."""

    message_id: str
    outcome: Outcome
    result: Any = None
    error: BaseException | None = None
    key: str | None = None
    #: The payload the handler got (for a dead-letter callable).
    payload: Any = field(default=None, repr=False)

    @property
    def acked(self) -> bool:
        """Whether the message was acknowledged (see :attr:`Outcome.acked`)."""
        return self.outcome.acked


#: ``ack()``: acknowledge the message (sync, or returning an awaitable with ``aprocess``).
Ack = Callable[[], Any]
#: ``dead_letter(delivery)``: keep a permanently failed message somewhere (sync, or
#: returning an awaitable with ``aprocess``); the message is acknowledged after it returns.
DeadLetter = Callable[[Delivery], Any]


# -- the steps of one delivery (shared by process and aprocess) ------------------------------
class _Call(NamedTuple):
    plan: Plan | None  # None: run the handler without idempotency


class _Ack(NamedTuple):
    pass


class _Bury(NamedTuple):
    delivery: Delivery


_Step = _Call | _Ack | _Bury


class _Attempt:
    """What the drivers learn while the handler runs: whether it ran, what it raised."""

    __slots__ = ("raised", "ran")

    def __init__(self) -> None:
        self.ran = False
        self.raised: BaseException | None = None


#: Errors from outside the handler that a redelivery would meet again.
_PERMANENT = (KeyReuseError, MissingKeyError, InvalidKeyError, CorruptRecordError)


class IdempotentConsumer:
    """A message handler that runs at most once per key and acknowledges each message
    only after its result is recorded.

    ``handler(payload)`` is a function of one argument (sync or ``async``) and
    ``idempotency`` the :class:`~idempotence.Idempotency` whose store and default options
    it uses; ``options`` are those of ``@idem(...)`` (see
    :class:`~idempotence.IdempotencyConfig`: ``key``, ``fingerprint``, ``ttl``,
    ``lease``, ``heartbeat``, ``on_in_progress``, ``store_errors``, ``scope``,
    ``required``...), checked now.

    **Key.** Without ``key=`` a message is keyed by its ``message_id``: a redelivery (the
    same id) is a duplicate, a second message with the same payload is not. With ``key=``
    (JMESPath over the payload, or a function of it) the key comes from the payload and
    the id is only reported: two messages carrying the same business key are duplicates.
    Either way the fingerprint is the payload (unless ``fingerprint=`` says otherwise): a
    key reused with another payload is :class:`~idempotence.KeyReuseError`.

    **Namespace.** Keys live under ``namespace`` if given, else under the handler's
    ``module.qualname`` as for a decorated function (see
    :meth:`~idempotence.Idempotency.namespace_for`).

    **Dead letters.** ``dead_letter(delivery)`` receives each permanently failed message
    (:attr:`Outcome.DEAD_LETTER`); the message is acknowledged after it returns. Without
    one such messages are left unacknowledged (:attr:`Outcome.REJECTED`).

    With ``IDEMPOTENCE_DISABLED`` set, the handler runs on every delivery (warned once)
    and the message is acknowledged after it returns.
    """

    def __init__(
        self,
        handler: Callable[[Any], Any],
        idempotency: Idempotency,
        *,
        namespace: str | None = None,
        dead_letter: DeadLetter | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(idempotency, Idempotency):
            raise TypeError(
                "IdempotentConsumer(handler, idempotency): idempotency is an "
                f"idempotence.Idempotency, got a {type(idempotency).__name__}"
            )
        if not callable(handler):
            raise TypeError(f"handler must be callable, got a {type(handler).__name__}")
        if dead_letter is not None and not callable(dead_letter):
            raise TypeError(f"dead_letter must be callable, got a {type(dead_letter).__name__}")
        options.pop("namespace", None)
        self.handler = handler
        self.idempotency = idempotency
        self.config: IdempotencyConfig = (
            idempotency.config.replace(**options) if options else idempotency.config
        )
        self.namespace = idempotency.namespace_for(handler, namespace)
        self.op: Operation[Any, Any] = Operation(handler, self.config, self.namespace)
        self.dead_letter = dead_letter
        self.is_async = inspect.iscoroutinefunction(handler)
        self._warned_disabled = False

    # -- public ----------------------------------------------------------------------------
    def key_for(self, message_id: str, payload: Any) -> str | None:
        """The key this message runs under (``None``: no key material and
        ``required=False``), to inspect or forget its record
        (``idempotency.store.get(key)`` / ``.delete(key)``)."""
        _check_id(message_id)
        if self.config.key is None:
            return self.op.key_of(["message", message_id], payload)
        return self.op.key(payload)

    def process(
        self,
        message_id: str,
        payload: Any,
        ack: Ack,
        *,
        dead_letter: DeadLetter | None = None,
    ) -> Delivery:
        """Handle one delivery synchronously and return how it ended.

        ``ack()`` is called once the record is completed (or when a duplicate is answered
        from it, or after ``dead_letter``); an exception from ``ack`` or ``dead_letter``
        propagates (the record stands: the redelivery replays it and acknowledges again).
        ``dead_letter`` overrides the consumer's for this call. An ``async`` handler needs
        :meth:`aprocess`; a ``message_id`` that is not a non-empty string raises
        :class:`~idempotence.InvalidKeyError` (nothing is acknowledged). Exceptions other
        than :class:`Exception` (``KeyboardInterrupt``, ``SystemExit``) propagate without
        acknowledging."""
        if self.is_async:
            raise TypeError(
                f"the handler {self.op.name} is async: use await consumer.aprocess(...)"
            )
        attempt = _Attempt()

        def body() -> Any:
            attempt.ran = True
            try:
                return self.handler(payload)
            except BaseException as exc:
                attempt.raised = exc
                raise

        bury = dead_letter or self.dead_letter

        def step(item: _Step) -> Any:
            if type(item) is _Call:
                if item.plan is None:
                    return body()
                return run(item.plan, self.idempotency.store, body, heartbeat=self.config.heartbeat)
            if type(item) is _Ack:
                return ack()
            assert bury is not None
            assert type(item) is _Bury
            return bury(item.delivery)

        return drive(self._deliver(message_id, payload, attempt, bury is not None), step)

    async def aprocess(
        self,
        message_id: str,
        payload: Any,
        ack: Ack,
        *,
        dead_letter: DeadLetter | None = None,
    ) -> Delivery:
        """:meth:`process` on the running event loop: the handler may be ``async`` (a sync
        handler is called on the loop), and ``ack`` / ``dead_letter`` may return
        awaitables (awaited)."""
        attempt = _Attempt()

        async def body() -> Any:
            attempt.ran = True
            try:
                result = self.handler(payload)
                if inspect.isawaitable(result):
                    result = await result
                return result
            except BaseException as exc:
                attempt.raised = exc
                raise

        bury = dead_letter or self.dead_letter

        async def step(item: _Step) -> Any:
            if type(item) is _Call:
                if item.plan is None:
                    return await body()
                return await arun(
                    item.plan, self.idempotency.store, body, heartbeat=self.config.heartbeat
                )
            if type(item) is _Ack:
                done = ack()
            else:
                assert bury is not None
                assert type(item) is _Bury
                done = bury(item.delivery)
            return (await done) if inspect.isawaitable(done) else done

        return await adrive(self._deliver(message_id, payload, attempt, bury is not None), step)

    # -- the decisions, once ---------------------------------------------------------------
    def _deliver(
        self, message_id: str, payload: Any, attempt: _Attempt, can_bury: bool
    ) -> Generator[_Step, Any, Delivery]:
        """One delivery: key, run, then acknowledge or not (see :class:`Outcome`)."""
        _check_id(message_id)
        key: str | None = None
        plan: Plan | None = None
        try:
            if is_disabled():
                self._warn_disabled()
            else:
                key = self.key_for(message_id, payload)
                lease = self.config.lease_s
                if key is not None:
                    fingerprint = self.op.fingerprint(payload)
                    plan = self.op.plan(key, fingerprint, self.idempotency.store, lease)
            result = yield _Call(plan)
        except Exception as exc:
            outcome = self._classify(exc, attempt, keyed=plan is not None)
            if outcome is Outcome.RETRY:
                _log_retry(self.namespace, message_id, exc, attempt)
                return Delivery(message_id, Outcome.RETRY, error=exc, key=key, payload=payload)
            if outcome is Outcome.PROCESSED and not attempt.ran:
                outcome = Outcome.REPLAYED
            if outcome is Outcome.DEAD_LETTER:
                delivery = Delivery(message_id, outcome, error=exc, key=key, payload=payload)
                if not can_bury:
                    logger.error(
                        "a message for %s failed permanently (%s) and no dead_letter is "
                        "configured: it is left unacknowledged",
                        self.namespace,
                        type(exc).__name__,
                    )
                    return Delivery(
                        message_id, Outcome.REJECTED, error=exc, key=key, payload=payload
                    )
                yield _Bury(delivery)
                yield _Ack()
                return delivery
            yield _Ack()  # the error is the recorded answer (store_errors, not stored)
            return Delivery(message_id, outcome, error=exc, key=key, payload=payload)
        yield _Ack()
        outcome = Outcome.PROCESSED if attempt.ran else Outcome.REPLAYED
        return Delivery(message_id, outcome, result=result, key=key, payload=payload)

    def _classify(self, exc: Exception, attempt: _Attempt, *, keyed: bool) -> Outcome:
        """Where an error of one delivery leads (see :class:`Outcome`)."""
        if attempt.raised is exc:  # the handler's own error
            if keyed and isinstance(exc, self.config.store_errors):
                return Outcome.PROCESSED  # completed with the error: its recorded answer
            return Outcome.RETRY  # the key was released: a redelivery runs it again
        if isinstance(exc, (ResultNotStoredError, StoredErrorReplay)):
            return Outcome.PROCESSED  # a recorded answer (replayed or just completed)
        if isinstance(exc, self.config.store_errors):
            return Outcome.PROCESSED  # a stored error replayed as its class
        if isinstance(exc, _PERMANENT):
            return Outcome.DEAD_LETTER
        return Outcome.RETRY  # AlreadyInProgressError, StoreError, LeaseLostError, ...

    def _warn_disabled(self) -> None:
        if not self._warned_disabled:
            self._warned_disabled = True
            warnings.warn(
                f"IDEMPOTENCE_DISABLED is set: consumer {self.op.name} runs every delivery "
                "without idempotency",
                RuntimeWarning,
                stacklevel=4,
            )


def _check_id(message_id: object) -> None:
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID:
        raise InvalidKeyError(
            "a message id is a non-empty string of at most "
            f"{MAX_MESSAGE_ID} characters (got a {type(message_id).__name__}); pass the "
            "broker's stable id of the message"
        )


def _log_retry(namespace: str, message_id: str, exc: Exception, attempt: _Attempt) -> None:
    if isinstance(exc, AlreadyInProgressError):
        logger.info(
            "a message for %s is being handled by another delivery; left unacknowledged",
            namespace,
        )
        return
    what = "the handler raised" if attempt.raised is exc else "the delivery failed"
    logger.warning(
        "%s (%s) for a message of %s; left unacknowledged for redelivery",
        what,
        type(exc).__name__,
        namespace,
    )
