"""Exceptions raised by idempotence.

Every failure a caller can hit is one of these, and each message says what to do::

    IdempotencyError                      base class of everything below
    ├── MissingKeyError (ValueError)      no key material found in the call
    ├── InvalidKeyError (ValueError)      key/fingerprint material cannot be canonicalised
    ├── KeyReuseError                     same key, different payload (HTTP 422)
    ├── AlreadyInProgressError            another invocation holds a live claim (HTTP 409)
    ├── LeaseLostError                    our lease lapsed and a successor took the key
    ├── ResultNotStoredError              the function ran but its result could not be kept
    │   └── ResultTooLargeError           a store refused the encoded result as too large
    ├── StoredErrorReplay                 replay of an exception listed in ``store_errors``
    │                                     whose type cannot be rebuilt
    ├── CorruptRecordError                a stored record cannot be decoded
    ├── StoreError                        the store is unreachable or failed (fail closed)
    └── MissingDependencyError (ImportError)  a backend's optional dependency is not installed
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyInProgressError",
    "CorruptRecordError",
    "IdempotencyError",
    "InvalidKeyError",
    "KeyReuseError",
    "LeaseLostError",
    "MissingDependencyError",
    "MissingKeyError",
    "ResultNotStoredError",
    "ResultTooLargeError",
    "StoreError",
    "StoredErrorReplay",
]


class IdempotencyError(Exception):
    """Base class of every exception raised by idempotence itself.

    ``key`` is the idempotency key involved, when one was derived.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class MissingKeyError(IdempotencyError, ValueError):
    """The key expression found nothing in the call (``None`` or absent).

    Pass the key material, fix the ``key=`` expression, or set ``required=False`` to run
    such calls without idempotency.
    """


class InvalidKeyError(IdempotencyError, ValueError):
    """Key or fingerprint material exists but cannot be canonicalised (NaN, an object JSON
    cannot represent, a namespace with non-printable characters...)."""


class KeyReuseError(IdempotencyError):
    """The key was used before with a different payload (fingerprint). The client must use a
    new key for a new operation. HTTP adapters answer 422."""


class AlreadyInProgressError(IdempotencyError):
    """Another invocation holds a live claim on the key.

    ``retry_after`` is the number of seconds until that claim's lease lapses (a hint for
    when to retry). HTTP adapters answer 409 with ``Retry-After``.
    """

    def __init__(self, message: str, *, key: str | None = None, retry_after: float = 0.0) -> None:
        super().__init__(message, key=key)
        self.retry_after = retry_after


class LeaseLostError(IdempotencyError):
    """The function finished after its lease lapsed and another invocation took the key over.

    The successor's record stands and is never overwritten. ``result`` holds what this
    (late) invocation returned, so the caller can reconcile it.
    """

    def __init__(self, message: str, *, key: str | None = None, result: Any = None) -> None:
        super().__init__(message, key=key)
        self.result = result


class ResultNotStoredError(IdempotencyError):
    """The function ran, but its result could not be encoded or was too large for the store.

    The key is completed as "result not stored" (its side effect happened, so it is not
    released for re-execution); this error is raised now, with ``result`` set to the
    value, and on every replay (``result`` is ``None`` then). Return something smaller or
    encodable, raise ``max_result_bytes``, or pass ``should_store``/``serializer``.
    """

    def __init__(self, message: str, *, key: str | None = None, result: Any = None) -> None:
        super().__init__(message, key=key)
        self.result = result


class ResultTooLargeError(ResultNotStoredError):
    """A store's ``complete`` refused a result that does not fit (e.g. a DynamoDB item over
    400 KB even compressed). Nothing was written; the protocol then completes the key as
    "result not stored" and raises :class:`ResultNotStoredError` to the caller."""


class StoredErrorReplay(IdempotencyError):
    """A replay of an exception stored through ``store_errors`` whose type could not be
    rebuilt here (its class is not in this decorator's ``store_errors``). ``type_name`` and
    ``args`` describe the original."""

    def __init__(
        self, message: str, *, key: str | None = None, type_name: str = "", args: Any = ()
    ) -> None:
        super().__init__(message, key=key)
        self.type_name = type_name
        self.error_args = args


class CorruptRecordError(IdempotencyError):
    """A record read from the store cannot be decoded: corrupt bytes, an unknown format
    version, or a result whose type cannot be rebuilt. Delete the key (``forget``) or fix
    the serializer."""


class StoreError(IdempotencyError):
    """The store is unreachable or failed. The function did not run (fail closed), unless
    ``result`` is set: then it ran and only saving the result failed.

    A failure to connect to PostgreSQL or Redis says ``cannot connect to ...: <cause>``
    (connection refused, unknown host, authentication failed, database does not exist)
    and what to check. The original exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, key: str | None = None, result: Any = None) -> None:
        super().__init__(message, key=key)
        self.result = result


class MissingDependencyError(IdempotencyError, ImportError):
    """An optional dependency of a backend is not installed; the message names the extra
    to install, e.g. ``pip install 'idempotence[redis]'``."""
