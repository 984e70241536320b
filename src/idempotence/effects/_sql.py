"""SQL shared by the effects: identifier quoting, dialects, and one sans-I/O statement runner.

A piece of SQL work is a generator of :class:`Stmt` that receives each statement's
``(rows, rowcount)`` and returns its outcome. :func:`run` drives it on a DB-API style
connection (``sqlite3`` or psycopg 3, whose ``conn.execute`` both return a cursor, or
PyMySQL, through a cursor); :func:`arun` on a psycopg ``AsyncConnection`` or an aiomysql
connection. The SQL and its decisions exist once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ..engine import adrive as adrive_steps
from ..engine import drive as drive_steps

__all__ = [
    "MYSQL",
    "POSTGRES",
    "SQLITE",
    "Dialect",
    "Reply",
    "Steps",
    "Stmt",
    "arun",
    "backtick_ident",
    "dialect_of",
    "quote_ident",
    "run",
]

_T = TypeVar("_T")
Reply = tuple[list[tuple[Any, ...]], int]


@dataclass(frozen=True, slots=True)
class Stmt:
    """One statement with named parameters (written ``{name}`` in ``sql``)."""

    sql: str
    params: Mapping[str, object]


Steps = Generator[Stmt, Reply, _T]


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one database spells what differs: placeholders, the current time, and quoted
    identifiers."""

    name: Literal["sqlite", "postgres", "mysql"]
    placeholder: Callable[[str], str]
    #: SQL expression of the current time in float epoch seconds, or None: pass ``now``.
    server_now: str | None
    #: Quotes an identifier (or a qualified name given as a sequence).
    quote: Callable[[str | Sequence[str]], str]

    def sql(self, template: str, names: Sequence[str]) -> str:
        """``template`` with each ``{name}`` of ``names`` replaced by a placeholder."""
        return template.format(**{n: self.placeholder(n) for n in names})


def _is_mysql(conn: object) -> bool:
    """A PyMySQL or aiomysql connection (or a subclass of one)."""
    return any(c.__module__.split(".")[0] in ("pymysql", "aiomysql") for c in type(conn).__mro__)


def dialect_of(conn: object) -> Dialect:
    """The dialect of a ``sqlite3``, psycopg 3 (sync or async), PyMySQL or aiomysql
    connection.

    Raises ``TypeError`` for anything else.
    """
    if isinstance(conn, sqlite3.Connection):
        return SQLITE
    if type(conn).__module__.split(".")[0] == "psycopg" or any(
        c.__module__.startswith("psycopg") for c in type(conn).__mro__
    ):
        return POSTGRES
    if _is_mysql(conn):
        return MYSQL
    raise TypeError(
        f"expected a sqlite3, psycopg 3, PyMySQL or aiomysql connection, got "
        f"{type(conn).__module__}.{type(conn).__qualname__}"
    )


def quote_ident(name: str | Sequence[str]) -> str:
    """A SQL identifier, double-quoted with embedded quotes doubled (standard SQL, valid for
    PostgreSQL and SQLite), so any name is taken verbatim and cannot break out of the
    quotes. A sequence of names is a qualified name (``("app", "orders")`` ->
    ``"app"."orders"``); a string is one name even if it contains a dot.

    Raises ``ValueError`` for an empty name or one containing a NUL character.
    """
    parts = [name] if isinstance(name, str) else list(name)
    if not parts:
        raise ValueError("empty SQL identifier")
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part:
            raise ValueError(f"invalid SQL identifier {part!r}")
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def backtick_ident(name: str | Sequence[str]) -> str:
    """:func:`quote_ident` as MariaDB/MySQL spell it: backquotes, embedded ones doubled."""
    parts = [name] if isinstance(name, str) else list(name)
    if not parts:
        raise ValueError("empty SQL identifier")
    for part in parts:
        if not isinstance(part, str) or not part or "\x00" in part:
            raise ValueError(f"invalid SQL identifier {part!r}")
    return ".".join("`" + part.replace("`", "``") + "`" for part in parts)


SQLITE = Dialect("sqlite", lambda n: f":{n}", None, quote_ident)
POSTGRES = Dialect(
    "postgres",
    lambda n: f"%({n})s",
    "extract(epoch FROM statement_timestamp())::float8",
    quote_ident,
)
#: MariaDB/MySQL through PyMySQL or aiomysql: parameters are put in place by
#: :func:`idempotence.stores._mysql.mysql_sql`, the server's clock is UTC_TIMESTAMP(6).
MYSQL = Dialect(
    "mysql",
    lambda n: f"%({n})s",
    "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1e6)",
    backtick_ident,
)


def execute(conn: Any, stmt: Stmt) -> Reply:
    """Run one statement on a sync connection: its rows (if any) and rowcount."""
    if _is_mysql(conn):  # PyMySQL: no conn.execute; parameters put in place by us
        from ..stores.capabilities import mysql_statement

        with conn.cursor() as cur:
            cur.execute(mysql_statement(conn, stmt.sql, stmt.params))
            rows = list(cur.fetchall()) if cur.description is not None else []
            return rows, int(cur.rowcount)
    cur = conn.execute(stmt.sql, stmt.params)
    rows = list(cur.fetchall()) if cur.description is not None else []
    return rows, int(cur.rowcount)


async def aexecute(conn: Any, stmt: Stmt) -> Reply:
    """Run one statement on a psycopg ``AsyncConnection`` or an aiomysql connection."""
    if _is_mysql(conn):
        from ..stores.capabilities import mysql_statement

        async with conn.cursor() as acur:
            await acur.execute(mysql_statement(conn, stmt.sql, stmt.params))
            rows = list(await acur.fetchall()) if acur.description is not None else []
            return rows, int(acur.rowcount)
    cur = await conn.execute(stmt.sql, stmt.params)
    rows = list(await cur.fetchall()) if cur.description is not None else []
    return rows, int(cur.rowcount)


def run(conn: Any, steps: Steps[_T]) -> _T:
    """Drive ``steps`` on a sync connection; a failing statement is thrown into them."""
    return drive_steps(steps, lambda stmt: execute(conn, stmt), catch=Exception)


async def arun(conn: Any, steps: Steps[_T]) -> _T:
    """Drive ``steps`` on a psycopg ``AsyncConnection`` (the same steps as :func:`run`)."""
    return await adrive_steps(steps, lambda stmt: aexecute(conn, stmt), catch=Exception)


def quiet_ddl(ddl: str) -> Steps[None]:
    """Run a MySQL ``CREATE ... IF NOT EXISTS`` without its "already exists" note (which
    aiomysql raises as a ``Warning``, one more round trip each, when a concurrent caller
    created the table first), restoring the session's ``sql_notes`` after it."""
    yield Stmt("SET @idem_notes = @@sql_notes, sql_notes = 0", {})
    try:
        yield Stmt(ddl, {})
    finally:
        yield Stmt("SET sql_notes = @idem_notes", {})


def error_code(exc: BaseException) -> int | None:
    """The server error number of a PyMySQL/aiomysql error (``None`` for other errors)."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def ddl_race(exc: BaseException) -> bool:
    """A concurrent ``CREATE TABLE/INDEX IF NOT EXISTS`` in PostgreSQL collided in the
    catalog: the object exists, carry on. The same errors the PostgreSQL store tolerates,
    matched by name so that psycopg is not imported for SQLite."""
    return type(exc).__name__ in {"UniqueViolation", "DuplicateTable", "DuplicateObject"}
