"""Transactional idempotency: the claim, the business writes and the result commit together.

With a record-based store the side effect and the record are two commits: if the process
dies between them, a retry runs the effect again. When the effect is a write to the same
SQL database as the records (or to DynamoDB), putting the record in the same transaction
closes that window: either the writes and the completed record commit, or neither does.

SQL (PostgreSQL through psycopg 3, SQLite through ``sqlite3``): the records use the table
and row format of :class:`~idempotence.stores.PostgresStore` /
:class:`~idempotence.stores.SQLiteStore` (default table ``idempotency``), so they are
visible through the normal store API. Inside the transaction:

- PostgreSQL: ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING`` claims a new key. A
  concurrent duplicate's insert waits on the uncommitted row; when the first transaction
  commits it finds the row, reads it with ``SELECT ... FOR UPDATE`` and replays the stored
  result; when the first rolls back (or its process dies) the duplicate's insert proceeds
  and it runs. An existing row past retention (or an in-progress claim of the normal API
  whose lease lapsed) is taken over under ``FOR UPDATE`` with fence + 1.
- SQLite: ``BEGIN IMMEDIATE`` takes the database's write lock first, so a duplicate waits
  at ``BEGIN`` (up to the connection's timeout) and then sees the completed record.

Then the body writes, the record is completed with the result by an ``UPDATE`` in the same
transaction, and the transaction commits.

The statements are in ``_sql_records`` (once for both dialects and both shells); the
transaction and its outcome in ``_outcome``. DynamoDB: :func:`dynamodb_transaction` (in
``_dynamodb``) sends the business writes and the conditional completion of the record as one
``TransactWriteItems``.

One file (over 400 lines): it is one class, :class:`TransactionalIdempotency`, whose sync
and async transactions share its preparation and SQL steps.

Twins kept: ``transaction`` / ``atransaction`` repeat only their public signatures (both go
through ``_prepare``); the context managers differ by the awaited calls.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import typing
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

from .._config import IdempotencyConfig, seconds
from .._keys import digest
from .._record import Record
from ..engine import Operation, default_namespace, replay_record, with_replay_types
from ..stores.capabilities import (
    quoted_table,
    records_ddl,
)
from . import _sql
from . import _sql_records as _records
from ._child_key import running
from ._dynamodb import adynamodb_transaction, dynamodb_transaction
from ._outcome import (
    NO_FINGERPRINT,
    Transaction,
    TransactionOutcome,
    check_options,
    encoder,
    open_transaction,
)
from ._sql import MYSQL, POSTGRES, SQLITE, Dialect

__all__ = [
    "Transaction",
    "TransactionOutcome",
    "TransactionalIdempotency",
    "adynamodb_transaction",
    "dynamodb_transaction",
    "transactional",
]

P = ParamSpec("P")
R = TypeVar("R")
_T = TypeVar("_T")


class TransactionalIdempotency:
    """Idempotent SQL transactions over the records table of a SQL store.

    ``connect`` (needed by the decorator form only) gives connections: a
    ``psycopg_pool.ConnectionPool`` / ``AsyncConnectionPool``, a function returning a new
    connection (``sqlite3`` or psycopg; async functions and awaitables for async
    handlers), closed after each call, or a store with the
    :class:`~idempotence.stores.capabilities.SQLConnections` capability (its
    connections). ``table`` is the records table (default
    ``idempotency``, the stores' default; pass ``store.table`` to share a store's). The
    table is created on first use (``auto_create``). ``options`` are the decorator defaults
    (``key``, ``fingerprint``, ``ttl``, ``lease``, ``namespace``, ``scope``, ``payload``,
    ``serializer``, ``required``, ``on_replay``; see
    :class:`~idempotence.IdempotencyConfig`).

    Context manager form, on your connection::

        with txi.transaction(conn, f"orders.create#{order_id}", payload=order) as tx:
            if tx.replayed:
                return tx.result
            conn.execute("INSERT INTO orders ...")
            tx.set_result({"order_id": order_id})

    Decorator form: the function gets a connection in an open transaction as its first
    argument, callers pass the rest::

        @txi(key="messageId")
        def handle(conn, message: dict) -> dict: ...

        handle(message)
    """

    def __init__(
        self,
        connect: Any = None,
        *,
        table: str = "idempotency",
        auto_create: bool = True,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        check_options(options)
        self.connect = connect
        self.table = table
        self.auto_create = auto_create
        self.clock = clock
        self.config = IdempotencyConfig(**options)
        self._tables = {
            SQLITE: _records.Table(
                SQLITE, quoted_table(table, "sqlite"), records_ddl(table, "sqlite"), clock
            ),
            POSTGRES: _records.Table(
                POSTGRES, quoted_table(table, "postgres"), records_ddl(table, "postgres"), clock
            ),
            MYSQL: _records.Table(
                MYSQL, quoted_table(table, "mysql"), records_ddl(table, "mysql"), clock
            ),
        }
        self._created: set[Dialect] = set()

    def migration_sql(self, dialect: str = "postgres") -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` of the records table (``"postgres"``,
        ``"sqlite"`` or ``"mysql"``), for migrations run by hand (then pass
        ``auto_create=False``)."""
        by_name = {"postgres": POSTGRES, "mysql": MYSQL}
        return self._tables[by_name.get(dialect, SQLITE)].ddl

    # -- the context manager ----------------------------------------------------------
    def _prepare(
        self, conn: Any, key: str, payload: Any, ttl: float | None, result_type: Any
    ) -> tuple[_records.Table, str, float, Callable[[Any], bytes], Callable[[Record], Any]]:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        t = self._tables[_sql.dialect_of(conn)]
        fingerprint = NO_FINGERPRINT if payload is None else digest(payload)
        keep = self.config.ttl_s if ttl is None else seconds(ttl, "ttl")
        serializer = self.config.serializer
        hint = with_replay_types(result_type, self.config.replay_types)
        return (
            t,
            fingerprint,
            keep,
            encoder(serializer, lambda: hint),
            lambda r: replay_record(r, serializer, hint, self.config.on_replay),
        )

    def transaction(
        self,
        conn: Any,
        key: str,
        *,
        payload: Any = None,
        ttl: float | None = None,
        result_type: Any = None,
    ) -> contextlib.AbstractContextManager[Transaction]:
        """Run the ``with`` body in one transaction on ``conn`` (a ``sqlite3``, psycopg 3 or
        PyMySQL connection) that claims ``key``, holds your writes and stores the result.

        ``payload`` (any canonical-JSON data) is fingerprinted: reusing ``key`` with another
        payload raises :class:`~idempotence.KeyReuseError`. ``result_type`` is the type to
        rebuild replayed results as (dataclasses, enums, models), widened by the
        ``replay_types`` option; ``tx.set_result`` of a value holding any other class raises
        :class:`~idempotence.UnencodableError` at once (a replay could not rebuild it), so
        the body's exit rolls everything back. On a normal exit the
        record is completed and the transaction commits; if the body raises, everything
        rolls back and the key stays free. A concurrent duplicate waits for this
        transaction, then gets ``tx.replayed``. If ``conn`` is already inside a
        transaction, this one is a savepoint of it and commits with it.
        """
        return self._transaction(conn, key, *self._prepare(conn, key, payload, ttl, result_type))

    def atransaction(
        self,
        conn: Any,
        key: str,
        *,
        payload: Any = None,
        ttl: float | None = None,
        result_type: Any = None,
    ) -> contextlib.AbstractAsyncContextManager[Transaction]:
        """Async :meth:`transaction` (``async with``) on a psycopg ``AsyncConnection`` or an
        aiomysql connection."""
        return self._atransaction(conn, key, *self._prepare(conn, key, payload, ttl, result_type))

    @contextlib.contextmanager
    def _transaction(
        self,
        conn: Any,
        key: str,
        t: _records.Table,
        fingerprint: str,
        ttl: float,
        encode: Callable[[Any], bytes],
        replay: Callable[[Record], Any],
    ) -> Iterator[Transaction]:
        self._ensure_table(conn, t)
        with _records.sync_transaction(conn, t.dialect):
            claim = _sql.run(
                conn, _records.claim_steps(t, key, fingerprint, self.config.lease_s, ttl)
            )
            tx = open_transaction(key, claim, fingerprint, encode, replay)
            with running(key):
                yield tx
            if not tx.replayed:
                _sql.run(
                    conn, _records.complete_steps(t, key, claim.record.fence, tx._stored(), ttl)
                )

    @contextlib.asynccontextmanager
    async def _atransaction(
        self,
        conn: Any,
        key: str,
        t: _records.Table,
        fingerprint: str,
        ttl: float,
        encode: Callable[[Any], bytes],
        replay: Callable[[Record], Any],
    ) -> AsyncIterator[Transaction]:
        if t.dialect is MYSQL:
            if not inspect.iscoroutinefunction(conn.begin):
                raise TypeError("atransaction needs an aiomysql connection, not a PyMySQL one")
        elif t.dialect is not POSTGRES or not inspect.iscoroutinefunction(conn.execute):
            raise TypeError("atransaction needs a psycopg AsyncConnection")
        await self._aensure_table(conn, t)
        async with _records.async_transaction(conn, t.dialect):
            claim = await _sql.arun(
                conn, _records.claim_steps(t, key, fingerprint, self.config.lease_s, ttl)
            )
            tx = open_transaction(key, claim, fingerprint, encode, replay)
            with running(key):
                yield tx
            if not tx.replayed:
                await _sql.arun(
                    conn, _records.complete_steps(t, key, claim.record.fence, tx._stored(), ttl)
                )

    def _ensure_table(self, conn: Any, t: _records.Table) -> None:
        if not self.auto_create or t.dialect in self._created:
            return
        if t.dialect is SQLITE:
            conn.execute(t.ddl)
        elif t.dialect is MYSQL:
            _sql.run(conn, _mysql_ensure(t, conn.server_status))
        else:
            try:
                with conn.transaction():  # a savepoint if the caller's transaction is open
                    conn.execute(t.ddl)
            except Exception as exc:
                if not _sql.ddl_race(exc):
                    raise
        self._created.add(t.dialect)

    async def _aensure_table(self, conn: Any, t: _records.Table) -> None:
        if not self.auto_create or t.dialect in self._created:
            return
        if t.dialect is MYSQL:
            await _sql.arun(conn, _mysql_ensure(t, conn.server_status))
            self._created.add(t.dialect)
            return
        try:
            async with conn.transaction():
                await conn.execute(t.ddl)
        except Exception as exc:
            if not _sql.ddl_race(exc):
                raise
        self._created.add(t.dialect)

    # -- the decorator ----------------------------------------------------------------
    @overload
    def __call__(self, fn: Callable[Concatenate[Any, P], R], /) -> Callable[P, R]: ...

    @overload
    def __call__(
        self, fn: None = None, /, **options: Any
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[P, R]]: ...

    def __call__(
        self, fn: Callable[Concatenate[Any, P], R] | None = None, /, **options: Any
    ) -> Callable[P, R] | Callable[[Callable[Concatenate[Any, P], R]], Callable[P, R]]:
        """Decorate ``fn(conn, *args, **kwargs)``: calling ``fn(*args, **kwargs)`` opens a
        connection from ``connect``, runs ``fn`` in an idempotent transaction keyed on the
        arguments (as :class:`~idempotence.Idempotency` derives keys, with ``key=`` etc.)
        and returns its result, or the stored result on a duplicate (without running
        ``fn``). The return value is the stored result. Sync and ``async def`` functions.
        """
        if fn is None:
            return lambda f: self._decorate(f, options)
        if options:
            raise TypeError("pass options as @txi(key=...), not together with the function")
        return self._decorate(fn, {})

    def _decorate(
        self, fn: Callable[Concatenate[Any, P], R], options: dict[str, Any]
    ) -> Callable[P, R]:
        check_options(options)
        if self.connect is None:
            raise TypeError(
                "give TransactionalIdempotency a connect= source to use it as a decorator"
            )
        config = self.config.replace(**options) if options else self.config
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(f"{fn.__qualname__} must take the connection as its first parameter")

        def shim(*args: Any, **kwargs: Any) -> Any:  # signature without the connection
            raise NotImplementedError

        functools.update_wrapper(shim, fn)
        shim.__signature__ = inspect.signature(fn).replace(parameters=params[1:])  # type: ignore[attr-defined]
        namespace = options.get("namespace")
        if namespace is None:  # as Idempotency names functions (Lambda function name too)
            namespace = default_namespace(fn, config.namespace)
        bound = Operation(shim, config, namespace)
        source = _records.Source(self.connect)
        # Replays decode with the return annotation widened by replay_types (bound.hint):
        # a result holding any other class is refused when it is stored, as the decorator does.
        encode = encoder(config.serializer, bound.hint)
        txi = self

        def prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, str]:
            payload = bound.payload(args, kwargs)
            return bound.key(payload), bound.fingerprint(payload)

        def table_for(conn: Any) -> _records.Table:
            return txi._tables[_sql.dialect_of(conn)]

        wrapper: Any
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                key, fingerprint = prepare(args, kwargs)
                async with source.asyn() as conn:
                    if key is None:
                        async with _records.async_transaction(conn, table_for(conn).dialect):
                            return await fn(conn, *args, **kwargs)
                    async with txi._atransaction(
                        conn, key, table_for(conn), fingerprint, config.ttl_s, encode, bound.replay
                    ) as tx:
                        if tx.replayed:
                            return tx.result
                        result = await fn(conn, *args, **kwargs)
                        tx.set_result(result)
                    return result

        else:

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                key, fingerprint = prepare(args, kwargs)
                with source.sync() as conn:
                    if key is None:
                        with _records.sync_transaction(conn, table_for(conn).dialect):
                            return fn(conn, *args, **kwargs)
                    with txi._transaction(
                        conn, key, table_for(conn), fingerprint, config.ttl_s, encode, bound.replay
                    ) as tx:
                        if tx.replayed:
                            return tx.result
                        result = fn(conn, *args, **kwargs)
                        tx.set_result(result)
                    return result

        def key_for(*args: Any, **kwargs: Any) -> str | None:
            return prepare(args, kwargs)[0]

        wrapper.key_for = key_for
        wrapper.idempotency_config = config
        return typing.cast(Callable[P, R], wrapper)


def _mysql_ensure(t: _records.Table, server_status: int) -> _sql.Steps[None]:
    """Create the MySQL records table if it is missing. DDL commits the open transaction
    implicitly in MySQL, so inside one a missing table is an error instead."""
    try:
        yield _sql.Stmt(f"SELECT 1 FROM {t.name} LIMIT 0", {})
        if not server_status & 1:  # end the transaction the SELECT opened (no autocommit)
            yield _sql.Stmt("COMMIT", {})
        return
    except Exception as exc:
        if _sql.error_code(exc) != 1146:  # ER_NO_SUCH_TABLE
            raise
    if server_status & 1:  # SERVER_STATUS_IN_TRANS
        raise RuntimeError(
            "the idempotency records table does not exist and the connection is inside a "
            "transaction (MySQL would commit it to create the table): create the table "
            "first, e.g. with TransactionalIdempotency.migration_sql('mysql')"
        )
    yield from _sql.quiet_ddl(t.ddl)


def transactional(
    connect: Any, *, table: str = "idempotency", **options: Any
) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[P, R]]:
    """Decorator: ``@transactional(pool, key="id")`` on ``def handle(conn, msg)`` is
    ``TransactionalIdempotency(pool, table=table)(key="id")`` (see there)."""
    return TransactionalIdempotency(connect, table=table)(**options)
