"""Powertools' ``persistence.redis`` path (imports ``redis`` lazily, on first use)."""

from .._redis import CachePersistenceLayer, RedisCachePersistenceLayer

__all__ = ["CachePersistenceLayer", "RedisCachePersistenceLayer"]
