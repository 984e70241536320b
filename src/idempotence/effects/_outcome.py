"""What the transactional effects share: the open transaction, its outcome, the checks.

Both :class:`~idempotence.effects.TransactionalIdempotency` (SQL) and
:func:`~idempotence.effects.dynamodb_transaction` decide a refused claim the same way: a
completed record with the same fingerprint replays, another fingerprint is
:class:`~idempotence.KeyReuseError`, a live claim of the normal API is
:class:`~idempotence.AlreadyInProgressError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._codec import KIND_VALUE, Serializer, envelope
from .._errors import AlreadyInProgressError, KeyReuseError
from .._record import Claim, Record, Status

__all__ = ["Transaction", "TransactionOutcome"]

_T = TypeVar("_T")

#: The fingerprint of a transaction given no payload.
NO_FINGERPRINT = "-"
#: Options of IdempotencyConfig that have no meaning inside one transaction.
NOT_APPLICABLE = (
    "heartbeat", "on_in_progress", "wait_timeout", "local_cache", "store_errors",
    "should_store", "fail_open",
)  # fmt: skip


def check_options(options: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` for options that do not apply inside one transaction."""
    bad = sorted(set(options) & set(NOT_APPLICABLE))
    if bad:
        raise TypeError(
            f"option(s) {', '.join(bad)} do not apply to transactional idempotency (the "
            "claim lives and dies with the transaction)"
        )


def encoder(
    serializer: Serializer, hint: Callable[[], Any] | None = None
) -> Callable[[Any], bytes]:
    """How a transaction's result is stored: the codec's value envelope. With ``hint``
    (returning what a replay decodes with: the result type widened by ``replay_types``),
    a result holding a class that replay would not rebuild is refused now with
    :class:`~idempotence.UnencodableError` (the serializer's ``check_replayable``), as the
    decorator refuses it, instead of failing on every replay."""
    from ..engine import replay_check

    check = replay_check(serializer) if hint is not None else None

    def encode(value: Any) -> bytes:
        body = serializer.encode(value)
        if check is not None and hint is not None and b'"$' in body:
            check(body, hint())
        return envelope(KIND_VALUE, body)

    return encode


def check_existing(claim: Claim, key: str, fingerprint: str) -> Record:
    """The existing record of a refused claim if it is a completed replay; else raise."""
    record = claim.record
    if record.fingerprint != fingerprint:
        raise KeyReuseError(
            f"idempotency key {key!r} was already used with a different payload; "
            "use a new key for a new operation",
            key=key,
        )
    if record.status is not Status.COMPLETED:
        retry_after = max(0.0, record.lease_expires_at - claim.now)
        raise AlreadyInProgressError(
            f"idempotency key {key!r} is claimed by a non-transactional invocation; retry in "
            f"{retry_after:.1f}s",
            key=key,
            retry_after=retry_after,
        )
    return record


def open_transaction(
    key: str,
    claim: Claim,
    fingerprint: str,
    encode: Callable[[Any], bytes],
    replay: Callable[[Record], Any],
) -> Transaction:
    """The :class:`Transaction` of a claim (checked by :func:`check_existing` if refused)."""
    if not claim.acquired:
        check_existing(claim, key, fingerprint)
    return Transaction(key, claim, encode=encode, replay=replay)


class Transaction:
    """One idempotent transaction, as yielded by :meth:`TransactionalIdempotency.transaction`.

    ``replayed`` is ``True`` when the key was already completed: the body must then not
    write anything, and ``result`` is the stored result. Otherwise the transaction owns the
    key: make the business writes, and :meth:`set_result` the value to keep (``None`` if
    never set); it is stored in the same transaction as the writes.
    """

    def __init__(
        self,
        key: str,
        claim: Claim,
        *,
        encode: Callable[[Any], bytes],
        replay: Callable[[Record], Any],
    ) -> None:
        self.key = key
        self.replayed = not claim.acquired
        #: The existing completed record when replayed; the new in-progress one otherwise.
        self.record = claim.record
        self._encode = encode
        self._replay = replay
        self._value: Any = None
        self._data: bytes | None = None

    @property
    def result(self) -> Any:
        """The stored result (replayed) or the one given to :meth:`set_result` (else
        ``None``). A replay of a stored error raises it."""
        if self.replayed:
            return self._replay(self.record)
        return self._value

    def set_result(self, value: Any) -> None:
        """Record ``value`` as the result, committed with the transaction. Raises
        :class:`~idempotence.UnencodableError` now if the value cannot be stored (the
        transaction then rolls back, with your writes), and ``RuntimeError`` on a replay."""
        if self.replayed:
            raise RuntimeError(
                f"{self.key!r} was already completed (tx.replayed): nothing may be written"
            )
        self._data = self._encode(value)
        self._value = value

    def _stored(self) -> bytes:
        """The encoded result to store (``None``'s encoding if never set)."""
        return self._data if self._data is not None else self._encode(None)


@dataclass(frozen=True, slots=True)
class TransactionOutcome(Generic[_T]):
    """What :func:`dynamodb_transaction` did: ``replayed`` is ``True`` when the key was
    already completed (nothing was written); ``result`` is the stored result then, and the
    given one otherwise."""

    replayed: bool
    result: _T
    record: Record | None = None
