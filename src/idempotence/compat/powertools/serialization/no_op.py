"""Powertools' ``serialization.no_op`` path."""

from . import NoOpSerializer

__all__ = ["NoOpSerializer"]
