"""Powertools' ``idempotency.hook`` path: ``IdempotentHookFunction``, the type of
``response_hook`` (``(response, DataRecord) -> response``)."""

from collections.abc import Callable
from typing import Any

from ._persistence import DataRecord

IdempotentHookFunction = Callable[[Any, DataRecord], Any]

__all__ = ["IdempotentHookFunction"]
