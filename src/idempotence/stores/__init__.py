"""Stores keep idempotency records. Pick one by object or by URL (:func:`store_from_url`).

``MemoryStore`` and ``SQLiteStore`` need nothing beyond the standard library. The networked
stores are imported on first use and need their extra: ``DynamoDBStore``
(``idempotence[dynamodb]``), ``RedisStore`` (``idempotence[redis]``), ``PostgresStore``
(``idempotence[postgres]``), ``MySQLStore`` (MariaDB / MySQL, ``idempotence[mysql]``).

What a store offers beyond the six operations (used by :mod:`idempotence.effects`, and
implementable by third-party stores) is declared by the protocols of
:mod:`idempotence.stores.capabilities`.

``LargeResultStore(store, "s3://bucket/prefix")`` wraps any store: it compresses large
results and offloads those too large for the store to S3 (``idempotence[s3]``); a store URL
gets the same with ``?offload=s3://bucket/prefix``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import Clock, Store, decide_claim, fresh_fence, system_clock
from ._memory import MemoryStore
from ._registry import register_scheme, store_from_url, validate_store_url

if TYPE_CHECKING:
    from ._dynamodb import DynamoDBStore
    from ._mysql import MySQLStore
    from ._offload import LargeResultStore
    from ._postgres import PostgresStore
    from ._redis import RedisStore
    from ._sqlite import SQLiteStore

__all__ = [
    "Clock",
    "DynamoDBStore",
    "LargeResultStore",
    "MemoryStore",
    "MySQLStore",
    "PostgresStore",
    "RedisStore",
    "SQLiteStore",
    "Store",
    "decide_claim",
    "fresh_fence",
    "register_scheme",
    "store_from_url",
    "system_clock",
    "validate_store_url",
]

_LAZY = {
    "SQLiteStore": "idempotence.stores._sqlite",
    "DynamoDBStore": "idempotence.stores._dynamodb",
    "RedisStore": "idempotence.stores._redis",
    "PostgresStore": "idempotence.stores._postgres",
    "MySQLStore": "idempotence.stores._mysql",
    "LargeResultStore": "idempotence.stores._offload",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'idempotence.stores' has no attribute {name!r}")
    import importlib  # on first use: not part of the cold import

    return getattr(importlib.import_module(module), name)
