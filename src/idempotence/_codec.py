"""Result encoding: JSON with type tags, rebuilt type-faithfully, never pickle.

The default :class:`JSONSerializer` writes plain JSON for JSON's own types and a tagged
object (``{"$tuple": [...]}``) for the rest, so ``{}``, ``0``, ``False``, ``None``, tuples,
sets, bytes, datetimes, ``Decimal``, ``UUID``, enums, dataclasses and pydantic models come
back equal and of the same type. Classes (enums, dataclasses, models) are looked up among
the types named by the function's return annotation first, then among classes already
imported in this process; a record can never make us import a module or call anything but
a dataclass/model/enum constructor.

A stored record is an :data:`envelope`: one version byte, one kind byte, then the body:
``V`` a value (serializer bytes), ``E`` an exception stored through ``store_errors``, ``N``
a result that could not be stored.
"""

from __future__ import annotations

import enum
import math
import sys
import typing
from collections.abc import Callable
from json import encoder as _json_encoder
from typing import Any, Protocol

from ._errors import CorruptRecordError
from ._json import loads, make_dumps

__all__ = ["JSONSerializer", "Serializer", "UnencodableError"]


class UnencodableError(Exception):
    """Raised by a serializer for a value it cannot encode."""


class Serializer(Protocol):
    """Turns results into bytes and back. ``hint`` is the function's resolved return
    annotation (or ``None``), used to rebuild classes."""

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes, hint: Any) -> Any: ...


def _is_dataclass(obj: Any) -> bool:
    """``dataclasses.is_dataclass`` without importing :mod:`dataclasses` (a cold-start cost)
    before any dataclass exists."""
    return hasattr(obj, "__dataclass_fields__")


def _init_fields(obj: Any) -> list[str]:
    import dataclasses  # already imported: obj is a dataclass

    return [f.name for f in dataclasses.fields(obj) if f.init]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _classes_in(hint: Any, found: dict[str, type], depth: int = 0) -> None:
    """Collect enum/dataclass/model classes reachable from a type annotation."""
    if depth > 20 or hint is None:
        return
    if isinstance(hint, type):
        name = _qualname(hint)
        if name in found:
            return
        if issubclass(hint, enum.Enum) or _is_dataclass(hint) or _is_model(hint):
            found[name] = hint
        if _is_dataclass(hint):
            try:
                field_hints = typing.get_type_hints(hint)
            except Exception:
                field_hints = {}
            for field_hint in field_hints.values():
                _classes_in(field_hint, found, depth + 1)
        return
    for arg in typing.get_args(hint):
        _classes_in(arg, found, depth + 1)


def _is_model(cls: type) -> bool:
    return callable(getattr(cls, "model_validate", None)) and callable(
        getattr(cls, "model_dump", None)
    )


def _lookup(name: str, allowed: dict[str, type]) -> type:
    cls = allowed.get(name)
    if cls is not None:
        return cls
    module_name, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module_name)  # never import: only already-loaded modules
    for part in qualname.split("."):
        if obj is None or part.startswith("<"):
            obj = None
            break
        obj = getattr(obj, part, None)
    if isinstance(obj, type):
        return obj
    raise CorruptRecordError(
        f"cannot rebuild a stored {name}: the class is not importable here. Annotate the "
        "function's return type so replays know the class."
    )


_DUMPS = make_dumps(sort_keys=False)
_MAX_DEPTH = 200
_str: Callable[[str], str] = getattr(_json_encoder, "c_encode_basestring", None) or (
    _json_encoder.py_encode_basestring
)
_int = int.__repr__
_float = float.__repr__


class JSONSerializer:
    """The default serializer (see the module docstring)."""

    def __init__(self) -> None:
        self._allowed: dict[Any, dict[str, type]] = {}

    def encode(self, value: Any) -> bytes:
        try:
            return _write(value, 0).encode("utf-8")
        except RecursionError as exc:
            raise UnencodableError("the result is nested too deeply to encode") from exc
        except UnicodeEncodeError as exc:  # a lone surrogate: not UTF-8, not JSON text
            raise UnencodableError(
                f"the result holds text that is not valid Unicode ({exc.reason}: "
                f"{exc.object[exc.start : exc.end]!r}), which JSON cannot carry"
            ) from exc
        except ValueError as exc:  # an int over sys.get_int_max_str_digits() digits
            raise UnencodableError(f"the result cannot be written as JSON: {exc}") from exc

    def decode(self, data: bytes, hint: Any) -> Any:
        if b'"$' not in data:  # no type tags anywhere: plain JSON is the value itself
            try:
                return loads(data)
            except ValueError as exc:
                raise CorruptRecordError(f"stored result is not valid JSON: {exc}") from exc
        try:
            allowed = self._allowed[hint]
        except (KeyError, TypeError):  # TypeError: an unhashable annotation
            allowed = {}
            _classes_in(hint, allowed)
            try:  # noqa: SIM105 - contextlib.suppress would cost cold-import time
                self._allowed[hint] = allowed
            except TypeError:  # an unhashable annotation: not cached
                pass
        try:
            tree = loads(data)
        except ValueError as exc:
            raise CorruptRecordError(f"stored result is not valid JSON: {exc}") from exc
        return self._dec(tree, allowed)

    # -- decoding -----------------------------------------------------------------------
    def _dec(self, v: Any, allowed: dict[str, type]) -> Any:
        if isinstance(v, list):
            return [self._dec(x, allowed) for x in v]
        if not isinstance(v, dict):
            return v
        tag = next(iter(v), None) if v else None
        if tag is None or not tag.startswith("$"):
            return {k: self._dec(x, allowed) for k, x in v.items()}
        body = v[tag]
        try:
            if tag == "$tuple":
                return tuple(self._dec(x, allowed) for x in body)
            if tag == "$dict":
                return {self._dec(k, allowed): self._dec(x, allowed) for k, x in body}
            if tag == "$set":
                return {self._dec(x, allowed) for x in body}
            if tag == "$frozenset":
                return frozenset(self._dec(x, allowed) for x in body)
            if tag == "$float":
                return float(body)
            if tag == "$enum":
                cls = _lookup(body, allowed)
                if not issubclass(cls, enum.Enum):
                    raise CorruptRecordError(f"{body} is not an enum")
                return cls(self._dec(v["v"], allowed))
            if tag == "$dataclass":
                cls = _lookup(body, allowed)
                if not _is_dataclass(cls):
                    raise CorruptRecordError(f"{body} is not a dataclass")
                return cls(**{k: self._dec(x, allowed) for k, x in v["v"].items()})
            if tag == "$model":
                cls = _lookup(body, allowed)
                if not _is_model(cls):
                    raise CorruptRecordError(f"{body} is not a pydantic model")
                return cls.model_validate(v["v"])  # type: ignore[attr-defined]
            decoder = _SIMPLE_DECODERS.get(tag)
            if decoder is not None:
                return decoder(body)
        except CorruptRecordError:
            raise
        except Exception as exc:
            raise CorruptRecordError(f"cannot decode stored {tag} value: {exc}") from exc
        raise CorruptRecordError(f"unknown tag {tag!r} in stored result")


# -- encoding -----------------------------------------------------------------------------
# JSON text is written directly, in one pass that also tags the types JSON lacks: on
# CPython 3.11 this is faster than tagging a copy of the value and handing it to the C
# encoder (which, among other things, would write tuples as lists behind our back).
def _write(v: Any, depth: int) -> str:
    """The JSON text of ``v``, JSON's own types as they are and the others tagged."""
    t = type(v)
    if t is dict:
        if depth >= _MAX_DEPTH:
            raise UnencodableError(f"the result is nested more than {_MAX_DEPTH} levels deep")
        parts = []
        for k, x in v.items():
            if type(k) is not str or k[:1] == "$":
                return _write_pairs(v, depth)
            tx = type(x)
            if tx is str:
                parts.append(_str(k) + ":" + _str(x))
            elif tx is int:
                parts.append(_str(k) + ":" + _int(x))
            else:
                parts.append(_str(k) + ":" + _write(x, depth + 1))
        return "{" + ",".join(parts) + "}"
    if t is list:
        if depth >= _MAX_DEPTH:
            raise UnencodableError(f"the result is nested more than {_MAX_DEPTH} levels deep")
        parts = []
        for x in v:
            tx = type(x)
            if tx is str:
                parts.append(_str(x))
            elif tx is int:
                parts.append(_int(x))
            else:
                parts.append(_write(x, depth + 1))
        return "[" + ",".join(parts) + "]"
    if t is str:
        return _str(v)
    if t is int:
        return _int(v)
    if v is None:
        return "null"
    if t is bool:
        return "true" if v else "false"
    if t is float:
        return _float(v) if math.isfinite(v) else '{"$float":' + _str(repr(v)) + "}"
    if depth >= _MAX_DEPTH:
        raise UnencodableError(f"the result is nested more than {_MAX_DEPTH} levels deep")
    if t is tuple:
        return '{"$tuple":' + _write(list(v), depth + 1) + "}"
    if isinstance(v, enum.Enum):
        return _tagged("$enum", _qualname(t), _write(v.value, depth + 1))
    if _is_dataclass(v) and not isinstance(v, type):
        fields = {name: getattr(v, name) for name in _init_fields(v)}
        return _tagged("$dataclass", _qualname(t), _write(fields, depth + 1))
    if _is_model(t):
        return _tagged("$model", _qualname(t), _DUMPS(v.model_dump(mode="json")))
    simple = _simple_encoder(t)
    if simple is not None:
        return "{" + _str(simple[0]) + ":" + _write(simple[1](v), depth + 1) + "}"
    if t in (set, frozenset):
        return "{" + _str("$" + t.__name__) + ":" + _write(list(v), depth + 1) + "}"
    if isinstance(v, (int, str, float)):  # subclasses of builtins (not enums)
        raise UnencodableError(f"subclass {t.__qualname__} of a builtin type is not encodable")
    raise UnencodableError(
        f"a result of type {t.__qualname__} cannot be stored as JSON; return JSON-like data, "
        "a dataclass or a pydantic model, or pass serializer="
    )


def _write_pairs(v: dict[Any, Any], depth: int) -> str:
    """A dict with non-string keys or ``$``-keys: ``{"$dict": [[key, value], ...]}``."""
    d = depth + 1
    pairs = ["[" + _write(k, d) + "," + _write(x, d) + "]" for k, x in v.items()]
    return '{"$dict":[' + ",".join(pairs) + "]}"


def _tagged(tag: str, class_name: str, body: str) -> str:
    """``{tag: class_name, "v": body}`` (``body`` is JSON text already)."""
    return "{" + _str(tag) + ":" + _str(class_name) + ',"v":' + body + "}"


def _b64encode(b: bytes) -> str:
    import base64

    return base64.b64encode(b).decode("ascii")


def _b64decode(s: str) -> bytes:
    import base64

    return base64.b64decode(s, validate=True)


def _from(module: str, path: str) -> Callable[[Any], Any]:
    """A decoder calling ``module.<dotted path>``, imported on first use (cold start)."""

    def decode(body: Any) -> Any:
        import importlib  # on first decode of such a value: not part of the cold import

        target: Any = importlib.import_module(module)
        for name in path.split("."):
            target = getattr(target, name)
        return target(body)

    return decode


def _timedelta(body: list[int]) -> Any:
    import datetime

    return datetime.timedelta(days=body[0], seconds=body[1], microseconds=body[2])


_SIMPLE_ENCODERS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    bytes: ("$bytes", _b64encode),
    bytearray: ("$bytearray", _b64encode),
}
_SIMPLE_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$bytes": _b64decode,
    "$bytearray": lambda s: bytearray(_b64decode(s)),
    "$datetime": _from("datetime", "datetime.fromisoformat"),
    "$date": _from("datetime", "date.fromisoformat"),
    "$time": _from("datetime", "time.fromisoformat"),
    "$timedelta": _timedelta,
    "$decimal": _from("decimal", "Decimal"),
    "$uuid": _from("uuid", "UUID"),
}


def _register(module: str) -> None:
    """Add the encoders of a standard module's types once that module is in use (a value
    of its types exists, so it is imported): nothing is imported for it up front."""
    if module == "datetime":
        import datetime as dt

        _SIMPLE_ENCODERS.update(
            {
                dt.datetime: ("$datetime", dt.datetime.isoformat),
                dt.date: ("$date", dt.date.isoformat),
                dt.time: ("$time", dt.time.isoformat),
                dt.timedelta: ("$timedelta", lambda t: [t.days, t.seconds, t.microseconds]),
            }
        )
    elif module == "decimal":
        import decimal

        _SIMPLE_ENCODERS[decimal.Decimal] = ("$decimal", str)
    elif module == "uuid":
        import uuid

        _SIMPLE_ENCODERS[uuid.UUID] = ("$uuid", str)


def _simple_encoder(t: type) -> tuple[str, Callable[[Any], Any]] | None:
    found = _SIMPLE_ENCODERS.get(t)
    if found is None and t.__module__ in ("datetime", "decimal", "uuid"):
        _register(t.__module__)
        found = _SIMPLE_ENCODERS.get(t)
    return found


# -- envelope ----------------------------------------------------------------------------
ENVELOPE_VERSION = 1
KIND_VALUE = ord("V")
KIND_ERROR = ord("E")
KIND_NOT_STORED = ord("N")


def envelope(kind: int, body: bytes) -> bytes:
    """Frame ``body`` as a stored result of ``kind``."""
    return bytes((ENVELOPE_VERSION, kind)) + body


def open_envelope(data: bytes) -> tuple[int, bytes]:
    """Split a stored result into (kind, body); refuse unknown versions and kinds."""
    if len(data) == 1 and data[0] == ENVELOPE_VERSION:
        raise CorruptRecordError("stored result is truncated (1 byte); forget the key")
    if len(data) < 2 or data[0] != ENVELOPE_VERSION:
        version = data[0] if data else None
        raise CorruptRecordError(
            f"stored result has format version {version!r}, this library reads "
            f"version {ENVELOPE_VERSION}; forget the key or upgrade idempotence"
        )
    if data[1] not in (KIND_VALUE, KIND_ERROR, KIND_NOT_STORED):
        raise CorruptRecordError(f"stored result has unknown kind {data[1]!r}")
    return data[1], data[2:]
