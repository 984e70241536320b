"""Lazy imports of optional backend dependencies, with an actionable error."""

from __future__ import annotations

import importlib
from types import ModuleType

from ._errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise ``MissingDependencyError`` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module!r} is not installed, and this store needs it: "
            f"pip install 'idempotence[{extra}]'"
        ) from exc
