"""Key and fingerprint derivation: canonical JSON, a FIPS-safe hash, JMESPath selection.

Canonical JSON: keys sorted, no whitespace, UTF-8, NaN/Infinity refused. Objects JSON does
not have are written in one stable form: dataclasses and pydantic models as their fields,
datetimes/dates/times as ISO 8601, ``Decimal``/``UUID`` as strings, bytes as base64, sets
as sorted lists, enums as their value. The hash is SHA-256 (allowed under FIPS, unlike md5).
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import hashlib

from ._errors import InvalidKeyError
from ._json import make_dumps

__all__ = [
    "KeySelector",
    "canonical_json",
    "compile_selector",
    "digest",
    "is_missing",
    "list_digest",
]

KeySelector = Callable[[Any], Any]

_MAX_NAMESPACE = 200


def _default(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__") and not isinstance(obj, type):
        import dataclasses  # already imported: obj is a dataclass

        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    dump = getattr(obj, "model_dump", None)
    if callable(dump):  # pydantic v2 model
        return dump(mode="json")
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
    if isinstance(obj, enum.Enum):
        return obj.value
    raise TypeError(f"objects of type {type(obj).__qualname__} have no canonical JSON form")


_CANONICAL = make_dumps(sort_keys=True, default=_default)


def _invalid(exc: Exception) -> InvalidKeyError:
    return InvalidKeyError(
        f"cannot derive an idempotency key or fingerprint from this data ({exc}). "
        "Select JSON-representable fields with key=/fingerprint= (a JMESPath expression "
        "or a function), or convert the value first."
    )


def canonical_json(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (see the module docstring).

    Raises :class:`InvalidKeyError` when ``obj`` has no canonical form.
    """
    try:
        return _CANONICAL(obj).encode("utf-8")
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
            data = (prefix + _CANONICAL(x) + suffix).encode("utf-8")
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
        prefix = "".join(["[", *(_CANONICAL(item) + "," for item in head)])
    except (TypeError, ValueError, RecursionError):
        return lambda x: label + digest([*head, x])  # raises on every call, as digest would
    return _digester(prefix, "]", label)


def is_missing(value: Any) -> bool:
    """Whether selected key material counts as absent: ``None``, ``""``, or a list whose
    items are all absent (a JMESPath multi-select that found nothing)."""
    if value is None or value == "":
        return True
    if isinstance(value, list):
        return all(is_missing(v) for v in value)
    return False


def _plain(payload: Any) -> Any:
    """``payload`` as JSON-like data JMESPath can walk (dicts and lists pass as they are)."""
    if isinstance(payload, (dict, list, str, int, float, bool)) or payload is None:
        return payload
    if isinstance(payload, Mapping):
        return dict(payload)
    return json.loads(canonical_json(payload))


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
    a step is missing or not an object); other payloads (dataclasses, models...) go through
    JMESPath, compiled on first need."""
    path = spec.split(".")
    fallback: list[KeySelector] = []

    def select(payload: Any) -> Any:
        value = payload
        for step in path:
            if type(value) is not dict:
                if value is not payload:
                    return None
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
        except (jmespath.exceptions.JMESPathError, ValueError) as exc:
            raise InvalidKeyError(
                f"{what} expression {spec!r} failed on this payload: {exc}"
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
