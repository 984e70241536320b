"""JMESPath options for key expressions (imported on first use of an expression that needs
the interpreter: plain dotted paths such as ``order.id`` are read without it)."""

from __future__ import annotations

import base64
from typing import Any

import jmespath
from jmespath import functions as jmespath_functions

from ._keys import loads_exact

__all__ = ["OPTIONS"]


def _loads(text: str | bytes) -> Any:
    """``json.loads`` keeping every number's precision (``loads_exact``); failures
    (invalid JSON, nesting too deep for the parser) are ``ValueError`` without the text."""
    try:
        return loads_exact(text)
    except RecursionError:
        raise ValueError("the JSON text is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"not valid JSON ({type(exc).__name__})") from None


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value)
    except ValueError:
        raise ValueError("not valid base64") from None


#: The most text ``powertools_base64_gzip`` inflates (a CloudWatch Logs subscription batch is
#: at most about 1 MB uncompressed): a larger output is refused, so a small "gzip bomb"
#: in an event cannot exhaust memory while a key is derived.
MAX_GUNZIP_BYTES = 16 * 1024 * 1024


def _gunzip(data: bytes) -> str:
    import zlib

    inflater = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        text = inflater.decompress(data, MAX_GUNZIP_BYTES)
    except zlib.error:
        raise ValueError("not valid gzip data") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"gzip data inflates to more than {MAX_GUNZIP_BYTES} bytes")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("gzip of text that is not UTF-8") from None


class _Functions(jmespath_functions.Functions):
    """JMESPath functions for keys: ``json(s)`` parses a JSON string (``powertools_json``
    is the same function under Powertools' name, so existing expressions keep working);
    ``base64_json(s)`` decodes base64 then parses; ``powertools_base64(s)`` decodes base64
    to text; ``powertools_base64_gzip(s)`` decodes base64 and gunzips to text (CloudWatch
    Logs subscription ``awslogs.data``; at most :data:`MAX_GUNZIP_BYTES`). Numbers keep the
    precision of the text (see ``loads_exact``)."""

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

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_base64_gzip(self, value: str) -> str:
        return _gunzip(_b64(value))


OPTIONS = jmespath.Options(custom_functions=_Functions())
