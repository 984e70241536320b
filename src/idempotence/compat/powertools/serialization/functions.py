"""Powertools' ``serialization.functions`` path."""

from . import get_actual_type

__all__ = ["get_actual_type"]
