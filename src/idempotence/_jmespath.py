"""JMESPath options for key expressions (imported on first use of an expression that needs
the interpreter: plain dotted paths such as ``order.id`` are read without it)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jmespath
from jmespath import functions as jmespath_functions

__all__ = ["OPTIONS"]


class _Functions(jmespath_functions.Functions):
    """JMESPath functions for keys: ``json(s)`` parses a JSON string (``powertools_json``
    is the same function under Powertools' name, so existing expressions keep working)."""

    @jmespath_functions.signature({"types": ["string"]})
    def _func_json(self, value: str) -> Any:
        return json.loads(value)

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_json(self, value: str) -> Any:
        return json.loads(value)

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_base64(self, value: str) -> str:
        return base64.b64decode(value).decode("utf-8")

    @jmespath_functions.signature({"types": ["string"]})
    def _func_base64_json(self, value: str) -> Any:
        return json.loads(base64.b64decode(value))


OPTIONS = jmespath.Options(custom_functions=_Functions())
