"""State-transition guards: one atomic compare-and-set per transition, on every store.

``StateGuard`` keeps a state per entity next to a store's idempotency records (its own SQL
table, Redis keys or DynamoDB items) and moves it only from the expected state, so of any
number of concurrent duplicates exactly one moves it. ``sql_transition`` (``_sql_rows``) and
``dynamodb_transition`` (``_dynamodb``) do the same on a row or item of the user's own table.

The backends (``_states``, ``_dynamodb``) offer four operations on "a state or nothing"
(``None`` = no state): compare-and-set, read, unconditional write and delete, each one
statement / script / request, written once as sans-I/O steps and run by a sync and an async
driver. A store is picked by the capability it offers (:mod:`idempotence.stores.capabilities`),
so a third-party store implementing one gets state guards too.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from .._errors import IdempotencyError, StoreError
from ..stores import MemoryStore, Store, store_from_url
from ..stores.capabilities import AtomicScripts, DynamoDBRecords, SQLConnections
from ._dynamodb import (
    DynamoDBStates,
    adynamodb_transition,
    dynamodb_transition,
    dynamodb_transition_update,
)
from ._sql_rows import asql_transition, sql_transition
from ._states import Backend, MemoryStates, ScriptStates, SQLStates, State
from ._states import text as _text

__all__ = [
    "StateConflictError",
    "StateGuard",
    "adynamodb_transition",
    "asql_transition",
    "dynamodb_transition",
    "dynamodb_transition_update",
    "sql_transition",
]

log = logging.getLogger("idempotence")

_T = TypeVar("_T")
S = TypeVar("S", bound="str | enum.Enum")
E = TypeVar("E", bound=enum.Enum)

#: Prefix of StateGuard keys in Redis (after the store's prefix) and DynamoDB partition keys.
STATE_KEY_PREFIX = "state:"


class StateConflictError(IdempotencyError):
    """:meth:`StateGuard.guard` could not move ``entity`` from ``expected`` to ``target``:
    its state was ``current`` (read after the refusal; ``None`` = no state). A duplicate
    delivery of an operation that already moved the entity gets this error."""

    def __init__(
        self, message: str, *, entity: str, expected: Any, target: Any, current: Any
    ) -> None:
        super().__init__(message, key=entity)
        self.entity = entity
        self.expected = expected
        self.target = target
        self.current = current


def _pair(from_state: State | None, to_state: State | None) -> tuple[str | None, str | None]:
    f, t = _text(from_state), _text(to_state)
    if f is None and t is None:
        raise ValueError("a transition needs a state on at least one side (None = no state)")
    return f, t


def _entity(entity: str) -> str:
    if not isinstance(entity, str) or not entity:
        raise ValueError(f"entity must be a non-empty string, got {entity!r}")
    return entity


# -- backends ------------------------------------------------------------------------------
def _backend(store: Store, table: str | None, prefix: str) -> Backend:
    """The backend of ``store``, by the capability it offers (see
    :mod:`idempotence.stores.capabilities`)."""
    if isinstance(store, MemoryStore):
        return MemoryStates(store)
    if isinstance(store, SQLConnections):
        return SQLStates(store, table)
    if isinstance(store, AtomicScripts):
        return ScriptStates(store, prefix)
    if isinstance(store, DynamoDBRecords):
        return DynamoDBStates(store, prefix, table)
    raise TypeError(
        "StateGuard needs a MemoryStore or a store with a capability of "
        "idempotence.stores.capabilities (SQLConnections, AtomicScripts, DynamoDBRecords; "
        f"e.g. SQLiteStore, PostgresStore, RedisStore, DynamoDBStore), not "
        f"{type(store).__qualname__}"
    )


# -- the public API ------------------------------------------------------------------------
class StateGuard(Generic[S]):
    """Entity states moved by atomic compare-and-set, next to a store's records.

    ``store`` is a store or a store URL. States live in:

    - ``MemoryStore``: a dict shared by every guard over that store object;
    - ``SQLiteStore`` / ``PostgresStore``: the table ``table`` (default
      ``idempotence_states``: ``entity text PRIMARY KEY, state text NOT NULL``) in the
      store's database, created on first use (``CREATE TABLE IF NOT EXISTS``);
    - ``RedisStore``: string keys ``{store.prefix}{prefix}{entity}``;
    - ``DynamoDBStore``: items of the store's table (or ``table``, with the same key schema)
      whose partition key is ``{prefix}{entity}`` and whose ``state`` attribute holds the
      state.
    - any other store with a capability of :mod:`idempotence.stores.capabilities`:
      ``SQLConnections`` as the SQL stores, ``AtomicScripts`` as Redis,
      ``DynamoDBRecords`` as DynamoDB. Other stores raise ``TypeError``.

    States are kept until :meth:`delete`: they are not subject to the records' retention.
    ``prefix`` (default ``"state:"``) keeps them apart from idempotency keys in Redis and
    DynamoDB. A state is a non-empty string or a member of a ``str``-valued enum; pass
    ``states=OrderState`` to read states back as that enum. ``None`` means "no state":
    ``transition(e, None, "NEW")`` creates, ``transition(e, "DONE", None)`` deletes, each only
    if the current state is the expected one.

    Every operation is one atomic round trip (an ``UPDATE ... WHERE state = ...`` /
    ``INSERT ... ON CONFLICT DO NOTHING``, a Lua script, a conditional DynamoDB request), so
    of N concurrent duplicates exactly one transition succeeds. Failures of the backend
    raise :class:`~idempotence.StoreError`.
    """

    @overload
    def __init__(
        self: StateGuard[str],
        store: Store | str,
        *,
        states: None = None,
        table: str | None = None,
        prefix: str = STATE_KEY_PREFIX,
    ) -> None: ...

    @overload
    def __init__(
        self: StateGuard[E],
        store: Store | str,
        *,
        states: type[E],
        table: str | None = None,
        prefix: str = STATE_KEY_PREFIX,
    ) -> None: ...

    def __init__(
        self,
        store: Store | str,
        *,
        states: type[Any] | None = None,
        table: str | None = None,
        prefix: str = STATE_KEY_PREFIX,
    ) -> None:
        self.store = store_from_url(store) if isinstance(store, str) else store
        if not isinstance(self.store, Store):
            raise TypeError(f"store must be a Store or a URL, got {type(store).__qualname__}")
        if states is not None and not (isinstance(states, type) and issubclass(states, enum.Enum)):
            raise TypeError("states must be an Enum class with str values")
        self.states = states
        self._declared: frozenset[str] | None = (
            None if states is None else frozenset(_text(member) or "" for member in states)
        )
        self._backend = _backend(self.store, table, prefix)

    def _check(self, *states: S | None) -> None:
        """With ``states=``: ``ValueError`` for a state that is not one of its members (a
        member, or a member's value), before any request is made."""
        if self._declared is None:
            return
        for state in states:
            text = _text(state)
            if text is not None and (
                text not in self._declared
                or (isinstance(state, enum.Enum) and not isinstance(state, self.states))  # type: ignore[arg-type]
            ):
                assert self.states is not None
                raise ValueError(
                    f"{state!r} is not a state of {self.states.__qualname__} (states=); use "
                    f"one of: {', '.join(sorted(self._declared))}"
                )

    def _decode(self, value: str | None) -> S | None:
        if value is None or self.states is None:
            return value  # type: ignore[return-value]
        return self.states(value)  # type: ignore[return-value]

    def _call(self, make: Callable[[Backend], Generator[Any, Any, _T]]) -> _T:
        try:
            return self._backend.run(make(self._backend))
        except IdempotencyError:
            raise
        except Exception as exc:
            raise _store_error(self.store, exc) from exc

    async def _acall(self, make: Callable[[Backend], Generator[Any, Any, _T]]) -> _T:
        try:
            return await self._backend.arun(make(self._backend))
        except IdempotencyError:
            raise
        except Exception as exc:
            raise _store_error(self.store, exc) from exc

    # -- sync -------------------------------------------------------------------------
    def transition(self, entity: str, from_state: S | None, to_state: S | None) -> bool:
        """Move ``entity`` to ``to_state`` if its state is ``from_state``, atomically.
        Returns whether it moved (``False``: the state was something else). With
        ``states=``, a state outside that enum raises ``ValueError``."""
        self._check(from_state, to_state)
        e, f, t = _entity(entity), *_pair(from_state, to_state)
        return self._call(lambda b: b.cas(e, f, t))

    def get(self, entity: str) -> S | None:
        """The current state of ``entity``, or ``None``."""
        e = _entity(entity)
        return self._decode(self._call(lambda b: b.read(e)))

    def set(self, entity: str, state: S) -> None:
        """Set the state of ``entity`` unconditionally (e.g. its initial state). To create
        only if absent, use ``transition(entity, None, state)``."""
        self._check(state)
        e, s = _entity(entity), _text(state)
        assert s is not None
        self._call(lambda b: b.write(e, s))

    def delete(self, entity: str) -> bool:
        """Forget the state of ``entity``. Returns whether it had one."""
        e = _entity(entity)
        return self._call(lambda b: b.remove(e))

    # -- async ------------------------------------------------------------------------
    async def atransition(self, entity: str, from_state: S | None, to_state: S | None) -> bool:
        """Async :meth:`transition`."""
        self._check(from_state, to_state)
        e, f, t = _entity(entity), *_pair(from_state, to_state)
        return await self._acall(lambda b: b.cas(e, f, t))

    async def aget(self, entity: str) -> S | None:
        """Async :meth:`get`."""
        e = _entity(entity)
        return self._decode(await self._acall(lambda b: b.read(e)))

    async def aset(self, entity: str, state: S) -> None:
        """Async :meth:`set`."""
        self._check(state)
        e, s = _entity(entity), _text(state)
        assert s is not None
        await self._acall(lambda b: b.write(e, s))

    async def adelete(self, entity: str) -> bool:
        """Async :meth:`delete`."""
        e = _entity(entity)
        return await self._acall(lambda b: b.remove(e))

    # -- guard ------------------------------------------------------------------------
    def guard(self, entity: str, from_state: S | None, to_state: S) -> Guarded[S]:
        """Move ``entity`` from ``from_state`` to ``to_state`` for the body of a ``with`` (or
        ``async with``) block; if the body raises, move it back, conditionally: only if it
        is still ``to_state`` (a rollback never overwrites a later transition).

        Entering raises :class:`StateConflictError` when the transition is refused (for
        example a duplicate of an operation that already moved the entity), so the body
        does not run. A failing rollback is logged; the body's exception propagates. ::

            with guard.guard(order_id, "PENDING", "PROCESSING"):
                ship(order_id)
            guard.transition(order_id, "PROCESSING", "SHIPPED")
        """
        self._check(from_state, to_state)
        return Guarded(self, _entity(entity), from_state, to_state)


class Guarded(Generic[S]):
    """The context manager returned by :meth:`StateGuard.guard` (sync and async)."""

    def __init__(self, guard: StateGuard[S], entity: str, from_state: S | None, to_state: S):
        self.guard, self.entity, self.from_state, self.to_state = (
            guard,
            entity,
            from_state,
            to_state,
        )

    def _refused(self, current: S | None) -> StateConflictError:
        return StateConflictError(
            f"cannot move {self.entity!r} from {_text(self.from_state)!r} to "
            f"{_text(self.to_state)!r}: its state is {_text(current)!r}",
            entity=self.entity,
            expected=self.from_state,
            target=self.to_state,
            current=current,
        )

    def __enter__(self) -> None:
        if not self.guard.transition(self.entity, self.from_state, self.to_state):
            raise self._refused(self.guard.get(self.entity))

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            return
        try:
            if not self.guard.transition(self.entity, self.to_state, self.from_state):
                log.warning("state of %s moved on while the guarded body ran", self.entity)
        except Exception:
            log.warning("could not roll back the state of %s", self.entity, exc_info=True)

    async def __aenter__(self) -> None:
        if not await self.guard.atransition(self.entity, self.from_state, self.to_state):
            raise self._refused(await self.guard.aget(self.entity))

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            return
        try:
            if not await self.guard.atransition(self.entity, self.to_state, self.from_state):
                log.warning("state of %s moved on while the guarded body ran", self.entity)
        except Exception:
            log.warning("could not roll back the state of %s", self.entity, exc_info=True)


def _store_error(store: Store, exc: Exception) -> StoreError:
    return StoreError(
        f"StateGuard on {type(store).__name__} failed: {type(exc).__name__}: {exc}. "
        "Nothing was moved, or the outcome is unknown if the request reached the store."
    )
