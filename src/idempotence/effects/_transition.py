"""State-transition guards: one atomic compare-and-set per transition, on every store.

``StateGuard`` keeps a state per entity next to a store's idempotency records (its own SQL
table, Redis keys or DynamoDB items) and moves it only from the expected state, so of any
number of concurrent duplicates exactly one moves it. ``sql_transition`` and
``dynamodb_transition`` do the same on a row or item of the user's own table.

Every backend offers four operations on "a state or nothing" (``None`` = no state):
compare-and-set, read, unconditional write and delete, each one statement / script /
request. They are written once as sans-I/O steps and run by a sync and an async driver.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import weakref
from collections.abc import Callable, Generator, Mapping, Sequence
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from .._errors import IdempotencyError, StoreError
from ..stores._base import Store
from ..stores._memory import MemoryStore
from ..stores._registry import store_from_url
from ..stores._sqlite import SQLiteStore
from . import _sql
from ._sql import POSTGRES, SQLITE, Dialect, Steps, Stmt, quote_ident

if TYPE_CHECKING:
    from ..stores._dynamodb import DynamoDBStore
    from ..stores._postgres import PostgresStore
    from ..stores._redis import RedisStore

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
State = str | enum.Enum

#: Default SQL table of StateGuard on SQLite and PostgreSQL stores.
STATES_TABLE = "idempotence_states"
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


def _text(state: State | None) -> str | None:
    if state is None:
        return None
    value = state.value if isinstance(state, enum.Enum) else state
    if not isinstance(value, str) or not value:
        raise TypeError(f"a state must be a non-empty str or a str-valued enum, got {state!r}")
    return value


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
class _Backend:
    """Four sans-I/O operations and the two drivers that run them."""

    def cas(self, entity: str, expected: str | None, new: str | None) -> Generator[Any, Any, bool]:
        raise NotImplementedError

    def read(self, entity: str) -> Generator[Any, Any, str | None]:
        raise NotImplementedError

    def write(self, entity: str, state: str) -> Generator[Any, Any, None]:
        raise NotImplementedError

    def remove(self, entity: str) -> Generator[Any, Any, bool]:
        raise NotImplementedError

    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        raise NotImplementedError

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        return await asyncio.to_thread(self.run, steps)


_memory_states: weakref.WeakKeyDictionary[MemoryStore, tuple[threading.Lock, dict[str, str]]]
_memory_states = weakref.WeakKeyDictionary()
_memory_lock = threading.Lock()


class _MemoryBackend(_Backend):
    """States in a dict shared by every guard over the same ``MemoryStore``."""

    def __init__(self, store: MemoryStore) -> None:
        with _memory_lock:
            entry = _memory_states.get(store)
            if entry is None:
                entry = _memory_states[store] = (threading.Lock(), {})
        self.lock, self.states = entry

    # Each step is a function of the dict, run under the lock.
    def cas(self, entity: str, expected: str | None, new: str | None) -> Generator[Any, Any, bool]:
        def step(states: dict[str, str]) -> bool:
            if states.get(entity) != expected:
                return False
            if new is None:
                states.pop(entity, None)
            else:
                states[entity] = new
            return True

        return (yield step)  # type: ignore[no-any-return]

    def read(self, entity: str) -> Generator[Any, Any, str | None]:
        return (yield lambda states: states.get(entity))  # type: ignore[no-any-return]

    def write(self, entity: str, state: str) -> Generator[Any, Any, None]:
        yield lambda states: states.__setitem__(entity, state)

    def remove(self, entity: str) -> Generator[Any, Any, bool]:
        return (yield lambda states: states.pop(entity, None) is not None)  # type: ignore[no-any-return]

    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        reply: Any = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            with self.lock:
                reply = step(self.states)

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        return self.run(steps)  # a dict never blocks


def _states_ddl(dialect: Dialect, table: str) -> str:
    t = quote_ident(table.split(".") if dialect is POSTGRES else table)
    return f"CREATE TABLE IF NOT EXISTS {t} (entity text PRIMARY KEY, state text NOT NULL)" + (
        " WITHOUT ROWID" if dialect is SQLITE else ""
    )


class _SQLBackend(_Backend):
    """States in a table ``(entity text PRIMARY KEY, state text NOT NULL)`` of a SQLite or
    PostgreSQL store's database; ``None`` is "no row"."""

    def __init__(self, store: SQLiteStore | PostgresStore, dialect: Dialect, table: str) -> None:
        self.store = store
        self.dialect = dialect
        self.table = quote_ident(table.split(".") if dialect is POSTGRES else table)
        self.ddl = _states_ddl(dialect, table)
        self._created = False

    def _stmt(self, template: str, **params: object) -> Stmt:
        return Stmt(self.dialect.sql(template.replace("{t}", self.table), list(params)), params)

    def _ensure(self) -> Steps[None]:
        if not self._created:
            try:
                yield Stmt(self.ddl, {})
            except Exception as exc:
                if not _sql.ddl_race(exc):
                    raise
            self._created = True

    def cas(self, entity: str, expected: str | None, new: str | None) -> Steps[bool]:
        yield from self._ensure()
        if expected is None and new is None:
            raise ValueError("a transition needs a state on at least one side")
        if expected is None:
            stmt = self._stmt(
                "INSERT INTO {t} (entity, state) VALUES ({entity}, {new}) "
                "ON CONFLICT (entity) DO NOTHING",
                entity=entity,
                new=new,
            )
        elif new is None:
            stmt = self._stmt(
                "DELETE FROM {t} WHERE entity = {entity} AND state = {expected}",
                entity=entity,
                expected=expected,
            )
        else:
            stmt = self._stmt(
                "UPDATE {t} SET state = {new} WHERE entity = {entity} AND state = {expected}",
                entity=entity,
                expected=expected,
                new=new,
            )
        _, count = yield stmt
        return count == 1

    def read(self, entity: str) -> Steps[str | None]:
        yield from self._ensure()
        rows, _ = yield self._stmt("SELECT state FROM {t} WHERE entity = {entity}", entity=entity)
        return str(rows[0][0]) if rows else None

    def write(self, entity: str, state: str) -> Steps[None]:
        yield from self._ensure()
        yield self._stmt(
            "INSERT INTO {t} (entity, state) VALUES ({entity}, {state}) "
            "ON CONFLICT (entity) DO UPDATE SET state = excluded.state",
            entity=entity,
            state=state,
        )

    def remove(self, entity: str) -> Steps[bool]:
        yield from self._ensure()
        _, count = yield self._stmt("DELETE FROM {t} WHERE entity = {entity}", entity=entity)
        return count == 1

    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        store = self.store
        if isinstance(store, SQLiteStore):
            return _sql.run(store._conn(), steps)
        with store._sync_conn() as conn:
            return _sql.run(conn, steps)

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        store = self.store
        if isinstance(store, SQLiteStore) or not store._has_async_source:
            return await asyncio.to_thread(self.run, steps)
        async with store._async_conn() as conn:
            return await _sql.arun(conn, steps)


# Redis: every operation is one script on one key (valid on Redis Cluster).
_REDIS_CAS = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[3] == '1' then redis.call('SET', KEYS[1], ARGV[4]) else redis.call('DEL', KEYS[1]) end
return 1
"""
_REDIS_GET = "return redis.call('GET', KEYS[1])"
_REDIS_SET = "redis.call('SET', KEYS[1], ARGV[1]) return 1"
_REDIS_DEL = "return redis.call('DEL', KEYS[1])"


def _reply(value: Any) -> Any:
    return value


class _RedisBackend(_Backend):
    """States as plain string keys ``{store prefix}state:{entity}``, without expiry."""

    def __init__(self, store: RedisStore, prefix: str) -> None:
        from ..stores._redis import _Script

        self.store = store
        self.prefix = store.prefix + prefix
        self.scripts = {
            name: _Script(source)
            for name, source in (
                ("cas", _REDIS_CAS),
                ("get", _REDIS_GET),
                ("set", _REDIS_SET),
                ("del", _REDIS_DEL),
            )
        }

    def _eval(self, name: str, entity: str, *args: str) -> Any:
        """One script call in the store's own form (``_redis._Call``), the raw reply kept."""
        from ..stores._redis import _Call

        return _Call(self.scripts[name], self.prefix + entity, args, _reply)

    def cas(self, entity: str, expected: str | None, new: str | None) -> Generator[Any, Any, bool]:
        if expected is None and new is None:
            raise ValueError("a transition needs a state on at least one side")
        flags = (
            "0" if expected is None else "1",
            expected or "",
            "0" if new is None else "1",
            new or "",
        )
        return int((yield self._eval("cas", entity, *flags))) == 1

    def read(self, entity: str) -> Generator[Any, Any, str | None]:
        value = yield self._eval("get", entity)
        return None if value is None else (value.decode() if isinstance(value, bytes) else value)

    def write(self, entity: str, state: str) -> Generator[Any, Any, None]:
        yield self._eval("set", entity, state)

    def remove(self, entity: str) -> Generator[Any, Any, bool]:
        return int((yield self._eval("del", entity))) == 1

    # Each script runs through the store's own transport (EVALSHA, EVAL on NOSCRIPT; the
    # async side on the loop's client, or the sync client in a thread).
    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        reply: Any = None
        while True:
            try:
                call = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = self.store._run(call)

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        reply: Any = None
        while True:
            try:
                call = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            reply = await self.store._arun(call)


# DynamoDB: a request builder shared by StateGuard and the helpers on user tables.
def _attribute_value(value: Any) -> dict[str, Any]:
    """A key value in DynamoDB's typed form; typed values (``{"S": ...}``) pass as given."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        raise TypeError("a DynamoDB key cannot be a boolean")
    if isinstance(value, (int, float, Decimal)):
        return {"N": str(value)}
    if isinstance(value, (bytes, bytearray)):
        return {"B": bytes(value)}
    raise TypeError(f"cannot use {type(value).__qualname__} as a DynamoDB key value")


def _dynamodb_cas_request(
    table: str, key: Mapping[str, Any], attr: str, expected: str | None, new: str | None
) -> tuple[str, dict[str, Any]]:
    """``(method, kwargs)`` of the conditional request moving ``attr`` of the item ``key``
    from ``expected`` to ``new`` (``None``: attribute absent / remove the whole item)."""
    if expected is None and new is None:
        raise ValueError("a transition needs a state on at least one side")
    request: dict[str, Any] = {
        "TableName": table,
        "Key": {name: _attribute_value(value) for name, value in key.items()},
        "ExpressionAttributeNames": {"#state": attr},
    }
    values: dict[str, Any] = {}
    if expected is None:
        request["ConditionExpression"] = "attribute_not_exists(#state)"
    else:
        request["ConditionExpression"] = "#state = :expected"
        values[":expected"] = {"S": expected}
    if new is None:
        method = "delete_item"
    else:
        method = "update_item"
        request["UpdateExpression"] = "SET #state = :new"
        values[":new"] = {"S": new}
    if values:
        request["ExpressionAttributeValues"] = values
    return method, request


def _is_condition_failure(exc: BaseException) -> bool:
    """The DynamoDB store's own test, imported on first use (it loads asyncio)."""
    from ..stores._dynamodb import _is_conditional_failure

    return _is_conditional_failure(exc)


class _DynamoDBBackend(_Backend):
    """States as items of the store's table (or ``table``) whose partition key is
    ``state:{entity}`` (same key schema as the store; the sort key, if any, holds the
    store's ``sort_key_value``), with one attribute ``state``. No ``expiration``: they are
    kept until deleted."""

    ATTR = "state"

    def __init__(self, store: DynamoDBStore, prefix: str, table: str | None) -> None:
        from ..stores._dynamodb import _Call

        self.store = store
        self.prefix = prefix
        self.table = table or store.table
        self.call = _Call

    def _key(self, entity: str) -> dict[str, Any]:
        return self.store._key(self.prefix + entity)

    def cas(self, entity: str, expected: str | None, new: str | None) -> Generator[Any, Any, bool]:
        method, request = _dynamodb_cas_request(
            self.table, self._key(entity), self.ATTR, expected, new
        )
        try:
            yield self.call(method, request)
        except Exception as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    def read(self, entity: str) -> Generator[Any, Any, str | None]:
        response = yield self.call(
            "get_item",
            {"TableName": self.table, "Key": self._key(entity), "ConsistentRead": True},
        )
        value = response.get("Item", {}).get(self.ATTR, {}).get("S")
        return None if value is None else str(value)

    def write(self, entity: str, state: str) -> Generator[Any, Any, None]:
        item = {**self._key(entity), self.ATTR: {"S": state}}
        yield self.call("put_item", {"TableName": self.table, "Item": item})

    def remove(self, entity: str) -> Generator[Any, Any, bool]:
        response = yield self.call(
            "delete_item",
            {"TableName": self.table, "Key": self._key(entity), "ReturnValues": "ALL_OLD"},
        )
        return bool(response.get("Attributes"))

    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        return self.store._run(steps)

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        return await self.store._arun(steps)


def _backend(store: Store, table: str | None, prefix: str) -> _Backend:
    if isinstance(store, MemoryStore):
        return _MemoryBackend(store)
    if isinstance(store, SQLiteStore):
        return _SQLBackend(store, SQLITE, table or STATES_TABLE)
    kind = type(store).__module__
    if kind == "idempotence.stores._postgres":
        return _SQLBackend(store, POSTGRES, table or STATES_TABLE)  # type: ignore[arg-type]
    if kind == "idempotence.stores._redis":
        return _RedisBackend(store, prefix)  # type: ignore[arg-type]
    if kind == "idempotence.stores._dynamodb":
        return _DynamoDBBackend(store, prefix, table)  # type: ignore[arg-type]
    raise TypeError(
        f"StateGuard supports MemoryStore, SQLiteStore, PostgresStore, RedisStore and "
        f"DynamoDBStore, not {type(store).__qualname__}"
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

    def _call(self, make: Callable[[_Backend], Generator[Any, Any, _T]]) -> _T:
        try:
            return self._backend.run(make(self._backend))
        except IdempotencyError:
            raise
        except Exception as exc:
            raise _store_error(self.store, exc) from exc

    async def _acall(self, make: Callable[[_Backend], Generator[Any, Any, _T]]) -> _T:
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


# -- helpers on the user's own rows and items -----------------------------------------------
def _user_cas_steps(
    dialect: Dialect,
    table: str | Sequence[str],
    id_column: str,
    id_value: object,
    state_column: str,
    from_state: State | None,
    to_state: State | None,
) -> Steps[bool]:
    f, t = _text(from_state), _text(to_state)
    where = "{s} IS NULL" if f is None else "{s} = {expected}"
    sql = f"UPDATE {{t}} SET {{s}} = {{new}} WHERE {{i}} = {{id}} AND {where}"
    sql = sql.replace("{t}", quote_ident(table)).replace("{i}", quote_ident(id_column))
    sql = sql.replace("{s}", quote_ident(state_column))
    params: dict[str, object] = {"new": t, "id": id_value}
    if f is not None:
        params["expected"] = f
    _, count = yield Stmt(dialect.sql(sql, list(params)), params)
    return count == 1


def sql_transition(
    conn: Any,
    table: str | Sequence[str],
    id_column: str,
    id: object,
    state_column: str,
    from_state: State | None,
    to_state: State | None,
) -> bool:
    """Move the row ``id_column = id`` of the user's ``table`` from ``from_state`` to
    ``to_state`` with one ``UPDATE ... SET state = to WHERE id = ... AND state = from``.
    Returns whether the row moved (``False``: other state, or no such row).

    ``conn`` is a ``sqlite3`` or psycopg 3 connection. Identifiers are quoted (any name is
    safe; pass ``("schema", "table")`` for a qualified name); values are parameters.
    ``None`` stands for SQL ``NULL`` on either side. The statement runs in the connection's
    current transaction and is not committed here: in autocommit mode it commits at once;
    otherwise it is part of your transaction (with your business writes) and commits or
    rolls back with it. In PostgreSQL under READ COMMITTED (the default) a concurrent
    duplicate waits for that transaction and then finds the row moved (``False``); under
    REPEATABLE READ / SERIALIZABLE it fails with a serialization error instead.
    """
    steps = _user_cas_steps(
        _sql.dialect_of(conn), table, id_column, id, state_column, from_state, to_state
    )
    return _sql.run(conn, steps)


async def asql_transition(
    conn: Any,
    table: str | Sequence[str],
    id_column: str,
    id: object,
    state_column: str,
    from_state: State | None,
    to_state: State | None,
) -> bool:
    """Async :func:`sql_transition` on a psycopg ``AsyncConnection``."""
    steps = _user_cas_steps(
        _sql.dialect_of(conn), table, id_column, id, state_column, from_state, to_state
    )
    return await _sql.arun(conn, steps)


def dynamodb_transition_update(
    table: str, key: Mapping[str, Any], attr: str, from_state: State | None, to_state: State
) -> dict[str, Any]:
    """The ``TransactWriteItems`` entry (``{"Update": {...}}``) of the transition, to commit
    it together with other writes (see :func:`~idempotence.effects.dynamodb_transaction`)."""
    _, request = _dynamodb_cas_request(table, key, attr, _text(from_state), _text(to_state))
    return {"Update": request}


def dynamodb_transition(
    client: Any,
    table: str,
    key: Mapping[str, Any],
    attr: str,
    from_state: State | None,
    to_state: State | None,
) -> bool:
    """Move attribute ``attr`` of the item ``key`` in the user's ``table`` from
    ``from_state`` to ``to_state`` with one conditional request (``UpdateItem`` with
    ``ConditionExpression #attr = :from``). Returns whether it moved.

    ``client`` is a boto3 DynamoDB client. ``key`` maps key attribute names to values, plain
    (``str`` -> S, numbers -> N, bytes -> B) or typed (``{"S": "o-1"}``). ``from_state=None``
    requires the attribute to be absent (``UpdateItem`` creates the item if it does not
    exist); ``to_state=None`` deletes the item if ``attr`` equals ``from_state``. Other
    errors (throttling, missing table) propagate as botocore raises them.
    """
    method, request = _dynamodb_cas_request(table, key, attr, _text(from_state), _text(to_state))
    try:
        getattr(client, method)(**request)
    except Exception as exc:
        if _is_condition_failure(exc):
            return False
        raise
    return True


async def adynamodb_transition(
    client: Any,
    table: str,
    key: Mapping[str, Any],
    attr: str,
    from_state: State | None,
    to_state: State | None,
) -> bool:
    """Async :func:`dynamodb_transition` with an aiobotocore DynamoDB client."""
    method, request = _dynamodb_cas_request(table, key, attr, _text(from_state), _text(to_state))
    try:
        await getattr(client, method)(**request)
    except Exception as exc:
        if _is_condition_failure(exc):
            return False
        raise
    return True
