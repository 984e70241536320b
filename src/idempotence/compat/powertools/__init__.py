"""Powertools for AWS Lambda (Python) idempotency, as a drop-in over this library.

Change the import and keep the code::

    # from aws_lambda_powertools.utilities.idempotency import (
    from idempotence.compat.powertools import (
        DynamoDBPersistenceLayer, IdempotencyConfig, idempotent,
    )

    persistence_layer = DynamoDBPersistenceLayer(table_name="IdempotencyTable")
    config = IdempotencyConfig(event_key_jmespath="powertools_json(body)")

    @idempotent(persistence_store=persistence_layer, config=config)
    def handler(event, context): ...

Keys, DynamoDB items and Redis records are Powertools' own, so a fleet can run both
libraries at once and move in either direction: each replays the other's results and
their claims exclude each other. The engine is this library's (fencing, heartbeats,
``async def`` functions, falsy results replayed as themselves). See
``docs/migrating-from-powertools.md`` for every option's status.
"""

from __future__ import annotations

from typing import Any

from ._config import IdempotencyConfig
from ._decorators import idempotent, idempotent_function
from ._dynamodb import DynamoDBPersistenceLayer
from ._keys import PowertoolsFunctions
from ._persistence import BasePersistenceLayer, DataRecord
from .exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
    IdempotencyKeyError,
    IdempotencyModelTypeError,
    IdempotencyNoSerializationModelError,
    IdempotencyPersistenceConfigError,
    IdempotencyPersistenceConnectionError,
    IdempotencyPersistenceConsistencyError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from .hook import IdempotentHookFunction
from .serialization import (
    BaseIdempotencyModelSerializer,
    BaseIdempotencySerializer,
    CustomDictSerializer,
    DataclassSerializer,
    NoOpSerializer,
    PydanticSerializer,
)

# The exception names repeat exceptions.__all__ but for BaseError, which this package does
# not re-export: kept as one literal list of the package's public names.
__all__ = [
    "BaseIdempotencyModelSerializer",
    "BaseIdempotencySerializer",
    "BasePersistenceLayer",
    "CachePersistenceLayer",
    "CustomDictSerializer",
    "DataRecord",
    "DataclassSerializer",
    "DynamoDBPersistenceLayer",
    "IdempotencyAlreadyInProgressError",
    "IdempotencyConfig",
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
    "IdempotentHookFunction",
    "NoOpSerializer",
    "PowertoolsFunctions",
    "PydanticSerializer",
    "RedisCachePersistenceLayer",
    "idempotent",
    "idempotent_function",
]


def __getattr__(name: str) -> Any:
    """The Redis layers, imported on first use (``redis`` is optional)."""
    if name in ("CachePersistenceLayer", "RedisCachePersistenceLayer"):
        from . import _redis

        return getattr(_redis, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
