"""Key and fingerprint derivation: canonical JSON, a FIPS-safe hash, JMESPath selection.

Canonical JSON: keys sorted, no whitespace, UTF-8, NaN/Infinity refused, floats written as
their shortest round-trip ``repr``. Objects JSON does not have are written in one stable
form: dataclasses and pydantic models as their fields, other mappings (``MappingProxyType``,
Powertools event data classes) as objects, lone surrogates in strings (which JSON escapes
such as ``"\\ud800"`` produce) as their UTF-8 bytes (``surrogatepass``: no valid string
has them), datetimes/dates/times as ISO 8601,
``Decimal``/``UUID`` as strings, bytes as base64, sets as sorted lists, enums as their value.

A mapping with keys that are not strings (``{1: "a"}``) is not written as the JSON object
it would collide with (``{"1": "a"}``): the whole value is then written in a tagged form
(objects as ``["d", [[key, value], ...]]``, lists as ``["l", [...]]``) behind a NUL byte
that no JSON text starts with. Nesting deeper than :data:`MAX_DEPTH` containers is refused
with :class:`InvalidKeyError`. The hash is SHA-256 (allowed under FIPS, unlike md5).

One file (over 400 lines): canonical JSON, the hash and the selectors are the one derivation
of a key and a fingerprint, used together by every front-end; the selectors' output is what
canonical JSON writes.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import hashlib

from ._errors import InvalidKeyError
from ._json import make_dumps

__all__ = [
    "MAX_DEPTH",
    "KeySelector",
    "canonical_json",
    "compile_selector",
    "describe",
    "digest",
    "is_missing",
    "list_digest",
    "loads_exact",
]

KeySelector = Callable[[Any], Any]

_MAX_NAMESPACE = 200

#: Containers (objects, lists) nested deeper than this in key or fingerprint material are
#: refused with :class:`InvalidKeyError` (instead of a ``RecursionError`` or a slow walk).
MAX_DEPTH = 200

_PLAIN_LEAVES = (str, int, float, bool, type(None))


class _TaggedForm(Exception):
    """Raised inside the fast encoder when the value needs the tagged form (a mapping with
    keys that are not strings)."""


_LEAF_TYPES = frozenset(_PLAIN_LEAVES)
_STR_ONLY = {str}


def _check(obj: Any) -> None:
    """Walk the containers of ``obj`` level by level: :class:`InvalidKeyError` when nested
    deeper than :data:`MAX_DEPTH`, :class:`_TaggedForm` when a mapping has keys that are
    not strings. (Other objects are checked when ``_default`` converts them.)"""
    leaves = _LEAF_TYPES
    level = [obj]
    depth = 0
    while level:
        below: list[Any] = []
        for value in level:
            if isinstance(value, dict):
                if value and set(map(type, value)) != _STR_ONLY:
                    raise _TaggedForm
                below += [v for v in value.values() if type(v) not in leaves]
            elif isinstance(value, (list, tuple)):
                below += [v for v in value if type(v) not in leaves]
        if depth >= MAX_DEPTH - 1 and any(isinstance(v, (dict, list, tuple)) for v in below):
            raise _too_deep()
        level = below
        depth += 1


def _too_deep() -> InvalidKeyError:
    return InvalidKeyError(
        f"cannot derive an idempotency key or fingerprint from data nested deeper than "
        f"{MAX_DEPTH} levels. Select JSON-representable fields with key=/fingerprint= (a "
        "JMESPath expression or a function) that identify the request."
    )


def _fields(obj: Any) -> Any:
    """The JSON-like form of a dataclass, pydantic model or non-dict mapping, or ``obj``
    itself when it is none of those."""
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        import dataclasses  # already imported: obj is a dataclass

        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None)
    if callable(dump) and not isinstance(obj, type):  # pydantic v2 model
        return dump(mode="json")
    return obj


def _default(obj: Any) -> Any:
    form = _fields(obj)
    if form is not obj:
        _check(form)  # the fields may hold non-string keys or deep nesting
        return form
    # Types of modules that may not be imported yet (their values imply they are).
    dt = sys.modules.get("datetime")
    if dt is not None:
        if isinstance(obj, (dt.datetime, dt.date, dt.time)):
            return obj.isoformat()
        if isinstance(obj, dt.timedelta):
            return obj.total_seconds()
    decimal = sys.modules.get("decimal")
    if decimal is not None and isinstance(obj, decimal.Decimal):
        return str(obj)
    uuid = sys.modules.get("uuid")
    if uuid is not None and isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        import base64

        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=canonical_json)
    if isinstance(obj, str):  # a str subclass the C encoder did not take as a string
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"objects of type {type(obj).__qualname__} have no canonical JSON form")


_FAST = make_dumps(sort_keys=True, default=_default)


def _tag(obj: Any, depth: int = 0) -> Any:
    """The tagged form of ``obj`` (see the module docstring)."""
    if isinstance(obj, _PLAIN_LEAVES):
        return obj
    if depth > MAX_DEPTH:
        raise _too_deep()
    form = _fields(obj)
    if isinstance(form, dict):
        pairs = [[_tag(k, depth + 1), _tag(v, depth + 1)] for k, v in form.items()]
        pairs.sort(key=lambda kv: _TAGGED(kv[0]))
        return ["d", pairs]
    if isinstance(form, (list, tuple)):
        return ["l", [_tag(v, depth + 1) for v in form]]
    if isinstance(form, (set, frozenset)):
        return ["l", sorted((_tag(v, depth + 1) for v in form), key=_TAGGED)]
    return _tag(_default(form), depth + 1)  # a leaf's stable form (TypeError if none)


_TAGGED = make_dumps(sort_keys=True)


def _canonical_text(obj: Any) -> str:
    """The canonical JSON text of ``obj``, or its tagged form behind a NUL byte."""
    try:
        if not isinstance(obj, _PLAIN_LEAVES):
            _check(obj)
        return _FAST(obj)
    except _TaggedForm:
        return "\x00" + _TAGGED(_tag(obj))


def _exact_float(literal: str) -> Any:
    """A JSON number with a fraction or exponent as a float when the float holds its value
    exactly (``1.5``, ``1.50``, ``1e3``: formatting differences are one value), else as a
    ``Decimal`` of the text (``1.0000000000000001``, ``1e400``), so requests that differ in
    a digit never share a key or a fingerprint."""
    value = float(literal)
    if repr(value) == literal:
        return value
    import decimal
    import math

    exact = decimal.Decimal(literal)
    return value if math.isfinite(value) and decimal.Decimal(value) == exact else exact


def loads_exact(text: str | bytes) -> Any:
    """``json.loads`` keeping every number's precision (see :func:`_exact_float`)."""
    import json

    return json.loads(text, parse_float=_exact_float)


def _invalid(exc: Exception) -> InvalidKeyError:
    if isinstance(exc, InvalidKeyError):
        return exc
    if isinstance(exc, RecursionError):
        reason = f"it is nested too deeply (more than {MAX_DEPTH} levels) or holds a cycle"
    elif isinstance(exc, TypeError):
        reason = str(exc)  # our own or the encoder's message: type names, never values
    elif "float" in str(exc):
        reason = "it holds NaN or an infinite float, which JSON cannot represent"
    else:
        reason = f"a value failed to convert ({type(exc).__name__})"
    return InvalidKeyError(
        f"cannot derive an idempotency key or fingerprint from this data: {reason}. "
        "Select JSON-representable fields with key=/fingerprint= (a JMESPath expression "
        "or a function), or convert the value first."
    )


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (see the module docstring).

    Raises :class:`InvalidKeyError` when ``obj`` has no canonical form.
    """
    try:
        return _canonical_text(obj).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError, RecursionError) as exc:
        raise _invalid(exc) from exc


def _load_sha256(data: bytes) -> hashlib._Hash:
    """hashlib (OpenSSL) is loaded on first use."""
    global _sha256
    import hashlib

    _sha256 = hashlib.sha256
    return _sha256(data)


_sha256: Callable[[bytes], hashlib._Hash] = _load_sha256


def _digester(prefix: str, suffix: str, label: str = "") -> Callable[[Any], str]:
    """``lambda x: label + sha256(prefix + canonical_json(x) + suffix)`` as 32 hex digits,
    with the canonical-JSON errors of :func:`canonical_json`."""

    def digest_of(x: Any) -> str:
        try:
            data = (prefix + _canonical_text(x) + suffix).encode("utf-8", "surrogatepass")
        except (TypeError, ValueError, RecursionError) as exc:
            raise _invalid(exc) from exc
        return label + _sha256(data).hexdigest()[:32]

    return digest_of


digest: Callable[[Any], str] = _digester("", "")
digest.__doc__ = """A 128-bit SHA-256 digest (hex) of the canonical JSON of ``material``."""


def list_digest(head: tuple[Any, ...], label: str = "") -> Callable[[Any], str]:
    """``lambda x: label + digest([*head, x])``, with the canonical JSON of ``head`` written
    once (a JSON array is its items' canonical forms between brackets, joined by commas)."""
    try:
        prefix = "".join(["[", *(_canonical_text(item) + "," for item in head)])
    except (TypeError, ValueError, RecursionError):
        return lambda x: label + digest([*head, x])  # raises on every call, as digest would
    return _digester(prefix, "]", label)


def is_missing(value: Any) -> bool:
    """Whether selected key material counts as absent: ``None``, ``""``, ``{}``, or a list
    whose items are all absent (a JMESPath multi-select that found nothing). A list nested
    deeper than :data:`MAX_DEPTH` raises :class:`InvalidKeyError`."""
    if value is None or value == "" or (type(value) is dict and not value):
        return True
    if not isinstance(value, list):
        return False
    stack: list[tuple[list[Any], int]] = [(value, 0)]
    while stack:
        items, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise _too_deep()
        for item in items:
            if isinstance(item, list):
                stack.append((item, depth + 1))
            elif not (item is None or item == "" or (type(item) is dict and not item)):
                return False
    return True


def describe(value: Any) -> str:
    """What selected key material looks like, without its value (for error messages)."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, Mapping):
        return "an empty object" if not value else "an object"
    if isinstance(value, list):
        return f"a list of {len(value)} empty item(s)" if value else "an empty list"
    return f"a value of type {type(value).__name__}"


def _plain(payload: Any, depth: int = 0) -> Any:
    """``payload`` as JSON-like data JMESPath can walk: dataclasses, pydantic models and
    other mappings nested anywhere become dicts, tuples become lists; dicts and lists that
    hold none of those pass as they are. Leaves with no JSON form (a client, a lock) stay
    as they are: they only fail if they are selected."""
    if isinstance(payload, _PLAIN_LEAVES):
        return payload
    if depth > MAX_DEPTH:
        raise _too_deep()
    if type(payload) is dict:
        out: dict[Any, Any] | None = None
        for k, v in payload.items():
            p = _plain(v, depth + 1)
            if p is not v and out is None:
                out = dict(payload)
            if out is not None:
                out[k] = p
        return payload if out is None else out
    if type(payload) is list or isinstance(payload, tuple):
        items = [_plain(v, depth + 1) for v in payload]
        if type(payload) is list and all(a is b for a, b in zip(items, payload, strict=True)):
            return payload
        return items
    form = _fields(payload)
    if form is payload:
        return payload  # a leaf: canonicalized (or refused) only if selected
    return _plain(form, depth + 1)


def _takes_arguments(fn: Callable[..., Any]) -> bool:
    """Whether a ``key=``/``scope=`` function declares a second positional parameter (it
    is then called with the payload and the call's bound arguments)."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: one argument
        return False
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    return len(positional) >= 2 and positional[1].default is inspect.Parameter.empty


def compile_selector(spec: str | KeySelector, *, what: str) -> KeySelector:
    """Turn a JMESPath expression or a function into a selector on the payload.

    JMESPath expressions are compiled once; they support ``json()`` /
    ``powertools_json()`` to parse a JSON string such as an HTTP body.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise TypeError(f"{what} must be a JMESPath expression (str) or a function")
    if all(step.isidentifier() and step.isascii() for step in spec.split(".")):
        return _dotted_selector(spec, what)
    return _jmespath_selector(spec, what)


def _dotted_selector(spec: str, what: str) -> KeySelector:
    """``a.b.c`` on plain dicts without the JMESPath interpreter (same result: ``None`` when
    a step is missing or not an object); other values on the path (dataclasses, models,
    mappings...) go through JMESPath, compiled on first need."""
    path = spec.split(".")
    fallback: list[KeySelector] = []

    def select(payload: Any) -> Any:
        value = payload
        for step in path:
            if type(value) is not dict:
                if isinstance(value, (*_PLAIN_LEAVES, list)):
                    return None  # not an object: JMESPath says null too
                if not fallback:
                    fallback.append(_jmespath_selector(spec, what))
                return fallback[0](payload)
            value = value.get(step)
        return value

    return select


def _jmespath_selector(spec: str, what: str) -> KeySelector:
    import jmespath

    from ._jmespath import OPTIONS

    try:
        expression = jmespath.compile(spec)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression for {what}: {spec!r}: {exc}") from exc

    def select(payload: Any) -> Any:
        try:
            return expression.search(_plain(payload), options=OPTIONS)
        except InvalidKeyError:
            raise
        except (jmespath.exceptions.JMESPathError, ValueError, RecursionError) as exc:
            # The exception's own text may quote the data (JMESPath's type errors do):
            # name the expression and the kind of failure, never the value.
            raise InvalidKeyError(
                f"{what} expression {spec!r} failed on this payload "
                f"({type(exc).__name__}; the values are not shown). Check that the "
                "expression matches the payload's shape and the types its functions expect."
            ) from exc

    return select


def check_namespace(namespace: str) -> str:
    """Validate a key namespace: 1-200 printable ASCII characters."""
    if (
        not namespace
        or len(namespace) > _MAX_NAMESPACE
        or not namespace.isprintable()
        or not namespace.isascii()
    ):
        raise InvalidKeyError(
            f"invalid namespace {namespace!r}: use 1-{_MAX_NAMESPACE} printable ASCII characters"
        )
    return namespace
