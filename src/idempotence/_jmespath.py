"""JMESPath options for key expressions (imported on first use of an expression that needs
the interpreter: plain dotted paths such as ``order.id`` are read without it)."""

from __future__ import annotations

import base64
import decimal
import json
from typing import Any

import jmespath
from jmespath import functions as jmespath_functions

__all__ = ["OPTIONS"]


def _float(literal: str) -> float | decimal.Decimal:
    """A JSON number literal with a fraction or exponent: the float when its ``repr`` is
    the literal itself (``1.5``), else the literal as a ``Decimal`` (``1.0000000000000001``,
    ``1E400``), so two requests that differ in a digit never share a key."""
    value = float(literal)
    return value if repr(value) == literal else decimal.Decimal(literal)


def _loads(text: str | bytes) -> Any:
    """``json.loads`` keeping every number's precision; failures (invalid JSON, nesting
    too deep for the parser) are ``ValueError`` without the text."""
    try:
        return json.loads(text, parse_float=_float)
    except RecursionError:
        raise ValueError("the JSON text is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({type(exc).__name__})") from None


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value)
    except ValueError:
        raise ValueError("not valid base64") from None


class _Functions(jmespath_functions.Functions):
    """JMESPath functions for keys: ``json(s)`` parses a JSON string (``powertools_json``
    is the same function under Powertools' name, so existing expressions keep working);
    ``base64_json(s)`` decodes base64 then parses; ``powertools_base64(s)`` decodes base64
    to text. Numbers keep the precision of the text (see :func:`_float`)."""

    @jmespath_functions.signature({"types": ["string"]})
    def _func_json(self, value: str) -> Any:
        return _loads(value)

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_json(self, value: str) -> Any:
        return _loads(value)

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_base64(self, value: str) -> str:
        try:
            return _b64(value).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("base64 of text that is not UTF-8") from None

    @jmespath_functions.signature({"types": ["string"]})
    def _func_base64_json(self, value: str) -> Any:
        return _loads(_b64(value))


OPTIONS = jmespath.Options(custom_functions=_Functions())
