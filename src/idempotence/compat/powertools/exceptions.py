"""Powertools' idempotency exception names, catchable as Powertools code catches them.

Each is also the matching exception of this library where one exists, so both
``except IdempotencyAlreadyInProgressError`` and ``except idempotence.AlreadyInProgressError``
catch an in-progress refusal:

=========================================  ============================================
Powertools name                            also an instance of
=========================================  ============================================
``IdempotencyAlreadyInProgressError``      :class:`idempotence.AlreadyInProgressError`
``IdempotencyValidationError``             :class:`idempotence.KeyReuseError`
``IdempotencyKeyError``                    :class:`idempotence.MissingKeyError`
``IdempotencyPersistenceLayerError``       :class:`idempotence.StoreError`
``IdempotencyModelTypeError``,             ``TypeError``
``IdempotencyNoSerializationModelError``
the others                                 :class:`idempotence.IdempotencyError`
=========================================  ============================================

Errors the engine adds (:class:`~idempotence.LeaseLostError`,
:class:`~idempotence.ResultNotStoredError`, :class:`~idempotence.CorruptRecordError`) are
raised as they are: Powertools has no equivalent.
"""

from __future__ import annotations

from typing import Any

from ... import (
    AlreadyInProgressError,
    IdempotencyError,
    KeyReuseError,
    MissingKeyError,
    StoreError,
)

__all__ = [
    "BaseError",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyInconsistentStateError",
    "IdempotencyInvalidStatusError",
    "IdempotencyItemAlreadyExistsError",
    "IdempotencyItemNotFoundError",
    "IdempotencyKeyError",
    "IdempotencyModelTypeError",
    "IdempotencyNoSerializationModelError",
    "IdempotencyPersistenceConfigError",
    "IdempotencyPersistenceConnectionError",
    "IdempotencyPersistenceConsistencyError",
    "IdempotencyPersistenceLayerError",
    "IdempotencyValidationError",
]


class BaseError(IdempotencyError):
    """Base of the Powertools-named exceptions. Built like Powertools' (positional message
    and details) or like this library's (``key=``...)."""

    def __init__(self, *args: Any, key: str | None = None, **extra: Any) -> None:
        message = " - ".join(str(a) for a in args if a is not None)
        super().__init__(message, key=key)
        for name, value in extra.items():
            setattr(self, name, value)
        self.args = args


class IdempotencyItemAlreadyExistsError(BaseError):
    """A record already exists for the key (Powertools-internal; not raised to callers)."""


class IdempotencyItemNotFoundError(BaseError):
    """No record for the key (Powertools-internal; not raised to callers)."""


class IdempotencyAlreadyInProgressError(BaseError, AlreadyInProgressError):
    """Another invocation holds a live claim on the key (``retry_after`` seconds left)."""


class IdempotencyInvalidStatusError(BaseError):
    """A record has a status this library does not know."""


class IdempotencyValidationError(BaseError, KeyReuseError):
    """The payload does not match the stored record's validation hash."""


class IdempotencyInconsistentStateError(BaseError):
    """Kept for ``except`` clauses; the one-round-trip claim never raises it."""


class IdempotencyPersistenceLayerError(BaseError, StoreError):
    """The persistence layer (DynamoDB, Redis) failed; the function did not run, unless
    ``result`` is set (it ran and only saving failed)."""


class IdempotencyKeyError(BaseError, MissingKeyError):
    """No idempotency key in the payload and ``raise_on_no_idempotency_key=True``."""


class IdempotencyModelTypeError(BaseError, TypeError):
    """The output serializer's model type is not the kind it serializes."""


class IdempotencyNoSerializationModelError(BaseError, TypeError):
    """An output serializer class was given but the function has no return annotation."""


class IdempotencyPersistenceConfigError(BaseError, ValueError):
    """The persistence layer's configuration is invalid."""


class IdempotencyPersistenceConnectionError(BaseError, StoreError):
    """The persistence layer could not connect."""


class IdempotencyPersistenceConsistencyError(BaseError):
    """Kept for ``except`` clauses (Powertools' Redis consistency refusal)."""
