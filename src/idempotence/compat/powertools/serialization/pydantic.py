"""Powertools' ``serialization.pydantic`` path."""

from . import PydanticSerializer

__all__ = ["PydanticSerializer"]
