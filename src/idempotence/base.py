"""What every front-end holds: a store (given, or built from a URL on first use) and the
default options of everything made over it.

:class:`IdempotencyBase` sits above the stores and below the front-ends (the decorator
facade :class:`~idempotence.Idempotency`, the HTTP middleware, the AWS Lambda adapter,
effects, your own adapter): the engine (:mod:`idempotence.engine`) drives any store it is
given and never builds one, the stores implement the contract the engine drives, and this
module is where a store URL becomes a store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import _log
from ._config import IdempotencyConfig
from .engine import default_namespace
from .stores import Store, store_from_url, validate_store_url

__all__ = ["IdempotencyBase", "default_store_url"]


_lambda_default_warned = False


def default_store_url() -> str:
    """``IDEMPOTENCE_STORE`` if set; else a SQLite file (``/tmp`` on AWS Lambda, where the
    code directory is read-only; ``.idempotence.db`` in the working directory elsewhere).

    On AWS Lambda the ``/tmp`` file is private to one execution environment, so it does not
    protect against duplicates handled by another instance: the first time this fallback is
    chosen in a process (once per cold start), a warning naming ``IDEMPOTENCE_STORE`` is
    logged on the ``idempotence`` logger."""
    global _lambda_default_warned
    url = os.environ.get("IDEMPOTENCE_STORE")
    if url:
        return url
    if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
        if not _lambda_default_warned:
            _lambda_default_warned = True
            _log.warning(
                "IDEMPOTENCE_STORE is not set: on AWS Lambda idempotence falls back to a "
                "SQLite file in /tmp, private to this execution environment, so duplicates "
                "delivered to another instance run again. Set IDEMPOTENCE_STORE to a shared "
                "store, e.g. dynamodb://my-table (or redis://..., postgresql://...)."
            )
        return "sqlite:////tmp/idempotence.db"
    return "sqlite:///.idempotence.db"


class IdempotencyBase:
    """A store and the default options of everything made over it (see
    :class:`~idempotence.Idempotency`, which adds the decorators)."""

    def __init__(self, store: Store | str | None = None, /, **options: Any) -> None:
        self.config = IdempotencyConfig(**options)
        self._store: Store | None = store if isinstance(store, Store) else None
        self._store_url = store if isinstance(store, str) else None
        if store is not None and not isinstance(store, (Store, str)):
            raise TypeError(f"store must be a Store or a URL string, got {type(store).__name__}")
        if self._store_url is not None:
            validate_store_url(self._store_url)  # scheme, table, options; no I/O

    @property
    def store(self) -> Store:
        """The store (built from the URL on first access)."""
        if self._store is None:
            self._store = store_from_url(self._store_url or default_store_url())
        return self._store

    def namespace_for(self, fn: Callable[..., Any], override: str | None) -> str:
        """The key namespace of ``fn``: ``override`` (a decorator's ``namespace=``) as
        given; otherwise ``module.qualname``, behind ``{AWS_LAMBDA_FUNCTION_NAME}:`` when
        that variable is set (read now: at decoration, or at each ``process_batch`` call),
        behind this instance's ``namespace`` and a dot if it has one.

        Functions with no name of their own raise ``TypeError`` asking for ``namespace=``:
        lambdas (every one is ``<lambda>``), ``functools.partial`` objects (their bound
        arguments are not part of any name) and callable instances (every instance of a
        class would share one name).
        """
        if override is not None:
            return override
        return default_namespace(fn, self.config.namespace)
