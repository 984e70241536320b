"""The SQL of transactional idempotency: claim and complete a record inside the caller's
transaction, once for both dialects and both shells (see :mod:`._transaction` for the
protocol), and where the decorator gets its connections.

The records table is the SQL stores' (:mod:`idempotence.stores.capabilities`:
:data:`~idempotence.stores.capabilities.RECORD_COLUMNS`,
:func:`~idempotence.stores.capabilities.record_from_row`), so the records are visible
through the normal store API.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .._record import Claim, Record
from ..stores import decide_claim
from ..stores.capabilities import (
    RECORD_COLUMNS,
    SQLConnections,
    fresh_fence_sql,
    record_from_row,
)
from ._sql import MYSQL, POSTGRES, Dialect, Steps, Stmt

__all__ = [
    "Source",
    "Table",
    "async_transaction",
    "claim_steps",
    "complete_steps",
    "sync_transaction",
]

_COLS = ", ".join(RECORD_COLUMNS)
#: How often a PostgreSQL claim retries when the row it conflicted with was deleted before
#: it could be locked (a concurrent ``delete``/``purge``).
_CLAIM_ATTEMPTS = 4


def _row_record(row: Sequence[Any]) -> Record:
    return record_from_row(row)


# -- the SQL, once for both shells ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Table:
    """A records table as one dialect spells it."""

    dialect: Dialect
    name: str  # quoted/validated, ready for SQL
    ddl: str
    clock: Callable[[], float]

    def now(self) -> str:
        return self.dialect.server_now or self.dialect.placeholder("now")

    def stmt(self, template: str, **params: object) -> Stmt:
        """``template`` with ``{t}`` (the table), ``{K}`` (the key column), ``{COLS}`` (the
        record columns), ``{NOW}`` and each ``{param}`` spelt in the dialect."""
        if self.dialect.server_now is None:
            params["now"] = float(self.clock())
        key = "`key`" if self.dialect is MYSQL else "key"
        sql = (
            template.replace("{t}", self.name)
            .replace("{NOW}", self.now())
            .replace("{K}", key)
            .replace("{COLS}", _COLS.replace("key", key, 1))
        )
        return Stmt(self.dialect.sql(sql, list(params)), params)


def claim_steps(t: Table, key: str, fingerprint: str, lease: float, ttl: float) -> Steps[Claim]:
    """Claim ``key`` inside the caller's transaction (see the module docstring). Returns
    the claim; on success the row is written (uncommitted) and locked by the transaction."""
    keep = max(ttl, lease)
    for _ in range(_CLAIM_ATTEMPTS):
        if t.dialect is MYSQL:
            # Insert the key, or lock the existing row exclusively at once (a plain INSERT
            # failing on the duplicate would take a shared lock, and two claimers upgrading
            # theirs would deadlock); @idem_dup tells which happened.
            yield t.stmt("SET @idem_dup = 0")
            yield t.stmt(
                "INSERT INTO {t} ({COLS}) VALUES ({key}, 'IN_PROGRESS', {fingerprint}, "
                "GREATEST(1, FLOOR({NOW} * 1000)), {NOW} + {lease}, {NOW} + {keep}, NULL) "
                "ON DUPLICATE KEY UPDATE fence = IF(@idem_dup := 1, fence, fence)",
                key=key,
                fingerprint=fingerprint,
                lease=float(lease),
                keep=float(keep),
            )
            rows, _ = yield t.stmt(
                "SELECT {COLS}, {NOW}, @idem_dup FROM {t} WHERE {K} = {key} FOR UPDATE", key=key
            )
            if not rows:
                continue  # cannot happen while we hold the row; insert again if it does
            if not int(rows[0][8]):
                return Claim(acquired=True, record=_row_record(rows[0]), now=float(rows[0][7]))
            lock = ""  # read above, under the lock
        elif t.dialect is POSTGRES:
            rows, _ = yield t.stmt(
                f"INSERT INTO {{t}} ({_COLS}) VALUES ({{key}}, 'IN_PROGRESS', {{fingerprint}}, "
                f"{fresh_fence_sql('{NOW}')}, {{NOW}} + {{lease}}, {{NOW}} + {{keep}}, "
                f"NULL) ON CONFLICT (key) DO NOTHING RETURNING {_COLS}, {{NOW}}",
                key=key,
                fingerprint=fingerprint,
                lease=float(lease),
                keep=float(keep),
            )
            if rows:
                return Claim(acquired=True, record=_row_record(rows[0]), now=float(rows[0][7]))
            lock = " FOR UPDATE"
        else:
            lock = ""  # BEGIN IMMEDIATE holds the database's write lock
        if t.dialect is not MYSQL:
            rows, _ = yield t.stmt(
                f"SELECT {_COLS}, {{NOW}} FROM {{t}} WHERE key = {{key}}{lock}", key=key
            )
        if not rows and t.dialect is POSTGRES:
            continue  # deleted since our insert conflicted: insert again
        existing = _row_record(rows[0]) if rows else None
        now = float(rows[0][7]) if rows else float(t.clock())
        claim = decide_claim(existing, key, fingerprint, now=now, lease=lease, ttl=ttl)
        if claim.acquired:
            r = claim.record
            template = (
                "UPDATE {t} SET status = 'IN_PROGRESS', fingerprint = {fingerprint}, "
                "fence = {fence}, lease_expires_at = {lease_at}, expires_at = {expires_at}, "
                "result = NULL WHERE {K} = {key}"
                if existing is not None
                else f"INSERT INTO {{t}} ({_COLS}) VALUES ({{key}}, 'IN_PROGRESS', "
                "{fingerprint}, {fence}, {lease_at}, {expires_at}, NULL)"
            )
            yield t.stmt(
                template,
                key=key,
                fingerprint=fingerprint,
                fence=r.fence,
                lease_at=r.lease_expires_at,
                expires_at=r.expires_at,
            )
        return claim
    raise RuntimeError(f"claim of {key!r} did not settle after {_CLAIM_ATTEMPTS} attempts")


def complete_steps(t: Table, key: str, fence: int, result: bytes, ttl: float) -> Steps[None]:
    _, count = yield t.stmt(
        "UPDATE {t} SET status = 'COMPLETED', result = {result}, expires_at = {NOW} + {ttl} "
        "WHERE {K} = {key} AND fence = {fence}",
        key=key,
        fence=fence,
        result=bytes(result),
        ttl=float(ttl),
    )
    if count != 1:  # cannot happen while the transaction holds the row; say so if it does
        raise RuntimeError(f"the claimed record {key!r} vanished inside its transaction")


# -- transaction shells --------------------------------------------------------------------
@contextlib.contextmanager
def sync_transaction(conn: Any, dialect: Dialect) -> Iterator[None]:
    """A transaction on ``conn``: psycopg's ``conn.transaction()``; for ``sqlite3``,
    ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), or a savepoint when the
    connection is already inside a transaction."""
    if dialect is POSTGRES:
        with conn.transaction():
            yield
        return
    if dialect is MYSQL:
        with _mysql_transaction(conn):
            yield
        return
    if conn.in_transaction:
        conn.execute("SAVEPOINT idempotence_tx")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK TO idempotence_tx")
            conn.execute("RELEASE idempotence_tx")
            raise
        conn.execute("RELEASE idempotence_tx")
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


_IN_TRANS = 1  # SERVER_STATUS_IN_TRANS of the MySQL protocol


@contextlib.contextmanager
def _mysql_transaction(conn: Any) -> Iterator[None]:
    """``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` on error) on a PyMySQL connection, or a
    savepoint when it is already inside a transaction."""
    from ._sql import execute

    if conn.server_status & _IN_TRANS:
        execute(conn, Stmt("SAVEPOINT idempotence_tx", {}))
        try:
            yield
        except BaseException:
            execute(conn, Stmt("ROLLBACK TO SAVEPOINT idempotence_tx", {}))
            raise
        execute(conn, Stmt("RELEASE SAVEPOINT idempotence_tx", {}))
        return
    conn.begin()
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


@contextlib.asynccontextmanager
async def async_transaction(conn: Any, dialect: Dialect) -> AsyncIterator[None]:
    """A transaction on an async connection: psycopg's ``conn.transaction()``; for
    aiomysql, ``BEGIN`` ... ``COMMIT`` (``ROLLBACK`` on error), or a savepoint when the
    connection is already inside a transaction."""
    if dialect is not MYSQL:
        async with conn.transaction():
            yield
        return
    from ._sql import aexecute

    if conn.server_status & _IN_TRANS:
        await aexecute(conn, Stmt("SAVEPOINT idempotence_tx", {}))
        try:
            yield
        except BaseException:
            await aexecute(conn, Stmt("ROLLBACK TO SAVEPOINT idempotence_tx", {}))
            raise
        await aexecute(conn, Stmt("RELEASE SAVEPOINT idempotence_tx", {}))
        return
    await conn.begin()
    try:
        yield
    except BaseException:
        await conn.rollback()
        raise
    await conn.commit()


class Source:
    """Where the decorator gets a connection: a store with the
    :class:`~idempotence.stores.capabilities.SQLConnections` capability, a pool
    (``.connection()``) or a factory."""

    def __init__(self, source: Any) -> None:
        self.source = source

    @contextlib.contextmanager
    def sync(self) -> Iterator[Any]:
        if isinstance(self.source, SQLConnections):
            with self.source.sql_connection() as conn:
                yield conn
            return
        if hasattr(self.source, "connection"):
            with self.source.connection() as conn:
                yield conn
            return
        conn = self.source()
        if inspect.isawaitable(conn):
            raise TypeError("this connection factory is async: decorate an async function")
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.asynccontextmanager
    async def asyn(self) -> AsyncIterator[Any]:
        if isinstance(self.source, SQLConnections):
            source = self.source.asql_connection()
            if source is None:
                raise TypeError("this store gives no async connections: decorate a sync function")
            async with source as conn:
                yield conn
            return
        if hasattr(self.source, "connection"):
            async with self.source.connection() as conn:
                yield conn
            return
        conn = self.source()
        if inspect.isawaitable(conn):
            conn = await conn
        try:
            yield conn
        finally:
            await conn.close()
