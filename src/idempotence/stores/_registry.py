"""Store URLs: a registry from URL scheme to store factory."""

from __future__ import annotations

from collections.abc import Callable

from ._base import Store

__all__ = ["register_scheme", "store_from_url"]

StoreFactory = Callable[[str], Store]

# scheme -> factory, or "module:Class" resolved (and imported) on first use.
_SCHEMES: dict[str, StoreFactory | str] = {
    "memory": "idempotence.stores._memory:MemoryStore",
    "sqlite": "idempotence.stores._sqlite:SQLiteStore",
    "dynamodb": "idempotence.stores._dynamodb:DynamoDBStore",
    "redis": "idempotence.stores._redis:RedisStore",
    "rediss": "idempotence.stores._redis:RedisStore",
    "postgres": "idempotence.stores._postgres:PostgresStore",
    "postgresql": "idempotence.stores._postgres:PostgresStore",
}


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Make ``store_from_url("scheme://...")`` call ``factory(url)``. Replaces an earlier
    registration of the same scheme."""
    _SCHEMES[scheme.lower()] = factory


def store_from_url(url: str) -> Store:
    """Build a store from a URL, e.g. ``sqlite:///idempotence.db``, ``memory://``,
    ``redis://localhost:6379/0``, ``postgresql://host/db?table=idempotency``,
    ``dynamodb://table?region=eu-west-1``.

    Raises ``ValueError`` for an unknown scheme and
    :class:`~idempotence.MissingDependencyError` when the backend's extra is not installed.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else url.partition(":")[0].lower()
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ValueError(f"unknown store URL scheme in {url!r}; known: {known}")
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        import importlib  # on first use: not part of the cold import

        cls = getattr(importlib.import_module(module_name), attr)
        target = _SCHEMES[scheme] = cls.from_url
    return target(url)
