"""Powertools' ``serialization.custom_dict`` path."""

from . import CustomDictSerializer

__all__ = ["CustomDictSerializer"]
