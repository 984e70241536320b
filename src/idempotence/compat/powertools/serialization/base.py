"""Powertools' ``serialization.base`` path."""

from . import BaseIdempotencyModelSerializer, BaseIdempotencySerializer

__all__ = ["BaseIdempotencyModelSerializer", "BaseIdempotencySerializer"]
