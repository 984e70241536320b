"""``IdempotencyConfig``: every option, validated once, immutable."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable
from typing import Any, Literal

from ._codec import JSONSerializer, Serializer
from ._record import Record

__all__ = ["IdempotencyConfig", "seconds"]

KeySpec = str | Callable[[Any], Any]


def seconds(value: float | dt.timedelta, name: str) -> float:
    """A positive duration in seconds from a number or a ``timedelta``."""
    try:
        s = value.total_seconds() if isinstance(value, dt.timedelta) else float(value)
    except (TypeError, ValueError):
        s = float("nan")
    if isinstance(value, (bool, str)) or not s > 0 or s == float("inf"):
        raise ValueError(
            f"{name} must be a positive duration (finite seconds or a timedelta), got {value!r}"
        )
    return s


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
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
      keeping the result. ``on_replay``: ``(result, record) -> result`` hook on replays.
    - ``required``: missing key material raises :class:`MissingKeyError`; ``False`` runs the
      call without idempotency. ``serializer``: result encoding (default JSON with types).
    - ``fail_open``: when the store fails, run the function without idempotency instead of
      raising :class:`StoreError` (default off: fail closed).
    """

    key: KeySpec | None = None
    payload: str | None = None
    fingerprint: KeySpec | Literal[False] | None = None
    ttl: float | dt.timedelta = 24 * 3600.0
    lease: float | dt.timedelta = 60.0
    heartbeat: bool = True
    on_in_progress: Literal["raise", "wait"] = "raise"
    wait_timeout: float | dt.timedelta = 60.0
    local_cache: int = 0
    namespace: str | None = None
    scope: str | Callable[[Any], str | None] | None = None
    store_errors: tuple[type[BaseException], ...] = ()
    should_store: Callable[[Any], bool] | None = None
    on_replay: Callable[[Any, Record], Any] | None = None
    required: bool = True
    serializer: Serializer = dataclasses.field(default_factory=JSONSerializer)
    fail_open: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "ttl", seconds(self.ttl, "ttl"))
        set_(self, "lease", seconds(self.lease, "lease"))
        set_(self, "wait_timeout", seconds(self.wait_timeout, "wait_timeout"))
        if self.on_in_progress not in ("raise", "wait"):
            raise ValueError(
                f"on_in_progress must be 'raise' or 'wait', got {self.on_in_progress!r}"
            )
        if type(self.local_cache) is not int or self.local_cache < 0:
            raise ValueError(f"local_cache must be an int >= 0, got {self.local_cache!r}")
        errors = self.store_errors
        if isinstance(errors, type):
            errors = (errors,)
        if not isinstance(errors, (tuple, list, set, frozenset)):
            raise TypeError(
                f"store_errors must be exception classes (a tuple of them), got {errors!r}"
            )
        errors = tuple(errors)
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in errors):
            raise TypeError("store_errors must be exception classes")
        set_(self, "store_errors", errors)
        if self.fingerprint is True:  # type: ignore[comparison-overlap]
            set_(self, "fingerprint", None)
        if not hasattr(self.serializer, "encode") or not hasattr(self.serializer, "decode"):
            raise TypeError("serializer must have encode(value) -> bytes and decode(bytes, hint)")

    @property
    def ttl_s(self) -> float:
        """``ttl`` in seconds."""
        return self.ttl  # type: ignore[return-value]

    @property
    def lease_s(self) -> float:
        """``lease`` in seconds."""
        return self.lease  # type: ignore[return-value]

    @property
    def wait_timeout_s(self) -> float:
        """``wait_timeout`` in seconds."""
        return self.wait_timeout  # type: ignore[return-value]

    def replace(self, **changes: Any) -> IdempotencyConfig:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)
