"""Powertools' ``idempotency.idempotency`` path."""

from ._config import IdempotencyConfig
from ._decorators import idempotent, idempotent_function
from .serialization import BaseIdempotencyModelSerializer, BaseIdempotencySerializer

__all__ = [
    "BaseIdempotencyModelSerializer",
    "BaseIdempotencySerializer",
    "IdempotencyConfig",
    "idempotent",
    "idempotent_function",
]
