"""``IdempotencyConfig``: every option, validated once, immutable."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import datetime as dt

from ._codec import JSONSerializer, Serializer
from ._record import Record

__all__ = ["MAX_SECONDS", "IdempotencyConfig", "seconds"]

KeySpec = str | Callable[[Any], Any]

# The options, in the order of the signature (also the order of repr and ``_asdict``).
_FIELDS = (
    "key", "payload", "fingerprint", "ttl", "lease", "heartbeat", "on_in_progress",
    "wait_timeout", "local_cache", "namespace", "scope", "store_errors", "should_store",
    "on_replay", "required", "serializer", "fail_open", "replay_types", "key_hash",
)  # fmt: skip


#: The longest duration an option accepts (about 100 years): beyond it a deadline is no
#: longer a duration but a typo (``lease=1e12``), and timers and stores overflow.
MAX_SECONDS = 100 * 365.25 * 24 * 3600.0


def seconds(value: float | dt.timedelta, name: str) -> float:
    """A duration in seconds from a number or a ``timedelta``: more than 0, at most
    :data:`MAX_SECONDS` (about 100 years); NaN, infinities, booleans and strings raise
    ``ValueError``."""
    s = float("nan")
    if isinstance(value, (int, float)):
        try:
            s = float(value)
        except OverflowError:  # an int too large for a float
            s = float("inf")
    elif callable(getattr(value, "total_seconds", None)):  # a timedelta, datetime unimported
        s = value.total_seconds()
    if isinstance(value, (bool, str)) or not 0 < s <= MAX_SECONDS:
        raise ValueError(
            f"{name} must be a positive duration of at most 100 years (finite seconds or a "
            f"timedelta), got {value!r}"
        )
    return s


class IdempotencyConfig:
    """Options of :class:`~idempotence.Idempotency` (defaults) and of each decorator
    (overrides). Durations accept seconds or a ``timedelta`` and are stored as seconds.

    - ``key``: JMESPath expression or function selecting the key material from the payload;
      ``None``: the whole payload.
    - ``payload``: name of the parameter that is the payload; ``None``: the single parameter,
      or all arguments as a mapping when there are several (``self``/``cls`` excluded).
    - ``fingerprint``: what must be identical to reuse a key (JMESPath/function); ``None``: the
      payload; ``False``: no check.
    - ``ttl``: retention of completed records (default 24 h). ``lease``: how long a claim is
      honoured without renewal (default 60 s). ``heartbeat``: renew the lease every
      ``lease / 3`` while the function runs (default on).
    - ``on_in_progress``: ``"raise"`` (:class:`AlreadyInProgressError`) or ``"wait"`` for the
      running call's result, up to ``wait_timeout`` seconds.
    - ``local_cache``: number of completed results kept in this process (0: off).
    - ``namespace``: key prefix (see :class:`Idempotency`). ``scope``: tenant/principal (a
      string, or a function of the payload) mixed into the key.
    - ``store_errors``: exception types that complete the key and are re-raised on replay.
    - ``should_store``: predicate on the result; ``False`` releases the key instead of
      keeping the result (if it raises, the key is completed as "result not stored").
    - ``on_replay``: ``(result, record) -> result`` hook on replays.
    - ``required``: missing key material raises :class:`MissingKeyError`; ``False`` runs the
      call without idempotency. ``serializer``: result encoding (default JSON with types).
    - ``fail_open``: when the store fails, run the function without idempotency instead of
      raising :class:`StoreError` (default off: fail closed).
    - ``replay_types``: classes (dataclasses, pydantic models, enums) a replay may rebuild
      besides those reachable from the function's return annotation. A replay never
      rebuilds any other class: a result holding one is refused when it is stored (the key
      is completed as "result not stored"), and a record naming one is a
      :class:`CorruptRecordError`.
    - ``key_hash``: a function turning selected key (and fingerprint) material into the
      text that ends the key, replacing the built-in SHA-256 digest of its canonical JSON:
      the key is then exactly ``namespace#key_hash(material)`` (the ``key=`` spec is not
      mixed in; ``scope`` cannot be combined with it) and the fingerprint
      ``key_hash(fingerprint material)``. For keeping another library's key format (see
      ``idempotence.compat.powertools``); default ``None``.
    """

    __slots__ = _FIELDS

    key: KeySpec | None
    payload: str | None
    fingerprint: KeySpec | Literal[False] | None
    ttl: float
    lease: float
    heartbeat: bool
    on_in_progress: Literal["raise", "wait"]
    wait_timeout: float
    local_cache: int
    namespace: str | None
    scope: str | Callable[[Any], str | None] | None
    store_errors: tuple[type[BaseException], ...]
    should_store: Callable[[Any], bool] | None
    on_replay: Callable[[Any, Record], Any] | None
    required: bool
    serializer: Serializer
    fail_open: bool
    replay_types: tuple[type, ...]
    key_hash: Callable[[Any], str] | None

    def __init__(
        self,
        *,
        key: KeySpec | None = None,
        payload: str | None = None,
        fingerprint: KeySpec | Literal[False] | None = None,
        ttl: float | dt.timedelta = 24 * 3600.0,
        lease: float | dt.timedelta = 60.0,
        heartbeat: bool = True,
        on_in_progress: Literal["raise", "wait"] = "raise",
        wait_timeout: float | dt.timedelta = 60.0,
        local_cache: int = 0,
        namespace: str | None = None,
        scope: str | Callable[[Any], str | None] | None = None,
        store_errors: type[BaseException] | Iterable[type[BaseException]] = (),
        should_store: Callable[[Any], bool] | None = None,
        on_replay: Callable[[Any, Record], Any] | None = None,
        required: bool = True,
        serializer: Serializer | None = None,
        fail_open: bool = False,
        replay_types: type | Iterable[type] = (),
        key_hash: Callable[[Any], str] | None = None,
    ) -> None:
        if on_in_progress not in ("raise", "wait"):
            raise ValueError(f"on_in_progress must be 'raise' or 'wait', got {on_in_progress!r}")
        if not isinstance(heartbeat, bool):
            raise TypeError(
                "heartbeat is True or False (renew the lease every lease/3 while the "
                f"function runs), got a {type(heartbeat).__name__}; set the interval with lease="
            )
        if type(local_cache) is not int or local_cache < 0:
            raise ValueError(f"local_cache must be an int >= 0, got {local_cache!r}")
        errors = (store_errors,) if isinstance(store_errors, type) else store_errors
        if not isinstance(errors, (tuple, list, set, frozenset)):
            raise TypeError(
                f"store_errors must be exception classes (a tuple of them), got {errors!r}"
            )
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in errors):
            raise TypeError("store_errors must be exception classes")
        replay = (replay_types,) if isinstance(replay_types, type) else replay_types
        if not isinstance(replay, (tuple, list, set, frozenset)) or not all(
            isinstance(t, type) for t in replay
        ):
            raise TypeError(f"replay_types must be classes (a tuple of them), got {replay!r}")
        if key_hash is not None and not callable(key_hash):
            raise TypeError(f"key_hash must be a function (material) -> str, got {key_hash!r}")
        if key_hash is not None and scope is not None:
            raise TypeError(
                "key_hash= and scope= cannot be combined: with key_hash the key is exactly "
                "namespace#key_hash(material); put the scope in the namespace instead"
            )
        if serializer is None:
            serializer = JSONSerializer()
        if not hasattr(serializer, "encode") or not hasattr(serializer, "decode"):
            raise TypeError("serializer must have encode(value) -> bytes and decode(bytes, hint)")
        set_ = object.__setattr__
        set_(self, "key", key)
        set_(self, "payload", payload)
        set_(self, "fingerprint", None if fingerprint is True else fingerprint)  # type: ignore[comparison-overlap]
        set_(self, "ttl", seconds(ttl, "ttl"))
        set_(self, "lease", seconds(lease, "lease"))
        set_(self, "heartbeat", heartbeat)
        set_(self, "on_in_progress", on_in_progress)
        set_(self, "wait_timeout", seconds(wait_timeout, "wait_timeout"))
        set_(self, "local_cache", local_cache)
        set_(self, "namespace", namespace)
        set_(self, "scope", scope)
        set_(self, "store_errors", tuple(errors))
        set_(self, "should_store", should_store)
        set_(self, "on_replay", on_replay)
        set_(self, "required", required)
        set_(self, "serializer", serializer)
        set_(self, "fail_open", fail_open)
        set_(self, "replay_types", tuple(replay))
        set_(self, "key_hash", key_hash)

    @property
    def ttl_s(self) -> float:
        """``ttl`` in seconds."""
        return self.ttl

    @property
    def lease_s(self) -> float:
        """``lease`` in seconds."""
        return self.lease

    @property
    def wait_timeout_s(self) -> float:
        """``wait_timeout`` in seconds."""
        return self.wait_timeout

    def replace(self, **changes: Any) -> IdempotencyConfig:
        """A copy with ``changes`` applied (validated). Unknown names raise ``TypeError``."""
        return IdempotencyConfig(**{**self._asdict(), **changes})

    def _asdict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"IdempotencyConfig is immutable: use .replace({name}=...)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdempotencyConfig):
            return NotImplemented
        return self._asdict() == other._asdict()

    __hash__ = None  # type: ignore[assignment]  # holds callables and may hold lists

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self._asdict().items())
        return f"IdempotencyConfig({fields})"
