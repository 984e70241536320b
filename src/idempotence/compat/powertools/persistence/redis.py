"""Powertools' ``persistence.redis`` path (imports ``redis`` lazily, on first use)."""

from .._redis import (
    CacheClientProtocol,
    CacheConnection,
    CachePersistenceLayer,
    RedisCachePersistenceLayer,
    RedisClientProtocol,
    RedisConnection,
)

__all__ = [
    "CacheClientProtocol",
    "CacheConnection",
    "CachePersistenceLayer",
    "RedisCachePersistenceLayer",
    "RedisClientProtocol",
    "RedisConnection",
]
