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

DynamoDB: :func:`dynamodb_transaction` sends the business writes and the conditional
completion of the record as one ``TransactWriteItems``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import typing
from collections.abc import (
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from .._codec import (
    KIND_VALUE,
    JSONSerializer,
    Serializer,
    envelope,
)
from .._config import IdempotencyConfig, seconds
from .._errors import (
    AlreadyInProgressError,
    KeyReuseError,
)
from .._idempotency import _Bound, replay_record
from .._keys import digest
from .._record import Claim, Record, Status
from ..stores._base import decide_claim
from ..stores._postgres import _ddl as _postgres_ddl
from ..stores._postgres import _fresh_fence as _postgres_fresh_fence
from ..stores._postgres import _record as _postgres_record
from ..stores._postgres import _table_sql
from ..stores._sqlite import sqlite_ddl
from . import _sql
from ._child_key import running
from ._sql import POSTGRES, SQLITE, Dialect, Steps, Stmt

if TYPE_CHECKING:
    from ..stores._dynamodb import DynamoDBStore

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

_COLUMNS = ("key", "status", "fingerprint", "fence", "lease_expires_at", "expires_at", "result")
_COLS = ", ".join(_COLUMNS)
#: How often a PostgreSQL claim retries when the row it conflicted with was deleted before
#: it could be locked (a concurrent ``delete``/``purge``).
_CLAIM_ATTEMPTS = 4
#: Options of IdempotencyConfig that have no meaning inside one transaction.
_NOT_APPLICABLE = (
    "heartbeat", "on_in_progress", "wait_timeout", "local_cache", "store_errors",
    "should_store", "fail_open",
)  # fmt: skip
_NO_FINGERPRINT = "-"


def _row_record(row: Sequence[Any]) -> Record:
    return _postgres_record(tuple(row))


# -- the SQL, once for both shells ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Table:
    """A records table as one dialect spells it."""

    dialect: Dialect
    name: str  # quoted/validated, ready for SQL
    ddl: str
    clock: Callable[[], float]

    def now(self) -> str:
        return self.dialect.server_now or self.dialect.placeholder("now")

    def stmt(self, template: str, **params: object) -> Stmt:
        if self.dialect.server_now is None:
            params["now"] = float(self.clock())
        sql = template.replace("{t}", self.name).replace("{NOW}", self.now())
        return Stmt(self.dialect.sql(sql, list(params)), params)


def _claim_steps(t: _Table, key: str, fingerprint: str, lease: float, ttl: float) -> Steps[Claim]:
    """Claim ``key`` inside the caller's transaction (see the module docstring). Returns
    the claim; on success the row is written (uncommitted) and locked by the transaction."""
    keep = max(ttl, lease)
    for _ in range(_CLAIM_ATTEMPTS):
        if t.dialect is POSTGRES:
            rows, _ = yield t.stmt(
                f"INSERT INTO {{t}} ({_COLS}) VALUES ({{key}}, 'IN_PROGRESS', {{fingerprint}}, "
                f"{_postgres_fresh_fence('{NOW}')}, {{NOW}} + {{lease}}, {{NOW}} + {{keep}}, "
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
                "result = NULL WHERE key = {key}"
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


def _complete_steps(t: _Table, key: str, fence: int, result: bytes, ttl: float) -> Steps[None]:
    _, count = yield t.stmt(
        "UPDATE {t} SET status = 'COMPLETED', result = {result}, expires_at = {NOW} + {ttl} "
        "WHERE key = {key} AND fence = {fence}",
        key=key,
        fence=fence,
        result=bytes(result),
        ttl=float(ttl),
    )
    if count != 1:  # cannot happen while the transaction holds the row; say so if it does
        raise RuntimeError(f"the claimed record {key!r} vanished inside its transaction")


# -- results -------------------------------------------------------------------------------
def _open(
    key: str,
    claim: Claim,
    fingerprint: str,
    encode: Callable[[Any], bytes],
    replay: Callable[[Record], Any],
) -> Transaction:
    if not claim.acquired:
        _check_existing(claim, key, fingerprint)
    return Transaction(key, claim, encode=encode, replay=replay)


def _check_existing(claim: Claim, key: str, fingerprint: str) -> Record:
    """The existing record of a refused claim if it is a completed replay; else raise."""
    record = claim.record
    if record.fingerprint != fingerprint:
        raise KeyReuseError(
            f"idempotency key {key!r} was already used with a different payload; "
            "use a new key for a new operation",
            key=key,
        )
    if record.status is not Status.COMPLETED:
        retry_after = max(0.0, record.lease_expires_at - claim.now)
        raise AlreadyInProgressError(
            f"idempotency key {key!r} is claimed by a non-transactional invocation; retry in "
            f"{retry_after:.1f}s",
            key=key,
            retry_after=retry_after,
        )
    return record


class Transaction:
    """One idempotent transaction, as yielded by :meth:`TransactionalIdempotency.transaction`.

    ``replayed`` is ``True`` when the key was already completed: the body must then not
    write anything, and ``result`` is the stored result. Otherwise the transaction owns the
    key: make the business writes, and :meth:`set_result` the value to keep (``None`` if
    never set); it is stored in the same transaction as the writes.
    """

    def __init__(
        self,
        key: str,
        claim: Claim,
        *,
        encode: Callable[[Any], bytes],
        replay: Callable[[Record], Any],
    ) -> None:
        self.key = key
        self.replayed = not claim.acquired
        #: The existing completed record when replayed; the new in-progress one otherwise.
        self.record = claim.record
        self._encode = encode
        self._replay = replay
        self._value: Any = None
        self._data: bytes | None = None

    @property
    def result(self) -> Any:
        """The stored result (replayed) or the one given to :meth:`set_result` (else
        ``None``). A replay of a stored error raises it."""
        if self.replayed:
            return self._replay(self.record)
        return self._value

    def set_result(self, value: Any) -> None:
        """Record ``value`` as the result, committed with the transaction. Raises
        :class:`~idempotence.UnencodableError` now if the value cannot be stored (the
        transaction then rolls back, with your writes), and ``RuntimeError`` on a replay."""
        if self.replayed:
            raise RuntimeError(
                f"{self.key!r} was already completed (tx.replayed): nothing may be written"
            )
        self._data = self._encode(value)
        self._value = value

    def _stored(self) -> bytes:
        return self._data if self._data is not None else self._encode(None)


# -- transaction shells --------------------------------------------------------------------
@contextlib.contextmanager
def _sync_transaction(conn: Any, dialect: Dialect) -> Iterator[None]:
    """A transaction on ``conn``: psycopg's ``conn.transaction()``; for ``sqlite3``,
    ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error), or a savepoint when the
    connection is already inside a transaction."""
    if dialect is POSTGRES:
        with conn.transaction():
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


class _Source:
    """Where the decorator gets a connection: a pool (``.connection()``) or a factory."""

    def __init__(self, source: Any) -> None:
        self.source = source

    @contextlib.contextmanager
    def sync(self) -> Iterator[Any]:
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


class TransactionalIdempotency:
    """Idempotent SQL transactions over the records table of a SQL store.

    ``connect`` (needed by the decorator form only) gives connections: a
    ``psycopg_pool.ConnectionPool`` / ``AsyncConnectionPool``, or a function returning a new
    connection (``sqlite3`` or psycopg; async functions and awaitables for async
    handlers), closed after each call. ``table`` is the records table (default
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
        _check_options(options)
        self.connect = connect
        self.table = table
        self.auto_create = auto_create
        self.clock = clock
        self.config = IdempotencyConfig(**options)
        self._tables = {
            SQLITE: _Table(SQLITE, _sqlite_name(table), sqlite_ddl(_sqlite_name(table)), clock),
            POSTGRES: _Table(POSTGRES, _table_sql(table), _postgres_ddl(table), clock),
        }
        self._created: set[Dialect] = set()

    def migration_sql(self, dialect: str = "postgres") -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` of the records table (``"postgres"`` or
        ``"sqlite"``), for migrations run by hand (then pass ``auto_create=False``)."""
        return self._tables[POSTGRES if dialect == "postgres" else SQLITE].ddl

    # -- the context manager ----------------------------------------------------------
    def _prepare(
        self, conn: Any, key: str, payload: Any, ttl: float | None, result_type: Any
    ) -> tuple[_Table, str, float, Callable[[Any], bytes], Callable[[Record], Any]]:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty string")
        t = self._tables[_sql.dialect_of(conn)]
        fingerprint = _NO_FINGERPRINT if payload is None else digest(payload)
        keep = self.config.ttl_s if ttl is None else seconds(ttl, "ttl")
        serializer = self.config.serializer
        return (
            t,
            fingerprint,
            keep,
            _encoder(serializer),
            lambda r: replay_record(r, serializer, result_type, self.config.on_replay),
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
        """Run the ``with`` body in one transaction on ``conn`` (a ``sqlite3`` or psycopg 3
        connection) that claims ``key``, holds your writes and stores the result.

        ``payload`` (any canonical-JSON data) is fingerprinted: reusing ``key`` with another
        payload raises :class:`~idempotence.KeyReuseError`. ``result_type`` is the type to
        rebuild replayed results as (dataclasses, enums, models). On a normal exit the
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
        """Async :meth:`transaction` (``async with``) on a psycopg ``AsyncConnection``."""
        return self._atransaction(conn, key, *self._prepare(conn, key, payload, ttl, result_type))

    @contextlib.contextmanager
    def _transaction(
        self,
        conn: Any,
        key: str,
        t: _Table,
        fingerprint: str,
        ttl: float,
        encode: Callable[[Any], bytes],
        replay: Callable[[Record], Any],
    ) -> Iterator[Transaction]:
        self._ensure_table(conn, t)
        with _sync_transaction(conn, t.dialect):
            claim = _sql.run(conn, _claim_steps(t, key, fingerprint, self.config.lease_s, ttl))
            tx = _open(key, claim, fingerprint, encode, replay)
            with running(key):
                yield tx
            if not tx.replayed:
                _sql.run(conn, _complete_steps(t, key, claim.record.fence, tx._stored(), ttl))

    @contextlib.asynccontextmanager
    async def _atransaction(
        self,
        conn: Any,
        key: str,
        t: _Table,
        fingerprint: str,
        ttl: float,
        encode: Callable[[Any], bytes],
        replay: Callable[[Record], Any],
    ) -> AsyncIterator[Transaction]:
        if t.dialect is not POSTGRES or not inspect.iscoroutinefunction(conn.execute):
            raise TypeError("atransaction needs a psycopg AsyncConnection")
        await self._aensure_table(conn, t)
        async with conn.transaction():
            claim = await _sql.arun(
                conn, _claim_steps(t, key, fingerprint, self.config.lease_s, ttl)
            )
            tx = _open(key, claim, fingerprint, encode, replay)
            with running(key):
                yield tx
            if not tx.replayed:
                await _sql.arun(
                    conn, _complete_steps(t, key, claim.record.fence, tx._stored(), ttl)
                )

    def _ensure_table(self, conn: Any, t: _Table) -> None:
        if not self.auto_create or t.dialect in self._created:
            return
        if t.dialect is SQLITE:
            conn.execute(t.ddl)
        else:
            try:
                with conn.transaction():  # a savepoint if the caller's transaction is open
                    conn.execute(t.ddl)
            except Exception as exc:
                if not _sql.ddl_race(exc):
                    raise
        self._created.add(t.dialect)

    async def _aensure_table(self, conn: Any, t: _Table) -> None:
        if not self.auto_create or t.dialect in self._created:
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
        _check_options(options)
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
        if namespace is None:
            name = f"{fn.__module__}.{fn.__qualname__}"
            namespace = f"{config.namespace}.{name}" if config.namespace else name
        bound = _Bound(shim, config, namespace)
        source = _Source(self.connect)
        encode = _encoder(config.serializer)
        txi = self

        def prepare(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, str]:
            payload = bound.payload(args, kwargs)
            return bound.key(payload), bound.fingerprint(payload)

        def table_for(conn: Any) -> _Table:
            return txi._tables[_sql.dialect_of(conn)]

        wrapper: Any
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                key, fingerprint = prepare(args, kwargs)
                async with source.asyn() as conn:
                    if key is None:
                        async with conn.transaction():
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
                        with _sync_transaction(conn, table_for(conn).dialect):
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


def _sqlite_name(table: str) -> str:
    return _sql.quote_ident(table)


def _check_options(options: Mapping[str, Any]) -> None:
    bad = sorted(set(options) & set(_NOT_APPLICABLE))
    if bad:
        raise TypeError(
            f"option(s) {', '.join(bad)} do not apply to transactional idempotency (the "
            "claim lives and dies with the transaction)"
        )


def _encoder(serializer: Serializer) -> Callable[[Any], bytes]:
    def encode(value: Any) -> bytes:
        return envelope(KIND_VALUE, serializer.encode(value))

    return encode


def transactional(
    connect: Any, *, table: str = "idempotency", **options: Any
) -> Callable[[Callable[Concatenate[Any, P], R]], Callable[P, R]]:
    """Decorator: ``@transactional(pool, key="id")`` on ``def handle(conn, msg)`` is
    ``TransactionalIdempotency(pool, table=table)(key="id")`` (see there)."""
    return TransactionalIdempotency(connect, table=table)(**options)


# -- DynamoDB: one TransactWriteItems --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TransactionOutcome(Generic[_T]):
    """What :func:`dynamodb_transaction` did: ``replayed`` is ``True`` when the key was
    already completed (nothing was written); ``result`` is the stored result then, and the
    given one otherwise."""

    replayed: bool
    result: _T
    record: Record | None = None


_DYNAMODB_MAX_ITEMS = 100
_CONFLICT_ATTEMPTS = 5


def _dynamodb_steps(
    store: DynamoDBStore,
    key: str,
    writes: Sequence[Mapping[str, Any]],
    result: Any,
    fingerprint: str,
    ttl: float,
    serializer: Serializer,
    result_type: Any,
) -> Generator[Any, Any, TransactionOutcome[Any]]:
    from ..stores._dynamodb import (
        CLAIM_CONDITION,
        CLAIM_FENCE,
        _Call,
        _encode,
        _num,
        _Sleep,
        fresh_values,
    )

    if len(writes) >= _DYNAMODB_MAX_ITEMS:
        raise ValueError(
            f"TransactWriteItems takes {_DYNAMODB_MAX_ITEMS} items including the record: "
            f"give at most {_DYNAMODB_MAX_ITEMS - 1} writes"
        )
    data = _encoder(serializer)(result)
    stored, encoding = _encode(data)
    delay = 0.05
    for attempt in range(_CONFLICT_ATTEMPTS):
        now = store.clock()
        names = {
            "#pk": store.key_attr,
            "#status": "status",
            "#fingerprint": "fingerprint",
            "#fence": "fence",
            "#lease": "lease_expires_at",
            "#expires": "expires_at",
            "#expiration": "expiration",
            "#result": "result",
            "#encoding": "result_encoding",
            "#claim": "claim_id",
        }
        values: dict[str, Any] = {
            ":completed": {"S": Status.COMPLETED.value},
            ":in_progress": {"S": Status.IN_PROGRESS.value},
            ":fingerprint": {"S": fingerprint},
            **fresh_values(now),
            ":now": _num(now),
            ":expires_at": _num(now + ttl),
            ":expiration": store._expiration(now + ttl),
            ":result": {"B": stored},
        }
        update = (
            "SET #status = :completed, #fingerprint = :fingerprint, "
            f"{CLAIM_FENCE}, #lease = :now, "
            "#expires = :expires_at, #expiration = :expiration, #result = :result"
        )
        if encoding:
            update += ", #encoding = :encoding REMOVE #claim"
            values[":encoding"] = {"S": encoding}
        else:
            update += " REMOVE #encoding, #claim"
        record_write = {
            "Update": {
                "TableName": store.table,
                "Key": store._key(key),
                "UpdateExpression": update,
                "ConditionExpression": CLAIM_CONDITION,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
        }
        try:
            yield _Call("transact_write_items", {"TransactItems": [*writes, record_write]})
        except Exception as exc:
            reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
            codes = [str(r.get("Code")) for r in reasons]
            if len(reasons) == len(writes) + 1 and codes[-1] == "ConditionalCheckFailed":
                item = reasons[-1].get("Item")
                if not item:  # an endpoint that does not return it: read it
                    response = yield _Call(
                        "get_item",
                        {"TableName": store.table, "Key": store._key(key), "ConsistentRead": True},
                    )
                    item = response.get("Item")
                if not item:
                    continue  # it expired and was deleted meanwhile: try again
                record = store._record(item)
                claim = Claim(acquired=False, record=record, now=now)
                _check_existing(claim, key, fingerprint)
                return TransactionOutcome(
                    True, replay_record(record, serializer, result_type), record
                )
            if "TransactionConflict" in codes and attempt + 1 < _CONFLICT_ATTEMPTS:
                yield _Sleep(delay)
                delay *= 2
                continue
            raise
        return TransactionOutcome(False, result, None)
    raise RuntimeError(f"transaction on {key!r} did not settle after {_CONFLICT_ATTEMPTS} tries")


def _dynamodb_args(
    key: str, payload: Any, ttl: float, serializer: Serializer | None
) -> tuple[str, float, Serializer]:
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    fingerprint = _NO_FINGERPRINT if payload is None else digest(payload)
    return fingerprint, seconds(ttl, "ttl"), serializer or JSONSerializer()


def dynamodb_transaction(
    store: DynamoDBStore,
    key: str,
    writes: Sequence[Mapping[str, Any]],
    *,
    result: _T = None,  # type: ignore[assignment]
    payload: Any = None,
    ttl: float = 24 * 3600.0,
    serializer: Serializer | None = None,
    result_type: Any = None,
) -> TransactionOutcome[_T]:
    """Commit ``writes`` (``TransactWriteItems`` entries: ``{"Put": ...}``, ``{"Update":
    ...}``, ``{"Delete": ...}``, ``{"ConditionCheck": ...}``, at most 99) and the completed
    record of ``key`` with ``result`` in ``store``'s table as one ``TransactWriteItems``,
    or nothing.

    The record's write is conditional (absent, past retention, or a lapsed claim): if the
    key was completed before, DynamoDB cancels the whole transaction and this returns
    ``TransactionOutcome(replayed=True, result=<stored result>)`` from the cancellation
    reason's ``Item`` (no second read). Reusing the key with another ``payload`` raises
    :class:`~idempotence.KeyReuseError`; a live claim of the normal API
    :class:`~idempotence.AlreadyInProgressError`. Cancellation for other reasons (your
    writes' own conditions) re-raises botocore's ``TransactionCanceledException``;
    ``TransactionConflict`` is retried a few times. The record is the one
    :class:`~idempotence.stores.DynamoDBStore` writes, visible through ``store.get``.
    Compute ``result`` before calling: it is committed with the writes.
    """
    fingerprint, keep, ser = _dynamodb_args(key, payload, ttl, serializer)
    return store._run(
        _dynamodb_steps(store, key, writes, result, fingerprint, keep, ser, result_type)
    )


async def adynamodb_transaction(
    store: DynamoDBStore,
    key: str,
    writes: Sequence[Mapping[str, Any]],
    *,
    result: _T = None,  # type: ignore[assignment]
    payload: Any = None,
    ttl: float = 24 * 3600.0,
    serializer: Serializer | None = None,
    result_type: Any = None,
) -> TransactionOutcome[_T]:
    """Async :func:`dynamodb_transaction`."""
    fingerprint, keep, ser = _dynamodb_args(key, payload, ttl, serializer)
    return await store._arun(
        _dynamodb_steps(store, key, writes, result, fingerprint, keep, ser, result_type)
    )
