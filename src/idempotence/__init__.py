"""idempotence: a request, message or event delivered twice has its effect once.

Decorate a function (sync or ``async``) and its duplicates are answered from a record in a
shared store instead of running again::

    from idempotence import Idempotency

    idem = Idempotency("sqlite:///idempotency.db", ttl=3600)

    @idem(key="order_id")
    def create_order(order: dict) -> dict: ...

See ``docs/`` for the protocol, the stores and the adapters.
"""

from __future__ import annotations

from ._codec import JSONSerializer, Serializer, UnencodableError
from ._config import IdempotencyConfig
from ._context import current_key
from ._errors import (
    AlreadyInProgressError,
    CorruptRecordError,
    IdempotencyError,
    InvalidKeyError,
    KeyReuseError,
    LeaseLostError,
    MissingDependencyError,
    MissingKeyError,
    ResultNotStoredError,
    ResultTooLargeError,
    StoredErrorReplay,
    StoreError,
)
from ._idempotency import (
    Idempotency,
    IdempotentFunction,
    default_store_url,
    idempotent,
    idempotent_handler,
)
from ._record import Claim, Record, Status

__version__ = "0.1.0"

# Public classes print and pickle under the package name (``idempotence.KeyReuseError``),
# not the private module that defines them; each stays importable from its module too.
for _name in (
    "AlreadyInProgressError", "Claim", "CorruptRecordError", "Idempotency",
    "IdempotencyConfig", "IdempotencyError", "InvalidKeyError", "JSONSerializer",
    "KeyReuseError", "LeaseLostError", "MissingDependencyError", "MissingKeyError", "Record",
    "ResultNotStoredError", "ResultTooLargeError", "Status", "StoreError", "StoredErrorReplay",
    "UnencodableError",
):  # fmt: skip
    globals()[_name].__module__ = __name__
del _name

__all__ = [
    "AlreadyInProgressError",
    "Claim",
    "CorruptRecordError",
    "Idempotency",
    "IdempotencyConfig",
    "IdempotencyError",
    "IdempotentFunction",
    "InvalidKeyError",
    "JSONSerializer",
    "KeyReuseError",
    "LeaseLostError",
    "MissingDependencyError",
    "MissingKeyError",
    "Record",
    "ResultNotStoredError",
    "ResultTooLargeError",
    "Serializer",
    "Status",
    "StoreError",
    "StoredErrorReplay",
    "UnencodableError",
    "__version__",
    "current_key",
    "default_store_url",
    "idempotent",
    "idempotent_handler",
]
