"""Where :class:`~idempotence.effects.StateGuard` keeps states, one backend per capability.

Every backend offers four operations on "a state or nothing" (``None`` = no state):
compare-and-set, read, unconditional write and delete, each one statement / script /
request. They are sans-I/O steps (generators) run by a sync and an async driver:

- :class:`MemoryStates`: a dict per :class:`~idempotence.stores.MemoryStore`;
- :class:`SQLStates`: a table, over
  :class:`~idempotence.stores.capabilities.SQLConnections` (SQLite, PostgreSQL, or any
  store giving ``sqlite3`` / psycopg 3 connections);
- :class:`ScriptStates`: string keys, over
  :class:`~idempotence.stores.capabilities.AtomicScripts` (Redis);
- ``DynamoDBStates`` (in ``_dynamodb``): items, over
  :class:`~idempotence.stores.capabilities.DynamoDBRecords`.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import weakref
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from ..engine import adrive as adrive_steps
from ..engine import drive as drive_steps
from ..stores import MemoryStore
from ..stores.capabilities import AtomicScripts, SQLConnections
from . import _sql
from ._sql import MYSQL, POSTGRES, SQLITE, Dialect, Steps, Stmt

__all__ = ["Backend", "MemoryStates", "SQLStates", "ScriptStates", "State", "text"]

_T = TypeVar("_T")
State = str | enum.Enum

#: Default SQL table of StateGuard on SQL stores.
STATES_TABLE = "idempotence_states"


def text(state: State | None) -> str | None:
    """A state as stored: the string, or the enum member's string value."""
    if state is None:
        return None
    value = state.value if isinstance(state, enum.Enum) else state
    if not isinstance(value, str) or not value:
        raise TypeError(f"a state must be a non-empty str or a str-valued enum, got {state!r}")
    return value


class Backend:
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


# -- memory ------------------------------------------------------------------------------------
_memory_states: weakref.WeakKeyDictionary[MemoryStore, tuple[threading.Lock, dict[str, str]]]
_memory_states = weakref.WeakKeyDictionary()
_memory_lock = threading.Lock()


class MemoryStates(Backend):
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
        def step(change: Callable[[dict[str, str]], Any]) -> Any:
            with self.lock:
                return change(self.states)

        return drive_steps(steps, step, catch=())

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        return self.run(steps)  # a dict never blocks


# -- SQL ---------------------------------------------------------------------------------------
def states_ddl(dialect: Dialect, table: str) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` of a states table."""
    t = dialect.quote(table.split(".") if dialect in (POSTGRES, MYSQL) else table)
    if dialect is MYSQL:
        from ..stores.capabilities import mysql_states_ddl

        return mysql_states_ddl(t)
    return f"CREATE TABLE IF NOT EXISTS {t} (entity text PRIMARY KEY, state text NOT NULL)" + (
        " WITHOUT ROWID" if dialect is SQLITE else ""
    )


class SQLStates(Backend):
    """States in a table ``(entity text PRIMARY KEY, state text NOT NULL)`` of the store's
    database; ``None`` is "no row". The dialect is the connection's (``sqlite3`` or psycopg
    3), found on first use; ``table`` may be ``schema.table`` on PostgreSQL."""

    def __init__(self, store: SQLConnections, table: str | None) -> None:
        self.store = store
        self.name = table or STATES_TABLE
        self.dialect: Dialect | None = None
        self.table = ""
        self._created = False

    def _bind(self, conn: Any) -> None:
        if self.dialect is None:
            dialect = _sql.dialect_of(conn)
            qualified = dialect in (POSTGRES, MYSQL)
            self.table = dialect.quote(self.name.split(".") if qualified else self.name)
            self.dialect = dialect

    def _stmt(self, template: str, **params: object) -> Stmt:
        assert self.dialect is not None  # bound by run/arun before the steps start
        return Stmt(self.dialect.sql(template.replace("{t}", self.table), list(params)), params)

    def _ensure(self) -> Steps[None]:
        if not self._created:
            assert self.dialect is not None
            if self.dialect is MYSQL:  # only if missing: aiomysql warns "already exists"
                try:
                    yield Stmt(f"SELECT 1 FROM {self.table} LIMIT 0", {})
                    self._created = True
                    return
                except Exception as exc:
                    if _sql.error_code(exc) != 1146:  # ER_NO_SUCH_TABLE
                        raise
                yield from _sql.quiet_ddl(states_ddl(self.dialect, self.name))
                self._created = True
                return
            try:
                yield Stmt(states_ddl(self.dialect, self.name), {})
            except Exception as exc:
                if not _sql.ddl_race(exc):
                    raise
            self._created = True

    def cas(self, entity: str, expected: str | None, new: str | None) -> Steps[bool]:
        yield from self._ensure()
        if expected is None and new is None:
            raise ValueError("a transition needs a state on at least one side")
        if expected is None and self.dialect is MYSQL:
            # No ON CONFLICT DO NOTHING (and INSERT IGNORE would hide other errors too):
            # a duplicate key is the "already there" answer.
            try:
                yield self._stmt(
                    "INSERT INTO {t} (entity, state) VALUES ({entity}, {new})",
                    entity=entity,
                    new=new,
                )
            except Exception as exc:
                if _sql.error_code(exc) != 1062:  # ER_DUP_ENTRY
                    raise
                return False
            return True
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
        if not rows:
            return None
        value = rows[0][0]
        return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)

    def write(self, entity: str, state: str) -> Steps[None]:
        yield from self._ensure()
        upsert = (
            "ON DUPLICATE KEY UPDATE state = VALUES(state)"
            if self.dialect is MYSQL
            else "ON CONFLICT (entity) DO UPDATE SET state = excluded.state"
        )
        yield self._stmt(
            "INSERT INTO {t} (entity, state) VALUES ({entity}, {state}) " + upsert,
            entity=entity,
            state=state,
        )

    def remove(self, entity: str) -> Steps[bool]:
        yield from self._ensure()
        _, count = yield self._stmt("DELETE FROM {t} WHERE entity = {entity}", entity=entity)
        return count == 1

    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        with self.store.sql_connection() as conn:
            self._bind(conn)
            return _sql.run(conn, steps)

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        source = self.store.asql_connection()
        if source is None:
            return await asyncio.to_thread(self.run, steps)
        async with source as conn:
            self._bind(conn)
            return await _sql.arun(conn, steps)


# -- scripts (Redis) ---------------------------------------------------------------------------
# Every operation is one script on one key (valid on Redis Cluster).
_CAS = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
if ARGV[3] == '1' then redis.call('SET', KEYS[1], ARGV[4]) else redis.call('DEL', KEYS[1]) end
return 1
"""
_GET = "return redis.call('GET', KEYS[1])"
_SET = "redis.call('SET', KEYS[1], ARGV[1]) return 1"
_DEL = "return redis.call('DEL', KEYS[1])"

Script = tuple[str, str, tuple[str, ...]]


class ScriptStates(Backend):
    """States as plain string keys ``{store prefix}{prefix}{entity}``, without expiry."""

    def __init__(self, store: AtomicScripts, prefix: str) -> None:
        self.store = store
        self.prefix = store.prefix + prefix

    def _eval(self, script: str, entity: str, *args: str) -> Script:
        return script, self.prefix + entity, args

    def cas(self, entity: str, expected: str | None, new: str | None) -> Generator[Any, Any, bool]:
        if expected is None and new is None:
            raise ValueError("a transition needs a state on at least one side")
        flags = (
            "0" if expected is None else "1",
            expected or "",
            "0" if new is None else "1",
            new or "",
        )
        return int((yield self._eval(_CAS, entity, *flags))) == 1

    def read(self, entity: str) -> Generator[Any, Any, str | None]:
        value = yield self._eval(_GET, entity)
        return None if value is None else (value.decode() if isinstance(value, bytes) else value)

    def write(self, entity: str, state: str) -> Generator[Any, Any, None]:
        yield self._eval(_SET, entity, state)

    def remove(self, entity: str) -> Generator[Any, Any, bool]:
        return int((yield self._eval(_DEL, entity))) == 1

    # Each script runs through the store's run_script / arun_script.
    def run(self, steps: Generator[Any, Any, _T]) -> _T:
        return drive_steps(steps, lambda call: self.store.run_script(*call), catch=())

    async def arun(self, steps: Generator[Any, Any, _T]) -> _T:
        return await adrive_steps(steps, lambda call: self.store.arun_script(*call), catch=())
