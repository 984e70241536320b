"""Result encoding: JSON with type tags, rebuilt type-faithfully, never pickle.

The default :class:`JSONSerializer` writes plain JSON for JSON's own types and a tagged
object (``{"$tuple": [...]}``) for the rest, so ``{}``, ``0``, ``False``, ``None``, tuples,
sets, bytes, datetimes, ``Decimal``, ``UUID``, enums, dataclasses and pydantic models come
back equal and of the same type. Classes (enums, dataclasses, models) are rebuilt only if
they are reachable from the ``hint`` given to :meth:`JSONSerializer.decode` (the function's
return annotation, with ``replay_types`` added): through ``Optional``/``Union``/``list``/
``dict``/``tuple``/``Annotated`` and dataclass and model fields. A record naming any other
class is a :class:`CorruptRecordError`; a record never makes us import a module, look up a
module attribute it names, or call anything but a declared class's constructor. The
standard tagged types (datetime, ``Decimal``, ``UUID``...) are fixed here, not named by
records. :meth:`JSONSerializer.check_replayable` lets the writer refuse, at store time, a
result that a replay could not rebuild.

Stored JSON nests at most :data:`MAX_DEPTH` arrays/objects: the encoder refuses deeper
values, the decoder refuses deeper records (:class:`CorruptRecordError`, never
``RecursionError``).

A stored record is an :data:`envelope`: one version byte, one kind byte, then the body:
``V`` a value (serializer bytes), ``E`` an exception stored through ``store_errors``, ``N``
a result that could not be stored.

One file (over 400 lines): the encoder and the decoder must agree on every type tag; the tag
table (``_register``) keeps both directions side by side, so they cannot drift apart.
"""

from __future__ import annotations

import enum
import math
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
    annotation (or ``None``) - as ``Union[annotation, *replay_types]`` when the config
    lists ``replay_types`` - and names the classes a replay may rebuild.

    A serializer may also define ``check_replayable(data, hint)``, raising
    :class:`UnencodableError` when ``decode(data, hint)`` would refuse ``data``: the result
    is then completed as "result not stored" at once instead of failing every replay."""

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


_MAX_HINT_DEPTH = 20
_MAX_HINT_NODES = 1000


def _classes_in(hint: Any, found: dict[str, type]) -> None:
    """Collect the enum/dataclass/model classes reachable from a type annotation: through
    ``Optional``/``Union``/``list``/``dict``/``tuple``/``Annotated`` (its first argument),
    ``Literal`` enum members, ``NewType`` and type aliases, and the fields of dataclasses and
    pydantic models, recursively (bounded: 20 levels, 1,000 annotations)."""
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(hint, 0)]
    while stack and len(seen) < _MAX_HINT_NODES:
        hint, depth = stack.pop()
        if hint is None or depth > _MAX_HINT_DEPTH or id(hint) in seen:
            continue
        seen.add(id(hint))
        try:  # an odd annotation (a broken metaclass, a custom alias) names nothing
            stack.extend((h, depth + 1) for h in _hint_children(hint, found))
        except Exception:  # skipping it only narrows what replays rebuild
            continue


def _hint_children(hint: Any, found: dict[str, type]) -> list[Any]:
    """Record ``hint`` in ``found`` if it is a rebuildable class; the annotations under it."""
    origin = typing.get_origin(hint)
    if origin is None and isinstance(hint, type):
        if issubclass(hint, enum.Enum) or _is_dataclass(hint) or _is_model(hint):
            found.setdefault(_qualname(hint), hint)
        return _field_hints(hint)
    if origin is typing.Annotated:
        return [typing.get_args(hint)[0]]
    if origin is typing.Literal:
        return [type(arg) for arg in typing.get_args(hint) if isinstance(arg, enum.Enum)]
    nested = [getattr(hint, "__supertype__", None), getattr(hint, "__value__", None)]
    return [h for h in nested if h is not None] + list(typing.get_args(hint))


def _field_hints(cls: type) -> list[Any]:
    """The annotations of a dataclass's or pydantic model's fields (none for other types)."""
    if _is_dataclass(cls):
        try:
            return list(typing.get_type_hints(cls).values())
        except Exception:  # an unresolvable forward reference: the resolvable ones
            return [
                h for h in getattr(cls, "__annotations__", {}).values() if not isinstance(h, str)
            ]
    if _is_model(cls):
        fields = getattr(cls, "model_fields", None)
        if isinstance(fields, dict):
            return [getattr(f, "annotation", None) for f in fields.values()]
    return []


def _is_model(cls: type) -> bool:
    return callable(getattr(cls, "model_validate", None)) and callable(
        getattr(cls, "model_dump", None)
    )


def _undeclared(name: str) -> str:
    """What to do about a class that a replay may not rebuild (``name`` is bounded)."""
    return (
        f"{name[:200]!r} is not reachable from the function's return annotation: annotate the "
        "return type with it (e.g. `-> Order`, `-> list[Order] | None`) or list it in "
        "replay_types="
    )


def _lookup(name: Any, allowed: dict[str, type]) -> type:
    """The declared class stored as ``name``; never a module lookup or an import."""
    cls = allowed.get(name) if type(name) is str else None
    if cls is None:
        shown = name if type(name) is str else type(name).__name__
        raise CorruptRecordError(
            f"the stored result names a class that replays may not rebuild: {_undeclared(shown)}"
        )
    return cls


_DUMPS = make_dumps(sort_keys=False)
#: The deepest nesting of JSON arrays/objects that is stored or read back.
MAX_DEPTH = 200
_MAX_DEPTH = MAX_DEPTH
_CLASS_TAGS = (b'{"$dataclass":', b'{"$model":', b'{"$enum":')
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
        """The value stored as ``data``; only classes reachable from ``hint`` are rebuilt.
        Raises :class:`CorruptRecordError` for anything else (invalid JSON, an unknown tag,
        an undeclared class, nesting deeper than :data:`MAX_DEPTH`)."""
        try:
            tree = loads(data)
        except RecursionError as exc:
            raise CorruptRecordError(
                f"stored result is nested more than {MAX_DEPTH} levels deep"
            ) from exc
        except ValueError as exc:
            raise CorruptRecordError(f"stored result is not valid JSON: {exc}") from exc
        if b'"$' not in data:  # no type tags anywhere: plain JSON is the value itself
            # Fewer brackets than the limit cannot nest deeper: no walk for most records.
            if data.count(b"[") + data.count(b"{") > MAX_DEPTH and _deeper(tree, MAX_DEPTH):
                raise _too_deep()
            return tree
        return self._dec(tree, self._allowed_for(hint), 1)

    def check_replayable(self, data: bytes, hint: Any) -> None:
        """Raise :class:`UnencodableError` if ``data`` (from :meth:`encode`) names a class
        that ``decode(data, hint)`` would refuse, saying what to declare."""
        if b'"$' not in data or not any(tag in data for tag in _CLASS_TAGS):
            return
        allowed = self._allowed_for(hint)
        for name in _class_names(loads(data)):
            if name not in allowed:
                raise UnencodableError(
                    f"the result holds a class a replay would not rebuild: {_undeclared(name)}"
                )

    def _allowed_for(self, hint: Any) -> dict[str, type]:
        try:
            return self._allowed[hint]
        except (KeyError, TypeError):  # TypeError: an unhashable annotation
            allowed: dict[str, type] = {}
            _classes_in(hint, allowed)
            try:  # noqa: SIM105 - contextlib.suppress would cost cold-import time
                self._allowed[hint] = allowed
            except TypeError:  # an unhashable annotation: not cached
                pass
            return allowed

    # -- decoding -----------------------------------------------------------------------
    def _dec(self, v: Any, allowed: dict[str, type], depth: int) -> Any:
        """``v`` decoded; ``depth`` is its JSON nesting level (if it is an array/object)."""
        if isinstance(v, list):
            if depth > MAX_DEPTH:
                raise _too_deep()
            return [self._dec(x, allowed, depth + 1) for x in v]
        if not isinstance(v, dict):
            return v
        if depth > MAX_DEPTH:
            raise _too_deep()
        tag = next(iter(v), None) if v else None
        d = depth + 1
        if tag is None or not tag.startswith("$"):
            return {k: self._dec(x, allowed, d) for k, x in v.items()}
        body = v[tag]
        try:
            if tag == "$tuple":
                return tuple(self._dec(x, allowed, d + 1) for x in _array(body, d))
            if tag == "$dict":  # {"$dict": [[k, x], ...]}: k and x three levels down
                return {
                    self._dec(k, allowed, d + 2): self._dec(x, allowed, d + 2)
                    for k, x in (_pair(p, d + 1) for p in _array(body, d))
                }
            if tag == "$set":
                return {self._dec(x, allowed, d + 1) for x in _array(body, d)}
            if tag == "$frozenset":
                return frozenset(self._dec(x, allowed, d + 1) for x in _array(body, d))
            if tag == "$float":
                return float(body)
            if tag == "$enum":
                cls = _lookup(body, allowed)
                if not issubclass(cls, enum.Enum):
                    raise CorruptRecordError(f"stored $enum names {body}, which is not an enum")
                return cls(self._dec(v["v"], allowed, d))
            if tag == "$dataclass":
                cls = _lookup(body, allowed)
                if not _is_dataclass(cls):
                    raise CorruptRecordError(
                        f"stored $dataclass names {body}, which is not a dataclass"
                    )
                fields = v["v"]
                if not isinstance(fields, dict) or d > MAX_DEPTH:
                    raise TypeError("dataclass fields are not an object within the depth limit")
                return cls(**{k: self._dec(x, allowed, d + 1) for k, x in fields.items()})
            if tag == "$model":
                cls = _lookup(body, allowed)
                if not _is_model(cls):
                    raise CorruptRecordError(
                        f"stored $model names {body}, which is not a pydantic model"
                    )
                if _deeper(v["v"], MAX_DEPTH - depth):
                    raise _too_deep()
                return cls.model_validate(v["v"])  # type: ignore[attr-defined]
            decoder = _SIMPLE_DECODERS.get(tag)
            if decoder is not None:
                return decoder(body)
        except CorruptRecordError:
            raise
        except Exception as exc:
            raise CorruptRecordError(
                f"cannot decode stored {tag[:40]} value ({type(exc).__name__})"
            ) from exc
        raise CorruptRecordError(f"unknown tag {tag[:40]!r} in stored result")


def _too_deep() -> CorruptRecordError:
    return CorruptRecordError(f"stored result is nested more than {MAX_DEPTH} levels deep")


def _array(body: Any, depth: int) -> list[Any]:
    """``body`` if it is a JSON array allowed at nesting level ``depth``."""
    if type(body) is not list:
        raise TypeError("the tagged body is not an array")
    if depth > MAX_DEPTH:
        raise _too_deep()
    return body


def _pair(p: Any, depth: int) -> tuple[Any, Any]:
    k, x = _array(p, depth)
    return k, x


def _deeper(tree: Any, limit: int) -> bool:
    """Whether ``tree`` (parsed JSON) nests more than ``limit`` arrays/objects (iterative)."""
    stack: list[tuple[Any, int]] = [(tree, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            continue
        if depth > limit:
            return True
        stack.extend((x, depth + 1) for x in v if isinstance(x, (list, dict)))
    return False


def _class_names(tree: Any) -> list[str]:
    """The class names in the ``$enum``/``$dataclass``/``$model`` tags of ``tree``."""
    names: list[str] = []
    stack = [tree]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            tag = next(iter(v), None)
            if tag in ("$enum", "$dataclass", "$model"):
                names.append(v[tag])
                if tag != "$model":  # a model's body is its own JSON, not tagged
                    stack.append(v.get("v"))
            else:
                stack.extend(v.values())
    return names


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
    if t is float and math.isfinite(v):
        return _float(v)
    if depth >= _MAX_DEPTH:
        raise UnencodableError(f"the result is nested more than {_MAX_DEPTH} levels deep")
    if t is float:  # here only when not finite: a tagged object, one level down
        return _float(v) if math.isfinite(v) else '{"$float":' + _str(repr(v)) + "}"
    if t is tuple:
        return '{"$tuple":' + _write(list(v), depth + 1) + "}"
    if isinstance(v, enum.Enum):
        return _tagged("$enum", _qualname(t), _write(v.value, depth + 1))
    if _is_dataclass(v) and not isinstance(v, type):
        fields = {name: getattr(v, name) for name in _init_fields(v)}
        return _tagged("$dataclass", _qualname(t), _write(fields, depth + 1))
    if _is_model(t):
        dumped = v.model_dump(mode="json")
        if _deeper(dumped, _MAX_DEPTH - depth - 1):
            raise UnencodableError(f"the result is nested more than {_MAX_DEPTH} levels deep")
        return _tagged("$model", _qualname(t), _DUMPS(dumped))
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
    """A dict with non-string keys or ``$``-keys: ``{"$dict": [[key, value], ...]}`` (the
    pairs' arrays are two levels below the object, keys and values three)."""
    if depth + 3 > _MAX_DEPTH:
        raise UnencodableError(f"the result is nested more than {_MAX_DEPTH} levels deep")
    d = depth + 3
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
