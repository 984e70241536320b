"""MariaDB / MySQL store: one InnoDB table, one round trip per operation, PyMySQL (sync) and
aiomysql (async) sharing every statement.

One file (over 400 lines): the store's SQL, its sync and async shells and its maintenance
share the statement builders; split by concern it would need private cross-module imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

from .._errors import StoreError
from .._lazy import require
from .._record import Claim, Record, Status
from ._base import Clock
from ._maintenance import (
    DEFAULT_BATCH,
    Progress,
    StoreStats,
    Sweeper,
    keyset_pages,
    stats_of,
    sweep_interval,
)
from ._operations import OperationStore
from ._pool import (
    DEFAULT_POOL_SIZE,
    DEFAULT_POOL_TIMEOUT,
    AsyncPool,
    Pool,
    check_pool_options,
    pool_url_options,
)
from ._registry import merge_option, option_bool, option_number, option_sweep_every, url_query

__all__ = ["MySQLStore"]

_T = TypeVar("_T")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?$")
_COLUMNS = ("key", "status", "fingerprint", "fence", "lease_expires_at", "expires_at", "result")
_COLS = ", ".join(f"`{c}`" for c in _COLUMNS)
#: The server's clock in float epoch seconds, independent of the session's time zone (a
#: ``UNIX_TIMESTAMP(NOW())`` would be ambiguous in a daylight-saving fall-back hour). Like
#: ``NOW()``, ``UTC_TIMESTAMP(6)`` is fixed for the duration of one statement.
_SERVER_NOW = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1e6)"
_CLIENT_NOW = "(%(now)s + 0e0)"
#: Our options in a store URL.
_URL_OPTIONS = (
    "table", "pool_size", "pool_timeout", "connect_timeout", "operation_timeout",
    "auto_create", "charset", "ssl", "unix_socket", "sweep_every",
)  # fmt: skip
#: Server errors after which the whole statement batch is sent again: deadlock (1213; InnoDB
#: rolled the transaction back) and "record has changed since last read" (1020, MariaDB's
#: snapshot isolation). Neither left anything written.
_RETRY_ERRORS = frozenset({1213, 1020})
_ATTEMPTS = 8
_NO_SUCH_TABLE = 1146


@dataclass(frozen=True, slots=True)
class _Op(Generic[_T]):
    """One round trip (one statement, or a batch of them) and how to read its outcome; run
    by the sync or async shell. ``parse`` gets ``(rows, rowcount)`` of every result."""

    query: str
    params: Mapping[str, object]
    parse: Callable[[list[tuple[list[tuple[Any, ...]], int]]], _T]


def _table_sql(table: str) -> str:
    if not _IDENT.match(table):
        raise ValueError(
            f"invalid table name {table!r}: use letters, digits and '_' "
            "(optionally prefixed by a database: 'db.table')"
        )
    # Validated above, so quoting cannot be escaped; quoted, the name is taken verbatim.
    return ".".join(f"`{part}`" for part in table.split("."))


def _ddl(table: str) -> str:
    """The records table. Keys and fingerprints are binary strings: compared byte for byte
    (a case-insensitive or PAD SPACE collation would merge distinct keys)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {_table_sql(table)} (\n"
        "    `key`              VARBINARY(3072) NOT NULL PRIMARY KEY,\n"
        "    `status`           VARCHAR(16) CHARACTER SET ascii NOT NULL\n"
        "                       CHECK (`status` IN ('IN_PROGRESS', 'COMPLETED')),\n"
        "    `fingerprint`      VARBINARY(1024) NOT NULL,\n"
        "    `fence`            BIGINT NOT NULL,\n"
        "    `lease_expires_at` DOUBLE NOT NULL,  -- epoch seconds\n"
        "    `expires_at`       DOUBLE NOT NULL,  -- epoch seconds, end of retention\n"
        "    `result`           LONGBLOB NULL\n"
        ") ENGINE=InnoDB"
    )


def _takeover(now: str) -> str:
    """SQL condition on the stored row: it may be claimed at ``now`` (``decide_claim``)."""
    return (
        f"(`expires_at` <= {now} OR (`status` = 'IN_PROGRESS' "
        f"AND `lease_expires_at` <= {now} AND `fingerprint` = %(fingerprint)s))"
    )


def _claim_sql(table: str, now: str) -> str:
    """The claim: one batch of statements, one round trip, one transaction.

    ``INSERT ... ON DUPLICATE KEY UPDATE`` inserts the key (fence: the clock in
    milliseconds, as :func:`~idempotence.stores.fresh_fence`) or, on a duplicate, locks the
    existing row exclusively and updates it. Its assignments run left to right, each seeing
    the values assigned before it, so the takeover condition is evaluated once, by the first
    assignment, on the row as it was, and kept in the session variable ``@idem_take``; every
    other column follows that decision (a row that cannot be taken over is written back
    unchanged). The ``SELECT ... FOR UPDATE`` in the same transaction then reads the row
    under the lock the insert holds: the record written (won) or the one in the way. A
    deadlock between concurrent first inserts rolls the transaction back and the batch is
    sent again. Session variables are per connection and set at the start of each batch.
    """
    return (
        f"START TRANSACTION;\n"
        f"SET @idem_now = {now}, @idem_take = 1;\n"
        f"INSERT INTO {table} ({_COLS}) VALUES (%(key)s, 'IN_PROGRESS', %(fingerprint)s, "
        "GREATEST(1, FLOOR(@idem_now * 1000)), @idem_now + %(lease)s, @idem_now + %(keep)s, NULL)\n"
        "ON DUPLICATE KEY UPDATE\n"
        f"    `fence` = IF((@idem_take := {_takeover('@idem_now')}), `fence` + 1, `fence`),\n"
        "    `status` = IF(@idem_take, 'IN_PROGRESS', `status`),\n"
        "    `fingerprint` = IF(@idem_take, %(fingerprint)s, `fingerprint`),\n"
        "    `lease_expires_at` = IF(@idem_take, @idem_now + %(lease)s, `lease_expires_at`),\n"
        "    `expires_at` = IF(@idem_take, @idem_now + %(keep)s, `expires_at`),\n"
        "    `result` = IF(@idem_take, NULL, `result`);\n"
        f"SELECT {_COLS}, @idem_take, @idem_now FROM {table} WHERE `key` = %(key)s FOR UPDATE;\n"
        "COMMIT"
    )


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def _numbered(statement: str, i: int) -> str:
    """``statement`` with each ``%(name)s`` placeholder renamed ``%(name_i)s``."""
    return _PLACEHOLDER.sub(lambda m: f"%({m.group(1)}_{i})s", statement)


def _claim_many_sql(table: str, now: str, n: int) -> str:
    """The claims of ``n`` keys as one batch, one round trip, one transaction: the single
    claim's ``INSERT ... ON DUPLICATE KEY UPDATE`` and ``SELECT ... FOR UPDATE`` (see
    :func:`_claim_sql`) once per key, placeholders numbered, one clock reading."""
    begin, clock, insert, select, commit = _claim_sql(table, now).split(";\n")
    parts = [begin, clock]
    for i in range(n):
        parts += ["SET @idem_take = 1", _numbered(insert, i), _numbered(select, i)]
    return ";\n".join([*parts, commit])


def _owned_many_sql(owned: str, n: int) -> str:
    """``n`` fence-conditional updates (``owned``, numbered) in one transaction."""
    updates = [_numbered(owned, i) for i in range(n)]
    return ";\n".join(["START TRANSACTION", *updates, "COMMIT"])


def _parse_claims(results: _Results) -> list[Claim]:
    rows = [found[0] for found, _ in results if found]
    return [Claim(acquired=bool(int(r[7])), record=_record(r), now=float(r[8])) for r in rows]


def _parse_owned(results: _Results) -> list[bool]:
    # START TRANSACTION, one UPDATE per item (rows matched: CLIENT_FOUND_ROWS), COMMIT
    return [count == 1 for _, count in results[1:-1]]


def _owned(table: str, now: str, assignments: str) -> str:
    return (
        f"UPDATE {table} SET {assignments} WHERE `key` = %(key)s AND `fence` = %(fence)s "
        f"AND `status` = 'IN_PROGRESS' AND `expires_at` > {now}"
    )


@dataclass(frozen=True, slots=True)
class _Statements:
    """All SQL of one store (table name and clock source baked in)."""

    ddl: str
    claim: str
    complete: str
    release: str
    renew: str
    get: str
    delete: str
    purge: str

    @classmethod
    def build(cls, table: str, now: str) -> _Statements:
        t = _table_sql(table)
        return cls(
            ddl=_ddl(table),
            claim=_claim_sql(t, now),
            complete=_owned(
                t,
                now,
                f"`status` = 'COMPLETED', `result` = %(result)s, `expires_at` = {now} + %(ttl)s",
            ),
            # Keep the row and its fence; ending retention makes it read as absent and the
            # next claim takes it over with fence + 1, so the released owner stays fenced.
            release=_owned(t, now, f"`expires_at` = {now}"),
            renew=_owned(
                t,
                now,
                f"`lease_expires_at` = {now} + %(lease)s, "
                f"`expires_at` = GREATEST(`expires_at`, {now} + %(lease)s)",
            ),
            get=f"SELECT {_COLS} FROM {t} WHERE `key` = %(key)s AND `expires_at` > {now}",
            delete=f"DELETE FROM {t} WHERE `key` = %(key)s",
            purge=f"DELETE FROM {t} WHERE `expires_at` <= {now} AND `lease_expires_at` <= {now}",
        )


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _record(row: tuple[Any, ...]) -> Record:
    key, status, fingerprint, fence, lease_expires_at, expires_at, result = row[:7]
    return Record(
        key=_text(key),
        status=Status(_text(status)),
        fingerprint=_text(fingerprint),
        fence=int(fence),
        lease_expires_at=float(lease_expires_at),
        expires_at=float(expires_at),
        result=bytes(result) if result is not None else None,
    )


_Results = list[tuple[list[tuple[Any, ...]], int]]


def _parse_claim(results: _Results) -> Claim:
    rows = next((rows for rows, _ in results if rows), None)
    if rows is None:  # the row was inserted or kept under our lock: it cannot be missing
        raise RuntimeError("the claim's SELECT returned no row")
    row = rows[0]
    return Claim(acquired=bool(int(row[7])), record=_record(row), now=float(row[8]))


def _parse_get(results: _Results) -> Record | None:
    rows = results[0][0]
    return _record(rows[0]) if rows else None


def _parse_changed(results: _Results) -> bool:
    # Connections are opened with CLIENT_FOUND_ROWS: the count is of rows matched, so a
    # renew that writes the values already there still reports success.
    return results[0][1] == 1


def _parse_count(results: _Results) -> int:
    return max(results[0][1], 0)


def _parse_none(results: _Results) -> None:
    return None


def _literal(value: object) -> str:
    """A parameter as SQL: bytes as a hex literal, numbers as numbers. The store sends no
    other kind (keys and fingerprints go as their UTF-8 bytes), so the SQL text never
    depends on the session's escaping rules (``NO_BACKSLASH_ESCAPES``, character set)
    or on a driver's."""
    if isinstance(value, (bytes, bytearray)):
        return "_binary X'" + bytes(value).hex() + "'"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("a time or duration is not a finite number")
        return repr(value) + ("" if "e" in repr(value) else "e0")  # a DOUBLE literal
    if value is None:
        return "NULL"
    raise TypeError(f"unsupported parameter type {type(value).__name__}")


def mysql_sql(conn: Any, query: str, params: Mapping[str, object]) -> str:
    """``query`` (``%(name)s`` placeholders) with ``params`` in place, for a PyMySQL or
    aiomysql connection ``conn``: bytes as hex literals, numbers as numbers, ``None`` as
    NULL, strings escaped by the connection (which honours ``NO_BACKSLASH_ESCAPES``)."""
    if not params:
        return query
    return query % {
        name: conn.escape(value) if isinstance(value, str) else _literal(value)
        for name, value in params.items()
    }


def _sql(op: _Op[Any]) -> str:
    """The op's statement(s) with its parameters in place (the store sends no strings)."""
    if not op.params:
        return op.query
    return op.query % {name: _literal(value) for name, value in op.params.items()}


def states_ddl(table: str) -> str:
    """The states table of :class:`~idempotence.effects.StateGuard` on MariaDB/MySQL
    (binary strings: compared byte for byte)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (`entity` VARBINARY(3072) NOT NULL PRIMARY KEY, "
        "`state` VARBINARY(3072) NOT NULL) ENGINE=InnoDB"
    )


def _execute(conn: Any, op: _Op[_T]) -> _T:
    results: _Results = []
    with conn.cursor() as cur:
        cur.execute(_sql(op))
        while True:
            rows = list(cur.fetchall()) if cur.description is not None else []
            results.append((rows, cur.rowcount))
            if not cur.nextset():
                break
    return op.parse(results)


async def _aexecute(conn: Any, op: _Op[_T]) -> _T:
    results: _Results = []
    async with conn.cursor() as cur:
        await cur.execute(_sql(op))
        while True:
            rows = list(await cur.fetchall()) if cur.description is not None else []
            results.append((rows, cur.rowcount))
            if not await cur.nextset():
                break
    return op.parse(results)


def _error_code(exc: BaseException) -> int | None:
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _connect_failure(exc: Exception) -> StoreError:
    code = _error_code(exc)
    if code == 1045:
        why = "authentication failed: check the user and password in the URL"
    elif code == 1049:
        why = "the database does not exist: create it, or fix the database name in the URL"
    elif code == 2003:
        why = (
            "cannot reach the server at the URL's host and port: check them and that "
            "MariaDB/MySQL is running"
        )
    else:
        why = "the server refused or dropped the connection"
    return StoreError(f"cannot connect to MariaDB/MySQL: {why} ({type(exc).__name__}: {code})")


def _timed_out(timeout: float) -> TimeoutError:
    return TimeoutError(
        f"no reply from MariaDB/MySQL within operation_timeout={timeout:g}s; the connection "
        "was closed (a statement already sent may still complete on the server)"
    )


class MySQLStore(OperationStore):
    """Records in one InnoDB table of MariaDB (10.5+) or MySQL (8.0+); one round trip per
    operation (the claim is a batch of statements in one transaction, sent at once).

    ``url`` is ``mysql://user:password@host:3306/database?table=idempotency`` (or
    ``mariadb://``). The store opens its own connections in bounded pools, as
    :class:`~idempotence.stores.PostgresStore` does: one pool of PyMySQL connections for
    the sync methods (shared by the process's threads) and one pool of aiomysql
    connections per running event loop, so ``asyncio.run`` per invocation never touches a
    connection of a dead loop. Each pool keeps at most ``pool_size`` connections (default
    10) open, idle or in use, opened on demand; a call beyond them waits for one to be
    returned, first come first served, up to ``pool_timeout`` seconds (default 5), then
    fails with :class:`~idempotence.StoreError` saying to raise ``pool_size`` or make
    fewer concurrent calls. A connection whose operation failed is closed, not returned;
    idle connections unused for 10 minutes are retired (closed, and a new one opened for
    the call that finds them), as psycopg_pool's ``max_idle`` does for PostgresStore, so a
    connection the server or a NAT dropped while idle is not used. :meth:`close` (and
    :meth:`aclose` in an event loop) closes the idle connections at once and those in use
    when they are returned. In a forked child the parent's connections
    are left to the parent and new ones are opened. Connections run in autocommit mode
    with ``CLIENT_MULTI_STATEMENTS`` (the claim batch) and ``CLIENT_FOUND_ROWS`` (an update
    reports the rows it matched).

    Time is the server's (``UTC_TIMESTAMP(6)`` as epoch seconds, independent of the
    session time zone) unless ``clock`` is given, in which case the client's ``clock()``
    is sent with each statement (tests use a :class:`~idempotence.testing.ManualClock`).
    All processes sharing a table should use the same kind of clock.

    The table is created the first time a statement finds it missing (``auto_create=False``
    turns that off; :meth:`migration_sql` gives the DDL). Results are sent hex-encoded, so
    the largest storable result is bounded by the server's ``max_allowed_packet``
    (16 MiB by default on MariaDB): :attr:`max_result_bytes` is 7 MiB; a larger result
    completes as "not stored". Released and expired rows stay until :meth:`purge` deletes
    them.

    ``operation_timeout`` (seconds, default 5; ``None`` disables it) bounds each round
    trip: the connection is closed when it expires and the call fails with
    :class:`~idempotence.StoreError`.
    """

    uses_client_clock = False
    max_result_bytes = 7 * 1024 * 1024

    def __init__(
        self,
        url: str,
        *,
        table: str = "idempotency",
        clock: Clock | None = None,
        connect_timeout: float = 5,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        auto_create: bool = True,
        operation_timeout: float | None = 5.0,
        connect_kwargs: Mapping[str, Any] | None = None,
        sweep_every: float | None = None,
    ) -> None:
        parsed = self.parse_url(url)
        table = merge_option("table", table, "idempotency", parsed["table"])
        connect_timeout = merge_option(
            "connect_timeout", connect_timeout, 5, parsed["connect_timeout"]
        )
        pool_size = merge_option("pool_size", pool_size, DEFAULT_POOL_SIZE, parsed["pool_size"])
        pool_timeout = merge_option(
            "pool_timeout", pool_timeout, DEFAULT_POOL_TIMEOUT, parsed["pool_timeout"]
        )
        check_pool_options(pool_size, pool_timeout)
        auto_create = merge_option("auto_create", auto_create, True, parsed["auto_create"])
        operation_timeout = merge_option(
            "operation_timeout", operation_timeout, 5.0, parsed["operation_timeout"]
        )
        if operation_timeout is not None and not operation_timeout > 0:
            raise ValueError(f"operation_timeout must be > 0 or None, not {operation_timeout!r}")
        sweep = sweep_interval(
            merge_option("sweep_every", sweep_every, None, parsed["sweep_every"])
        )
        self.table = table
        self.clock = clock
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self.auto_create = auto_create
        self.operation_timeout = operation_timeout
        self._connect = {**parsed["connect"], **dict(connect_kwargs or {})}
        self._sql = _Statements.build(table, _CLIENT_NOW if clock is not None else _SERVER_NOW)
        self._now_sql = _CLIENT_NOW if clock is not None else _SERVER_NOW
        self._table_sql = _table_sql(table)
        self._pool: Pool[Any] = Pool(type(self).__name__, pool_size, pool_timeout, _close)
        self._apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = (
            weakref.WeakKeyDictionary()
        )
        if sweep is not None:
            self.start_sweep(sweep)

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``mysql://user:password@host:3306/db?...`` (or
        ``mariadb://``), checked without connecting or importing a driver. Options:
        ``table`` (``name`` or ``db.name``), ``pool_size`` (connections per pool),
        ``pool_timeout`` (seconds a call waits for a connection of a full pool),
        ``connect_timeout``, ``operation_timeout`` (seconds, or ``none``), ``auto_create``,
        ``charset``
        (default ``utf8mb4``), ``unix_socket`` (a path), ``ssl`` (true: TLS with the
        system's CA certificates) and ``sweep_every`` (seconds: :meth:`start_sweep` at that
        interval). Anything else raises ``ValueError``."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("mysql", "mariadb"):
            raise ValueError("a MariaDB/MySQL store URL starts with mysql:// or mariadb://")
        options = url_query(url, _URL_OPTIONS)
        table = options.get("table", "idempotency")
        _table_sql(table)
        pool = pool_url_options(options)
        try:
            port = parts.port or 3306
        except ValueError:
            raise ValueError("the port in the store URL is not a number") from None
        database = unquote(parts.path.lstrip("/"))
        if not database or "/" in database:
            raise ValueError("the store URL names no database: mysql://user@host:3306/database")
        connect: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "user": unquote(parts.username) if parts.username else "root",
            "password": unquote(parts.password) if parts.password else "",
            "database": database,
            "charset": options.get("charset", "utf8mb4"),
        }
        if options.get("unix_socket"):
            connect["unix_socket"] = options["unix_socket"]
        if option_bool(options, "ssl", False):
            import ssl as ssl_mod

            connect["ssl"] = ssl_mod.create_default_context()
        return {
            "url": url,
            "table": table,
            "connect_timeout": option_number(options, "connect_timeout", 5),
            **pool,
            "auto_create": option_bool(options, "auto_create", True),
            "operation_timeout": option_number(options, "operation_timeout", 5.0, none=True),
            "sweep_every": option_sweep_every(options),
            "connect": connect,
        }

    @classmethod
    def from_url(cls, url: str) -> MySQLStore:
        """The store of a ``mysql://`` / ``mariadb://`` URL (see :meth:`parse_url`); the
        same as ``MySQLStore(url)``."""
        return cls(url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r})"

    def migration_sql(self) -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` statement of this store's table, for users
        who run schema migrations themselves (then pass ``auto_create=False``)."""
        return self._sql.ddl + ";\n"

    # -- statements as data -------------------------------------------------------------
    def _params(self, **params: object) -> dict[str, object]:
        if self.clock is not None:
            params["now"] = float(self.clock())
        return params

    # -- capability: BatchClaims (idempotence.stores.capabilities) ----------------------
    def _claim_many_op(self, items: Sequence[tuple[str, str, float, float]]) -> _Op[list[Claim]]:
        order = sorted(range(len(items)), key=lambda i: items[i][0])  # one lock order
        params: dict[str, object] = self._params()
        for n, i in enumerate(order):
            key, fingerprint, lease, ttl = items[i]
            params[f"key_{n}"] = key.encode()
            params[f"fingerprint_{n}"] = fingerprint.encode()
            params[f"lease_{n}"] = float(lease)
            params[f"keep_{n}"] = float(max(ttl, lease))
        query = _claim_many_sql(self._table_sql, self._now_sql, len(items))

        def parse(results: _Results) -> list[Claim]:
            claims = _parse_claims(results)
            if len(claims) != len(items):
                raise RuntimeError("the batch claim's SELECTs returned a row count not its own")
            out: list[Claim | None] = [None] * len(items)
            for n, i in enumerate(order):
                out[i] = claims[n]
            return [claim for claim in out if claim is not None]

        return _Op(query, params, parse)

    def _owned_many_op(
        self, owned: str, items: Sequence[tuple[str, int]], extra: Sequence[dict[str, object]]
    ) -> _Op[list[bool]]:
        params: dict[str, object] = self._params()
        for i, ((key, fence), more) in enumerate(zip(items, extra, strict=True)):
            params[f"key_{i}"] = key.encode()
            params[f"fence_{i}"] = int(fence)
            params.update({f"{name}_{i}": value for name, value in more.items()})
            if "now" in params:
                params[f"now_{i}"] = params["now"]
        return _Op(_owned_many_sql(owned, len(items)), params, _parse_owned)

    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)`` in one multi-statement batch (one
        round trip, one transaction). See
        :class:`~idempotence.stores.capabilities.BatchClaims`."""
        return self._run(self._claim_many_op(items))

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Complete every ``(key, fence, result, ttl)`` in one batch (one transaction)."""
        pairs = [(key, fence) for key, fence, _, _ in items]
        extra = [{"result": bytes(r), "ttl": float(t)} for _, _, r, t in items]
        return self._run(self._owned_many_op(self._sql.complete, pairs, extra))

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Release every ``(key, fence)`` in one batch (one transaction)."""
        return self._run(self._owned_many_op(self._sql.release, items, [{}] * len(items)))

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Async :meth:`claim_many`."""
        return await self._arun(self._claim_many_op(items))

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Async :meth:`complete_many`."""
        pairs = [(key, fence) for key, fence, _, _ in items]
        extra = [{"result": bytes(r), "ttl": float(t)} for _, _, r, t in items]
        return await self._arun(self._owned_many_op(self._sql.complete, pairs, extra))

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Async :meth:`release_many`."""
        return await self._arun(self._owned_many_op(self._sql.release, items, [{}] * len(items)))

    def _claim_op(self, key: str, fingerprint: str, lease: float, ttl: float) -> _Op[Claim]:
        params = self._params(
            key=key.encode(), fingerprint=fingerprint.encode(), lease=float(lease),
            keep=float(max(ttl, lease)),
        )  # fmt: skip
        return _Op(self._sql.claim, params, _parse_claim)

    def _complete_op(self, key: str, fence: int, result: bytes, ttl: float) -> _Op[bool]:
        params = self._params(key=key.encode(), fence=int(fence), result=bytes(result),
                              ttl=float(ttl))  # fmt: skip
        return _Op(self._sql.complete, params, _parse_changed)

    def _release_op(self, key: str, fence: int) -> _Op[bool]:
        params = self._params(key=key.encode(), fence=int(fence))
        return _Op(self._sql.release, params, _parse_changed)

    def _renew_op(self, key: str, fence: int, lease: float) -> _Op[bool]:
        params = self._params(key=key.encode(), fence=int(fence), lease=float(lease))
        return _Op(self._sql.renew, params, _parse_changed)

    def _get_op(self, key: str) -> _Op[Record | None]:
        return _Op(self._sql.get, self._params(key=key.encode()), _parse_get)

    def _delete_op(self, key: str) -> _Op[bool]:
        return _Op(self._sql.delete, {"key": key.encode()}, _parse_changed)

    def _purge_op(self) -> _Op[int]:
        return _Op(self._sql.purge, self._params(), _parse_count)

    def _ddl_op(self) -> _Op[None]:
        # Without the "table already exists" note (aiomysql turns notes into Warnings, one
        # more round trip each).
        batch = f"SET @idem_notes = @@sql_notes, sql_notes = 0;\n{self._sql.ddl};\n" + (
            "SET sql_notes = @idem_notes"
        )
        return _Op(batch, {}, _parse_none)

    # -- connections ----------------------------------------------------------------------
    def _connect_options(self) -> dict[str, Any]:
        client = require("pymysql", "mysql").constants.CLIENT
        options = dict(self._connect)
        options["client_flag"] = (
            options.get("client_flag", 0) | client.MULTI_STATEMENTS | client.FOUND_ROWS
        )
        options["autocommit"] = True
        options["connect_timeout"] = self.connect_timeout
        return options

    def _new_connection(self) -> Any:
        pymysql = require("pymysql", "mysql")
        options = self._connect_options()
        if self.operation_timeout is not None:
            options.setdefault("read_timeout", self.operation_timeout)
            options.setdefault("write_timeout", self.operation_timeout)
        try:
            return pymysql.connect(**options)
        except pymysql.OperationalError as exc:
            raise _connect_failure(exc) from exc

    async def _anew_connection(self) -> Any:
        aiomysql = require("aiomysql", "mysql")
        pymysql = require("pymysql", "mysql")
        options = self._connect_options()
        options["db"] = options.pop("database")
        try:
            return await aiomysql.connect(**options)
        except pymysql.OperationalError as exc:
            raise _connect_failure(exc) from exc

    def _sync_conn(self) -> contextlib.AbstractContextManager[Any]:
        """A connection of the sync pool (see the class docstring)."""
        return self._pool.connection(self._new_connection)

    async def _loop_pool(self) -> AsyncPool[Any]:
        """The pool of the running event loop. It is created with a keeper (an async
        generator suspended for the loop's life): ``asyncio.run`` closes the loop's async
        generators before the loop, so the connections are closed on their own loop
        instead of being collected after it."""
        loop = asyncio.get_running_loop()
        entry = self._apools.get(loop)
        if entry is None:
            pool: AsyncPool[Any] = AsyncPool(
                type(self).__name__, self.pool_size, self.pool_timeout, _close
            )
            keeper = _close_with_loop(pool)
            await keeper.__anext__()
            entry = self._apools[loop] = _LoopPool(pool, keeper)
        return entry.pool

    @asynccontextmanager
    async def _async_conn(self) -> AsyncIterator[Any]:
        pool = await self._loop_pool()
        async with pool.connection(self._anew_connection) as conn:
            yield conn

    # -- capability: SQLConnections (idempotence.stores.capabilities) --------------------
    @contextmanager
    def sql_connection(self) -> Iterator[Any]:
        """A PyMySQL connection of the store, in autocommit mode; returned to the store on
        exit (closed if the block raised). ``operation_timeout`` does not apply inside the
        block (your statements and transactions may take as long as they need; a
        transaction waiting for a row lock is bounded by the server's
        ``innodb_lock_wait_timeout``). See
        :class:`~idempotence.stores.capabilities.SQLConnections`."""
        with self._sync_conn() as conn:
            # PyMySQL applies these on its next read/write (private, stable since 0.7).
            saved = conn._read_timeout, conn._write_timeout
            conn._read_timeout = conn._write_timeout = None
            try:
                yield conn
            finally:
                conn._read_timeout, conn._write_timeout = saved

    def asql_connection(self) -> contextlib.AbstractAsyncContextManager[Any] | None:
        """An aiomysql connection of the store (of the running event loop), in autocommit
        mode; returned on exit."""
        return self._async_conn()

    # -- the two shells ------------------------------------------------------------------
    def _run(self, op: _Op[_T], *, auto_create: bool = True) -> _T:
        created = not (auto_create and self.auto_create)
        last: Exception | None = None
        for _ in range(_ATTEMPTS):
            try:
                with self._sync_conn() as conn:
                    return _execute(conn, op)
            except Exception as exc:
                code = _error_code(exc)
                if code == _NO_SUCH_TABLE and not created:
                    self.create_table()
                    created = True
                elif code not in _RETRY_ERRORS:
                    if self.operation_timeout is not None and _is_timeout(exc):
                        raise _timed_out(self.operation_timeout) from exc
                    raise
                last = exc
        assert last is not None
        raise last

    async def _arun(self, op: _Op[_T], *, auto_create: bool = True) -> _T:
        created = not (auto_create and self.auto_create)
        timeout = self.operation_timeout
        last: Exception | None = None
        for _ in range(_ATTEMPTS):
            try:
                async with self._async_conn() as conn:
                    if timeout is None:
                        return await _aexecute(conn, op)
                    try:
                        return await asyncio.wait_for(_aexecute(conn, op), timeout)
                    except asyncio.TimeoutError as exc:
                        raise _timed_out(timeout) from exc
            except Exception as exc:
                code = _error_code(exc)
                if code == _NO_SUCH_TABLE and not created:
                    await self.acreate_table()
                    created = True
                elif code not in _RETRY_ERRORS:
                    raise
                last = exc
        assert last is not None
        raise last

    # -- schema and maintenance ----------------------------------------------------------
    def create_table(self) -> None:
        """Create the table if it does not exist (idempotent, safe to race)."""
        self._run(self._ddl_op(), auto_create=False)

    async def acreate_table(self) -> None:
        """Async :meth:`create_table`."""
        await self._arun(self._ddl_op(), auto_create=False)

    async def apurge(self) -> int:
        """Async purge of the expired rows (one statement)."""
        return await self._arun(self._purge_op())

    # -- capability: Maintainable (idempotence.stores.capabilities) ----------------------
    _sweeper: Sweeper | None = None

    def start_sweep(self, every: float) -> Sweeper:
        """Opt in to removing expired rows in this process: a claim made ``every`` seconds
        or more after the last sweep starts :meth:`purge` in a background thread (the
        claim does not wait for it). Returns the sweeper (``runs``, ``deleted``)."""
        self._sweeper = Sweeper(every, self.purge, self.clock or time.time)
        return self._sweeper

    @contextmanager
    def _maintenance_cursor(self) -> Iterator[tuple[Any, float]]:
        """A cursor and the store's clock now; a missing table is a StoreError (the
        maintenance methods never create it)."""
        pymysql = require("pymysql", "mysql")
        try:
            with self.sql_connection() as conn, conn.cursor() as cursor:
                if self.clock is not None:
                    now = float(self.clock())
                else:
                    cursor.execute(f"SELECT {_SERVER_NOW}")
                    now = float(cursor.fetchone()[0])
                yield cursor, now
        except pymysql.err.ProgrammingError as exc:
            if exc.args and exc.args[0] == _NO_SUCH_TABLE:
                raise StoreError(
                    f"MySQL store: the table {self.table!r} does not exist; nothing was "
                    "created. Create it with `idempotence create-table` or "
                    "MySQLStore(...).create_table()"
                ) from exc
            raise

    def _where(
        self,
        now: float,
        namespace: str | None,
        status: Status | None,
        older_than: float | None,
        expired: bool,
    ) -> tuple[str, dict[str, object]]:
        conditions: list[str] = ["TRUE"]
        params: dict[str, object] = {"now": now}
        if namespace is not None:
            head = (namespace + "#").encode()
            conditions.append(
                "LEFT(`key`, %(head_len)s) = %(head)s "
                "AND LOCATE(_binary'#', SUBSTRING(`key`, %(head_len)s + 1)) = 0"
            )
            params.update(head=head, head_len=len(head))
        if status is not None:
            conditions.append("`status` = %(status)s")
            params["status"] = status.value
        if older_than is not None:
            conditions.append("`fence` <= %(born_ms)s")
            params["born_ms"] = (now - older_than) * 1000
        if expired:
            conditions.append("`expires_at` <= %(now)s AND `lease_expires_at` <= %(now)s")
        return " AND ".join(conditions), params

    def scan(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
        limit: int | None = None,
        batch_size: int = DEFAULT_BATCH,
    ) -> Iterator[Record]:
        """The matching records in key order, ``batch_size`` per query (keyset paging on
        the primary key). See :class:`~idempotence.stores.capabilities.Maintainable`."""
        table = _table_sql(self.table)
        with self._maintenance_cursor() as (cursor, now):
            where, params = self._where(now, namespace, status, older_than, expired)

            def fetch(after: bytes | None, size: int) -> list[Any]:
                page = "" if after is None else " AND `key` > %(after)s"
                cursor.execute(
                    f"SELECT {_COLS} FROM {table} WHERE {where}{page} "
                    "ORDER BY `key` LIMIT %(size)s",
                    {**params, "after": after, "size": size},
                )
                return list(cursor.fetchall())

            for row in keyset_pages(fetch, lambda row: bytes(row[0]), limit, batch_size):
                yield _record(row)

    def count(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
    ) -> int:
        """How many records match (one query)."""
        with self._maintenance_cursor() as (cursor, now):
            where, params = self._where(now, namespace, status, older_than, expired)
            cursor.execute(f"SELECT count(*) FROM {_table_sql(self.table)} WHERE {where}", params)
            return int(cursor.fetchone()[0])

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """Delete the matching rows, ``batch_size`` per batch, in key order. With the
        defaults, rows whose retention has ended and whose lease is over too (an expired
        row that still fences a paused invocation is kept while that lease is live).
        Returns how many were deleted.

        Keyset paging: a batch reads the next ``batch_size`` matching keys after the last
        batch's (a plain consistent read on the primary key, no locks), then deletes those
        rows by key (``DELETE ... WHERE key IN (...)``, the condition checked again, its own
        transaction). So the whole purge reads the table once, and a batch locks only the
        rows it deletes: a ``DELETE`` that scanned for its rows would lock every row and
        gap it passed (REPEATABLE READ) and stall claims of keys in that range."""
        table = _table_sql(self.table)
        total = 0
        after: bytes | None = None
        with self._maintenance_cursor() as (cursor, now):
            where, params = self._where(now, namespace, None, None, expired)
            while True:
                page = "" if after is None else " AND `key` > %(after)s"
                cursor.execute(
                    f"SELECT `key` FROM {table} WHERE {where}{page} ORDER BY `key` LIMIT %(size)s",
                    {**params, "after": after, "size": batch_size},
                )
                keys = [bytes(row[0]) for row in cursor.fetchall()]
                deleted = 0
                if keys:
                    deleted = int(
                        cursor.execute(
                            f"DELETE FROM {table} WHERE `key` IN %(keys)s AND {where}",
                            {**params, "keys": keys},
                        )
                    )
                    after = keys[-1]
                total += deleted
                if deleted and progress is not None:
                    progress(deleted)
                if len(keys) < batch_size:
                    return total

    def stats(self) -> StoreStats:
        """Counts by status and namespace (one pass over the records)."""
        records = list(self.scan())
        with self._maintenance_cursor() as (_cursor, now):
            return stats_of(records, now)

    def close(self) -> None:
        """Close the sync connections: the idle ones now, those in use when they are
        returned. Async connections belong to their event loop: :meth:`aclose` closes the
        current loop's (and a loop run by ``asyncio.run`` closes its own as it ends). The
        store opens new connections if used again."""
        self._pool.close()

    async def aclose(self) -> None:
        """Close the current event loop's connections and the sync ones (the idle ones
        now, those in use when they are returned)."""
        entry = self._apools.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.keeper.aclose()  # closes its pool
        self.close()

    # -- operations: OperationStore pairs the statements with _run/_arun; the extras -----
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        if self._sweeper is not None:
            self._sweeper.maybe()
        claim: Claim = self._run(self._claim_op(key, fingerprint, lease, ttl))
        return claim

    def release(self, key: str, fence: int) -> bool:
        """End retention of the in-progress record (kept with its fence; reads as absent;
        the next claim takes over with fence + 1), if ``fence`` still owns the key."""
        return super().release(key, fence)


@dataclass(slots=True)
class _LoopPool:
    pool: AsyncPool[Any]
    keeper: AsyncGenerator[None, None]


def _close(conn: Any) -> None:
    """Close a PyMySQL or aiomysql connection (aiomysql's ``close()`` shuts the socket at
    once, no round trip; PyMySQL's sends ``COM_QUIT`` first)."""
    conn.close()


async def _close_with_loop(pool: AsyncPool[Any]) -> AsyncGenerator[None, None]:
    """Suspended for the life of an event loop; closing it closes ``pool``."""
    try:
        yield
    finally:
        pool.close()


def _is_timeout(exc: BaseException) -> bool:
    """Whether a PyMySQL error came from a socket timeout (``read_timeout``)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (TimeoutError, OSError)) and "timed out" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
