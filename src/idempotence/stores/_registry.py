"""Store URLs: a registry from URL scheme to store factory, and the one query parser every
built-in store uses (so ``Store(url)``, ``Store.from_url(url)``, :func:`store_from_url` and
``Idempotency(url)`` read a URL identically)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from ._base import Store

__all__ = ["register_scheme", "store_from_url", "validate_store_url"]

StoreFactory = Callable[[str], Store]

# scheme -> factory, or "module:Class" resolved (and imported) on first use.
_SCHEMES: dict[str, StoreFactory | str] = {
    "memory": "idempotence.stores._memory:MemoryStore",
    "sqlite": "idempotence.stores._sqlite:SQLiteStore",
    "dynamodb": "idempotence.stores._dynamodb:DynamoDBStore",
    "redis": "idempotence.stores._redis:RedisStore",
    "rediss": "idempotence.stores._redis:RedisStore",
    "redis+cluster": "idempotence.stores._redis:RedisStore",
    "rediss+cluster": "idempotence.stores._redis:RedisStore",
    "postgres": "idempotence.stores._postgres:PostgresStore",
    "postgresql": "idempotence.stores._postgres:PostgresStore",
    "mysql": "idempotence.stores._mysql:MySQLStore",
    "mariadb": "idempotence.stores._mysql:MySQLStore",
}
#: Built-in classes, resolved from ``_SCHEMES`` on first use.
_CLASSES: dict[str, Any] = {}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Make ``store_from_url("scheme://...")`` call ``factory(url)``. Replaces an earlier
    registration of the same scheme."""
    _SCHEMES[scheme.lower()] = factory
    _CLASSES.pop(scheme.lower(), None)


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else url.partition(":")[0].lower()


def _target(url: str) -> tuple[StoreFactory, Any]:
    """``(factory, built-in class or None)`` of the URL's scheme; ValueError if unknown."""
    if not isinstance(url, str):
        raise TypeError(f"a store URL must be a string, got {type(url).__name__}")
    scheme = _scheme(url)
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ValueError(f"unknown store URL scheme {scheme!r}; known: {known}")
    if isinstance(target, str):
        cls = _CLASSES.get(scheme)
        if cls is None:
            module_name, _, attr = target.partition(":")
            import importlib  # on first use: not part of the cold import

            cls = _CLASSES[scheme] = getattr(importlib.import_module(module_name), attr)
        return cls.from_url, cls
    return target, None


def validate_store_url(url: str) -> None:
    """Check a store URL without connecting: the scheme is known and, for the built-in
    stores, the location, table name and query options are valid (unknown options are
    refused, naming the known ones). Raises ``ValueError``. A scheme added with
    :func:`register_scheme` is only checked for being registered."""
    url, large = split_large_result_options(url)
    _factory, cls = _target(url)
    if cls is not None:
        cls.parse_url(url)
    if large:
        _large_result_kwargs(large)


def store_from_url(url: str) -> Store:
    """Build a store from a URL, e.g. ``sqlite:///idempotence.db``, ``memory://``,
    ``redis://localhost:6379/0``, ``postgresql://host/db?table=idempotency``,
    ``dynamodb://table?region=eu-west-1``. Nothing is connected yet.

    Raises ``ValueError`` for an unknown scheme or an invalid or unknown option, and
    :class:`~idempotence.MissingDependencyError` when the backend's extra is not installed.
    """
    url, large = split_large_result_options(url)
    factory, _cls = _target(url)
    store = factory(url)
    if not large:
        return store
    from ._offload import LargeResultStore

    return LargeResultStore(store, **_large_result_kwargs(large))


#: Query options of any store URL that wrap the store in a
#: :class:`~idempotence.stores.LargeResultStore` (see its parameters).
LARGE_RESULT_OPTIONS = ("offload", "compress_over", "offload_over", "max_offload_bytes")


def split_large_result_options(url: str) -> tuple[str, dict[str, str]]:
    """``(url without the large-result options, those options)``. The rest of the URL is
    kept byte for byte."""
    if "?" not in url:
        return url, {}
    from urllib.parse import parse_qsl, unquote_plus  # on first parse: not a cold-import cost

    base, _, rest = url.partition("?")
    query, hash_, fragment = rest.partition("#")
    kept: list[str] = []
    found: dict[str, str] = {}
    for part in query.split("&"):
        name, _, _value = part.partition("=")
        if unquote_plus(name) in LARGE_RESULT_OPTIONS:
            found.update(parse_qsl(part, keep_blank_values=True))
        else:
            kept.append(part)
    if not found:
        return url, {}
    query = "&".join(p for p in kept if p)
    return base + ("?" + query if query else "") + hash_ + fragment, found


def _large_result_kwargs(options: Mapping[str, str]) -> dict[str, Any]:
    """The :class:`LargeResultStore` keywords of the large-result URL options (checked)."""
    kwargs: dict[str, Any] = {}
    offload = options.get("offload")
    if offload is not None:
        from ._offload import parse_offload_url

        parse_offload_url(offload)  # ValueError naming the expected form
        kwargs["offload"] = offload
    for name in LARGE_RESULT_OPTIONS[1:]:
        text = options.get(name)
        if text is None:
            continue
        if not text.strip().isdigit():
            raise ValueError(f"store URL option {name!r} must be a whole number of bytes")
        kwargs[name] = int(text)
    return kwargs


# -- the shared query parser ---------------------------------------------------------------
def url_query(
    url: str, known: Collection[str], *, extra: Callable[[str], bool] | None = None
) -> dict[str, str]:
    """The query options of ``url`` (the last value of a repeated one wins). An option
    neither in ``known`` nor accepted by ``extra(name)`` raises ``ValueError`` listing
    ``known``. Values are never echoed (they may hold secrets)."""
    from urllib.parse import parse_qsl, urlsplit  # on first parse: not a cold-import cost

    options: dict[str, str] = {}
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name not in known and (extra is None or not extra(name)):
            raise ValueError(
                f"unknown option {name!r} in the {_scheme(url)}:// store URL; "
                f"known options: {', '.join(sorted(known)) or '(none)'}"
            )
        options[name] = value
    return options


def option_bool(options: Mapping[str, str], name: str, default: bool) -> bool:
    """A boolean option (``1/true/yes/on`` or ``0/false/no/off``)."""
    text = options.get(name)
    if text is None:
        return default
    if text.strip().lower() in _TRUE:
        return True
    if text.strip().lower() in _FALSE:
        return False
    raise ValueError(f"store URL option {name!r} must be true or false (1/0, yes/no, on/off)")


def option_number(
    options: Mapping[str, str], name: str, default: float, *, none: bool = False
) -> float | None:
    """A positive number option (seconds, a size); with ``none=True`` also ``none``/``off``
    for no limit."""
    text = options.get(name)
    if text is None:
        return default
    if none and text.strip().lower() in {"none", "off", "0", ""}:
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value != float("inf")):
        raise ValueError(
            f"store URL option {name!r} must be a positive number" + (" or 'none'" if none else "")
        )
    return value


def option_sweep_every(options: Mapping[str, str]) -> float | None:
    """The ``sweep_every`` option (seconds between in-process sweeps of expired records,
    finite and above 0), or ``None`` when it is absent (no sweep)."""
    if "sweep_every" not in options:
        return None
    return option_number(options, "sweep_every", 0.0)


def merge_option(name: str, given: Any, default: Any, from_url: Any) -> Any:
    """One constructor option given both as a keyword (``given``; ``default`` when not
    given) and in the URL (``from_url``): the one that is set wins; both set and different
    is a ``ValueError``."""
    if given == default:
        return from_url
    if from_url != default and from_url != given:
        raise ValueError(
            f"{name!r} is given both in the store URL and as an argument; give it once"
        )
    return given
