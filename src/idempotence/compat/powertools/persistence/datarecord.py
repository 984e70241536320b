"""Powertools' ``persistence.datarecord`` path."""

from .._persistence import STATUS_CONSTANTS, DataRecord

__all__ = ["STATUS_CONSTANTS", "DataRecord"]
