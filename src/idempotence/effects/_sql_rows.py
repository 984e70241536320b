"""Compare-and-set on the user's own SQL rows: :func:`sql_transition` and its async twin.

One ``UPDATE ... SET state = :to WHERE id = :id AND state = :from`` on a ``sqlite3`` or
psycopg 3 connection, in the caller's transaction (see :func:`sql_transition`). The
DynamoDB counterpart is in ``_dynamodb``.

Twin kept: :func:`sql_transition` / :func:`asql_transition` repeat only their public
signatures (the statement is one shared generator, run by ``_sql.run`` / ``arun``); a shared
``**kwargs`` signature would lose the documented parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import _sql
from ._sql import Dialect, Steps, Stmt
from ._states import State
from ._states import text as _text

__all__ = ["asql_transition", "sql_transition"]


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
    quote = dialect.quote  # "name" (standard SQL), `name` (MySQL)
    sql = sql.replace("{t}", quote(table)).replace("{i}", quote(id_column))
    sql = sql.replace("{s}", quote(state_column))
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
