"""Powertools' ``serialization.dataclass`` path."""

from . import DataclassSerializer

__all__ = ["DataclassSerializer"]
