"""Powertools' ``idempotency.config`` path."""

from ._config import IdempotencyConfig

__all__ = ["IdempotencyConfig"]
