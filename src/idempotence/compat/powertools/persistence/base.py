"""Powertools' ``persistence.base`` path."""

from .._persistence import STATUS_CONSTANTS, BasePersistenceLayer, DataRecord

__all__ = ["STATUS_CONSTANTS", "BasePersistenceLayer", "DataRecord"]
