"""Powertools' key, validation hash and response encoding, reproduced exactly.

Key: ``{prefix}#{hash}`` where ``prefix`` is ``key_prefix`` or
``{AWS_LAMBDA_FUNCTION_NAME or 'test-func'}.{module}.{qualname}`` and ``hash`` is
``hash_function(json.dumps(data, sort_keys=True))`` of the payload (dataclasses, pydantic
models and event data classes as dicts) after ``event_key_jmespath``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import json
import math
import uuid
import warnings
import zlib
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import jmespath
from jmespath import functions as jmespath_functions

from ..._errors import InvalidKeyError
from ._config import IdempotencyConfig
from .exceptions import IdempotencyKeyError

__all__ = ["MAX_GUNZIP_BYTES", "PowertoolsFunctions", "hasher", "prepare", "selector"]

#: The most text ``powertools_base64_gzip`` inflates; more is refused (``InvalidKeyError``).
MAX_GUNZIP_BYTES = 16 * 1024 * 1024


class PowertoolsFunctions(jmespath_functions.Functions):
    """Powertools' JMESPath functions: ``powertools_json`` (parse JSON text),
    ``powertools_base64`` (decode base64 to text) and ``powertools_base64_gzip`` (decode
    base64, gunzip, to text: CloudWatch Logs subscription data)."""

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_json(self, value: str) -> Any:
        return json.loads(value)

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_base64(self, value: str) -> str:
        return base64.b64decode(value).decode()

    @jmespath_functions.signature({"types": ["string"]})
    def _func_powertools_base64_gzip(self, value: str) -> str:
        inflater = zlib.decompressobj(wbits=31)  # gzip framing, bounded (no gzip bomb)
        text = inflater.decompress(base64.b64decode(value), MAX_GUNZIP_BYTES)
        if inflater.unconsumed_tail:
            raise ValueError(f"gzip data inflates to more than {MAX_GUNZIP_BYTES} bytes")
        return text.decode()


def prepare(data: Any) -> Any:
    """The payload as Powertools hashes it: dataclasses via ``asdict``, pydantic models via
    ``model_dump(mode="json")`` (v1: ``dict()``), event data classes as their
    ``raw_event``; anything else as it is."""
    if hasattr(data, "__dataclass_fields__") and not isinstance(data, type):
        return dataclasses.asdict(data)
    if callable(getattr(data, "model_dump", None)) and not isinstance(data, type):
        return data.model_dump(mode="json")
    if callable(getattr(data, "dict", None)) and hasattr(data, "__fields__"):
        return data.dict()
    return getattr(data, "raw_event", data)


class _Encoder(json.JSONEncoder):
    """Powertools' encoder: ``Decimal`` as text, pydantic models and dataclasses as dicts;
    for hashing also enums, dates, times, UUIDs and paths."""

    def __init__(self, *args: Any, for_key: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.for_key = for_key

    def default(self, o: Any) -> Any:
        if isinstance(o, decimal.Decimal):
            return math.nan if o.is_nan() else str(o)
        if callable(getattr(o, "model_dump", None)) and not isinstance(o, type):
            return o.model_dump()
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return dataclasses.asdict(o)
        if self.for_key:
            if isinstance(o, enum.Enum):
                return o.value
            if isinstance(o, (dt.date, dt.time)):
                return o.isoformat()
            if isinstance(o, (uuid.UUID, PurePath)):
                return str(o)
        return super().default(o)


def dumps_response(value: Any) -> str:
    """The ``data`` text Powertools stores for a (serialized) response."""
    return json.dumps(value, cls=_Encoder, sort_keys=True)


class Material:
    """Selected key material, wrapped so the engine's own notion of "missing" (which
    differs from Powertools' in corners such as ``[""]``) does not apply: :func:`selector`
    already decided, with Powertools' rule."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def hasher(name: str) -> Callable[[Any], str]:
    """``hash_function`` as Powertools applies it, to key and validation data."""
    try:
        new = getattr(hashlib, name)
    except AttributeError:
        raise ValueError(f"hash_function={name!r} is not a hashlib function") from None

    def hash_(data: Any) -> str:
        if isinstance(data, Material):
            data = data.value
        try:
            text = json.dumps(data, cls=_Encoder, sort_keys=True, for_key=True)
        except (TypeError, ValueError) as exc:
            raise InvalidKeyError(
                "cannot hash the idempotency key data: it holds a value JSON cannot "
                f"represent ({type(exc).__name__}); select JSON fields with "
                "event_key_jmespath"
            ) from None
        return str(new(text.encode()).hexdigest())

    return hash_


def _missing(data: Any) -> bool:
    """Powertools' ``is_missing_idempotency_key``."""
    if isinstance(data, dict):
        return all(x is None for x in data.values())
    if isinstance(data, (tuple, list)):
        return all(x is None for x in data)
    if isinstance(data, (int, float, bool)):
        return False
    return not data


def _compile(expression: str, what: str) -> Any:
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression for {what}: {expression!r}") from exc


def _search(compiled: Any, data: Any, options: Any, what: str) -> Any:
    try:
        return compiled.search(data, options=options)
    except Exception as exc:  # JMESPath, json, base64, gzip: never quote the payload
        raise InvalidKeyError(
            f"{what} {compiled.expression!r} failed on this payload ({type(exc).__name__}; "
            "the values are not shown). Check that it matches the event's shape."
        ) from None


def _options(config: IdempotencyConfig) -> Any:
    return jmespath.Options(
        **(config.jmespath_options or {"custom_functions": PowertoolsFunctions()})
    )


def selector(config: IdempotencyConfig) -> Callable[[Any], Material | None]:
    """The key material of a payload (``None``: none found, run without idempotency after
    Powertools' warning; :class:`IdempotencyKeyError` with
    ``raise_on_no_idempotency_key``)."""
    options = _options(config)
    expression = config.event_key_jmespath
    compiled = _compile(expression, "event_key_jmespath") if expression else None

    def select(payload: Any) -> Material | None:
        data = prepare(payload)
        if compiled is not None:
            data = _search(compiled, data, options, "event_key_jmespath")
        if _missing(data):
            if config.raise_on_no_idempotency_key:
                raise IdempotencyKeyError("No data found to create a hashed idempotency_key")
            warnings.warn(
                "No idempotency key value found. Skipping persistence layer and validation "
                f"operations. jmespath: {expression}",
                stacklevel=4,
            )
            return None
        return Material(data)

    return select


def validation_selector(config: IdempotencyConfig) -> Callable[[Any], Any]:
    """The data ``payload_validation_jmespath`` selects (hashed into the record)."""
    options = _options(config)
    compiled = _compile(config.payload_validation_jmespath, "payload_validation_jmespath")
    return lambda payload: _search(compiled, prepare(payload), options, "payload_validation")
