"""The ``idempotence`` logger, imported on first warning (keeps the cold import small).

Records name the key's namespace (the part before ``#``), never the key (a hash of its
material) or a payload value, and carry ``extra=`` fields (``idempotence_outcome``,
``idempotence_namespace``...) for structured formatters (see ``docs/observability.md``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["fields", "namespace", "warning"]


def namespace(key: str) -> str:
    """The namespace of a store key (the part before ``#``), what records may name."""
    return key.partition("#")[0]


def fields(outcome: str, key: str) -> dict[str, Any]:
    """The ``extra=`` fields of a record about one call under ``key``."""
    return {"idempotence_outcome": outcome, "idempotence_namespace": namespace(key)}


def warning(
    message: str, *args: Any, exc_info: bool = False, extra: dict[str, Any] | None = None
) -> None:
    """Log a warning on the ``idempotence`` logger."""
    import logging

    logging.getLogger("idempotence").warning(message, *args, exc_info=exc_info, extra=extra)
