"""The ``idempotence`` logger, imported on first warning (keeps the cold import small)."""

from __future__ import annotations

from typing import Any

__all__ = ["warning"]


def warning(message: str, *args: Any, exc_info: bool = False) -> None:
    """Log a warning on the ``idempotence`` logger."""
    import logging

    logging.getLogger("idempotence").warning(message, *args, exc_info=exc_info)
