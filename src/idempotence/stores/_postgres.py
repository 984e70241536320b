"""PostgreSQL store: one table, one statement per operation, psycopg 3 (sync and async).

One file (over 400 lines): the store's SQL, its sync and async shells, its connection pools
and watchdog, and its maintenance share the statement builders; split by concern it would
need private cross-module imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import socket
import threading
import time
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._drive import adrive, drive
from .._errors import StoreError
from .._lazy import require
from .._record import Claim, Record, Status
from .._timers import Timers
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
    check_pool_options,
    pool_exhausted,
    pool_url_options,
)
from ._registry import merge_option, option_bool, option_number, option_sweep_every, url_query

if TYPE_CHECKING:
    from psycopg import AsyncConnection, Connection
    from psycopg_pool import AsyncConnectionPool, ConnectionPool

__all__ = ["PostgresStore"]

_T = TypeVar("_T")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_COLUMNS = ("key", "status", "fingerprint", "fence", "lease_expires_at", "expires_at", "result")
_COLS = ", ".join(_COLUMNS)
#: The server's clock, in float epoch seconds. ``statement_timestamp()`` is stable within
#: one statement (every reference reads the same instant) and, unlike ``now()``, does not
#: go back to the start of an enclosing transaction on injected non-autocommit connections.
_SERVER_NOW = "extract(epoch FROM statement_timestamp())::float8"
_CLIENT_NOW = "%(now)s::float8"
#: How often a claim is re-sent when a concurrent first insert of the key was invisible to
#: the statement's snapshot (see ``_claim_sql``). One retry settles it; more is paranoia.
_CLAIM_ATTEMPTS = 4
#: Options of ours in a store URL, removed before the URL is handed to libpq.
_URL_OPTIONS = (
    "table", "pool_size", "pool_timeout", "auto_create", "operation_timeout", "sweep_every",
)  # fmt: skip
#: libpq's connection parameters (PostgreSQL 17), accepted in a store URL and passed on.
#: A name not listed here is also accepted when the installed libpq knows it.
_LIBPQ_OPTIONS = frozenset(
    [
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "passfile",
        "require_auth",
        "channel_binding",
        "connect_timeout",
        "client_encoding",
        "options",
        "application_name",
        "fallback_application_name",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "replication",
        "gssencmode",
        "sslmode",
        "requiressl",
        "sslnegotiation",
        "sslcompression",
        "sslcert",
        "sslkey",
        "sslkeylogfile",
        "sslpassword",
        "sslcertmode",
        "sslrootcert",
        "sslcrl",
        "sslcrldir",
        "sslsni",
        "requirepeer",
        "ssl_min_protocol_version",
        "ssl_max_protocol_version",
        "krbsrvname",
        "gsslib",
        "gssdelegation",
        "service",
        "target_session_attrs",
        "load_balance_hosts",
    ]
)
#: libpq options of the connections the store opens itself (a URL or ``connect_kwargs``
#: setting one wins): TCP keepalives notice a dead peer on an idle pooled connection, and
#: ``tcp_user_timeout`` (ms, libpq >= 12) bounds how long sent data may stay unacknowledged.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
               "keepalives_count": 3}  # fmt: skip
_TCP_USER_TIMEOUT_MS = 30_000


class _Again:
    """Marker returned by a row parser: the statement must be sent again."""


_AGAIN = _Again()


@dataclass(frozen=True, slots=True)
class _Op(Generic[_T]):
    """One statement and how to read its outcome; run by the sync or async shell."""

    query: str
    params: Mapping[str, object]
    parse: Callable[[list[tuple[Any, ...]], int], _T | _Again]


def _table_sql(table: str) -> str:
    if not _IDENT.match(table):
        raise ValueError(
            f"invalid table name {table!r}: use letters, digits and '_' "
            "(optionally prefixed by a schema: 'schema.table')"
        )
    # Validated above, so quoting cannot be escaped; quoted, the name is taken verbatim.
    return ".".join(f'"{part}"' for part in table.split("."))


def _ddl(table: str) -> str:
    name = _table_sql(table)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} (\n"
        "    key              text PRIMARY KEY,\n"
        "    status           text NOT NULL CHECK (status IN ('IN_PROGRESS', 'COMPLETED')),\n"
        "    fingerprint      text NOT NULL,\n"
        "    fence            bigint NOT NULL,\n"
        "    lease_expires_at double precision NOT NULL,  -- epoch seconds\n"
        "    expires_at       double precision NOT NULL,  -- epoch seconds, end of retention\n"
        "    result           bytea\n"
        ")  -- room on each page keeps complete/renew/release updates HOT\n"
        "WITH (fillfactor = 80);\n"
    )


def _takeover(alias: str, now: str, fingerprint: str = "%(fingerprint)s") -> str:
    """SQL condition: the record ``alias`` may be claimed at ``now`` (``decide_claim``) by
    a claim with ``fingerprint`` (an SQL expression)."""
    return (
        f"({alias}.expires_at <= {now} OR ({alias}.status = 'IN_PROGRESS' "
        f"AND {alias}.lease_expires_at <= {now} AND {alias}.fingerprint = {fingerprint}))"
    )


def _fresh_fence(now: str) -> str:
    """SQL of ``fresh_fence(now)``: the fence of a record created from nothing (the clock
    in whole milliseconds; ``floor`` of the same double as Python's ``int``)."""
    return f"greatest(1, floor({now} * 1000))::int8"


def _claim_sql(table: str, now: str) -> str:
    """The claim statement.

    ``cur`` reads the key in the statement's snapshot. If it shows a record this claim cannot
    take over (``blocked``), that record is the answer and nothing is written or locked, so a
    replay is a pure read. Otherwise ``won`` inserts the key, or on conflict takes it over
    (fence + 1): ON CONFLICT locks the *latest* committed row version and re-evaluates the
    takeover condition on it, so of N concurrent claimers exactly one wins. A new row's fence
    is the clock in milliseconds (``_fresh_fence``), so a key whose row was deleted
    (``purge``, ``delete``) never hands out a fence a paused invocation still holds. A loser whose
    snapshot predates the winner reads the row again in ``raced`` with ``FOR SHARE``, which
    under READ COMMITTED follows the update chain to the latest version (the winner's, with
    its fence) instead of the stale snapshot version. One case is left: the key did not exist
    in the snapshot and was inserted by a transaction that committed after the statement
    began; no part of the statement can see that row, the statement returns no row, and the
    caller sends it again (a new snapshot then sees the winner).
    """
    return f"""
WITH cur AS (
    SELECT {_COLS} FROM {table} WHERE key = %(key)s::text
), blocked AS (
    SELECT {_COLS} FROM cur WHERE NOT {_takeover("cur", now)}
), won AS (
    INSERT INTO {table} AS r ({_COLS})
    SELECT %(key)s::text, 'IN_PROGRESS', %(fingerprint)s::text, {_fresh_fence(now)},
           {now} + %(lease)s::float8, {now} + %(keep)s::float8, NULL
    WHERE NOT EXISTS (SELECT FROM blocked)
    ON CONFLICT (key) DO UPDATE SET
        status = 'IN_PROGRESS', fingerprint = EXCLUDED.fingerprint, fence = r.fence + 1,
        lease_expires_at = EXCLUDED.lease_expires_at, expires_at = EXCLUDED.expires_at,
        result = NULL
    WHERE {_takeover("r", now)}
    RETURNING {", ".join("r." + c for c in _COLUMNS)}
), raced AS (
    SELECT {_COLS} FROM {table}
    WHERE key = %(key)s::text AND NOT EXISTS (SELECT FROM blocked)
      AND NOT EXISTS (SELECT FROM won)
    FOR SHARE
)
SELECT {_COLS}, TRUE, {now} FROM won
UNION ALL SELECT {_COLS}, FALSE, {now} FROM blocked
UNION ALL SELECT {_COLS}, FALSE, {now} FROM raced
"""


def _claim_many_sql(table: str, now: str) -> str:
    """The batch claim statement: :func:`_claim_sql` over ``unnest`` of the items' arrays
    (``n`` numbers them), with the same takeover and fence rules. Rows come back numbered;
    an item without a row (its key inserted by a transaction that committed after the
    statement began) is sent again. Keys are inserted in key order, so two batches with
    common keys lock them in the same order."""
    cols = ", ".join("t." + c for c in _COLUMNS)
    return f"""
WITH input AS (
    SELECT * FROM unnest(%(keys)s::text[], %(fingerprints)s::text[], %(leases)s::float8[],
                         %(keeps)s::float8[]) WITH ORDINALITY AS i(key, fingerprint, lease, keep, n)
), blocked AS (
    SELECT i.n, {cols} FROM input i JOIN {table} t ON t.key = i.key
    WHERE NOT {_takeover("t", now, "i.fingerprint")}
), won AS (
    INSERT INTO {table} AS r ({_COLS})
    SELECT i.key, 'IN_PROGRESS', i.fingerprint, {_fresh_fence(now)},
           {now} + i.lease, {now} + i.keep, NULL
    FROM input i WHERE i.n NOT IN (SELECT n FROM blocked) ORDER BY i.key
    ON CONFLICT (key) DO UPDATE SET
        status = 'IN_PROGRESS', fingerprint = EXCLUDED.fingerprint, fence = r.fence + 1,
        lease_expires_at = EXCLUDED.lease_expires_at, expires_at = EXCLUDED.expires_at,
        result = NULL
    WHERE {_takeover("r", now, "EXCLUDED.fingerprint")}
    RETURNING {", ".join("r." + c for c in _COLUMNS)}
), raced AS (
    SELECT i.n, {cols} FROM input i JOIN {table} t ON t.key = i.key
    WHERE i.n NOT IN (SELECT n FROM blocked) AND i.key NOT IN (SELECT key FROM won)
    FOR SHARE OF t
)
SELECT i.n, {", ".join("w." + c for c in _COLUMNS)}, TRUE, {now}
FROM won w JOIN input i ON i.key = w.key
UNION ALL SELECT n, {_COLS}, FALSE, {now} FROM blocked
UNION ALL SELECT n, {_COLS}, FALSE, {now} FROM raced
"""


def _owned_many(table: str, now: str, assignments: str, columns: str) -> str:
    """A fence-conditional update of many rows: ``unnest(...) AS v(key, fence, ...)``
    gives each key its fence and values; the keys it changed come back."""
    return (
        f"UPDATE {table} t SET {assignments} FROM unnest({columns}) "
        "WHERE t.key = v.key AND t.fence = v.fence AND t.status = 'IN_PROGRESS' "
        f"AND t.expires_at > {now} RETURNING t.key"
    )


def _parse_numbered(rows: list[tuple[Any, ...]], rowcount: int) -> dict[int, Claim]:
    return {
        int(row[0]): Claim(acquired=bool(row[8]), record=_record(row[1:]), now=float(row[9]))
        for row in rows
    }


def _parse_keys(rows: list[tuple[Any, ...]], rowcount: int) -> set[str]:
    return {row[0] for row in rows}


def _owned(table: str, now: str, assignments: str) -> str:
    return (
        f"UPDATE {table} SET {assignments} WHERE key = %(key)s::text AND fence = %(fence)s::int8 "
        f"AND status = 'IN_PROGRESS' AND expires_at > {now}"
    )


@dataclass(frozen=True, slots=True)
class _Statements:
    """All SQL of one store (table name and clock source baked in)."""

    ddl: str
    claim: str
    complete: str
    release: str
    claim_many: str
    complete_many: str
    release_many: str
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
            claim_many=_claim_many_sql(t, now),
            complete_many=_owned_many(
                t,
                now,
                f"status = 'COMPLETED', result = v.result, expires_at = {now} + v.ttl",
                "%(keys)s::text[], %(fences)s::int8[], %(results)s::bytea[], %(ttls)s::float8[]"
                ") AS v(key, fence, result, ttl",
            ),
            release_many=_owned_many(
                t,
                now,
                f"expires_at = {now}",
                "%(keys)s::text[], %(fences)s::int8[]) AS v(key, fence",
            ),
            complete=_owned(
                t,
                now,
                f"status = 'COMPLETED', result = %(result)s, expires_at = {now} + %(ttl)s::float8",
            ),
            # Keep the row and its fence; ending retention makes it read as absent and the
            # next claim takes it over with fence + 1, so the released owner stays fenced.
            release=_owned(t, now, f"expires_at = {now}"),
            renew=_owned(
                t,
                now,
                f"lease_expires_at = {now} + %(lease)s::float8, "
                f"expires_at = greatest(expires_at, {now} + %(lease)s::float8)",
            ),
            get=f"SELECT {_COLS} FROM {t} WHERE key = %(key)s::text AND expires_at > {now}",
            delete=f"DELETE FROM {t} WHERE key = %(key)s::text",
            purge=f"DELETE FROM {t} WHERE expires_at <= {now} AND lease_expires_at <= {now}",
        )


def _record(row: tuple[Any, ...]) -> Record:
    key, status, fingerprint, fence, lease_expires_at, expires_at, result = row[:7]
    return Record(
        key=key,
        status=Status(status),
        fingerprint=fingerprint,
        fence=int(fence),
        lease_expires_at=float(lease_expires_at),
        expires_at=float(expires_at),
        result=bytes(result) if result is not None else None,
    )


def _execute(conn: Connection[Any], op: _Op[_T]) -> _T | _Again:
    cur = conn.execute(op.query, op.params)
    rows = cur.fetchall() if cur.description is not None else []
    return op.parse(rows, cur.rowcount)


async def _aexecute(conn: AsyncConnection[Any], op: _Op[_T]) -> _T | _Again:
    cur = await conn.execute(op.query, op.params)
    rows = await cur.fetchall() if cur.description is not None else []
    return op.parse(rows, cur.rowcount)


def _libpq_knows(name: str) -> bool:
    """Whether the installed libpq has a connection parameter ``name`` (False without
    psycopg: the option is then refused, naming the known ones)."""
    try:
        import psycopg
    except ImportError:
        return False
    return any(d.keyword.decode() == name for d in psycopg.pq.Conninfo.get_defaults())


def _is_url(url: str) -> bool:
    return url.lower().startswith(("postgresql://", "postgres://"))


def _connect_failure(exc: Exception, timeout: float) -> StoreError:
    """A ``StoreError`` that names why connecting failed and what to change."""
    text = str(exc).strip()
    low = text.lower()
    if "connection refused" in low:
        why = (
            "connection refused: nothing accepts connections at the URL's host and port; "
            "check them and that PostgreSQL is running"
        )
    elif "resolve host" in low or "translate host name" in low or "not known" in low:
        why = "unknown host: the URL's host name does not resolve; check its spelling and DNS"
    elif "database" in low and "does not exist" in low:
        why = "the database does not exist: create it, or fix the database name in the URL"
    elif "role" in low and "does not exist" in low:
        why = (
            "authentication failed: the user (role) does not exist; fix the user in the URL "
            "or create the role"
        )
    elif "authentication" in low or "password" in low or "pg_hba.conf" in low:
        why = (
            "authentication failed: check the user and password (URL, PGPASSWORD or "
            ".pgpass) and the server's pg_hba.conf"
        )
    elif "timeout" in low or "timed out" in low:
        why = (
            f"no answer within connect_timeout={timeout:g}s: check the host, the port and firewalls"
        )
    else:
        why = "the server refused or dropped the connection"
    detail = " ".join(text.split())
    return StoreError(f"cannot connect to PostgreSQL: {why} ({type(exc).__name__}: {detail})")


def _conninfo_keys(url: str | None) -> list[str]:
    """The libpq parameters a URL / conninfo string sets (none if it cannot be parsed here:
    libpq then reports the problem when connecting)."""
    if not url:
        return []
    try:
        return list(require("psycopg", "postgres").conninfo.conninfo_to_dict(url))
    except Exception:
        return []


def _parse_claim(rows: list[tuple[Any, ...]], rowcount: int) -> Claim | _Again:
    if not rows:
        return _AGAIN
    row = rows[0]
    return Claim(acquired=bool(row[7]), record=_record(row), now=float(row[8]))


def _parse_get(rows: list[tuple[Any, ...]], rowcount: int) -> Record | None:
    return _record(rows[0]) if rows else None


def _parse_changed(rows: list[tuple[Any, ...]], rowcount: int) -> bool:
    return rowcount == 1


def _parse_count(rows: list[tuple[Any, ...]], rowcount: int) -> int:
    return max(rowcount, 0)


def _parse_none(rows: list[tuple[Any, ...]], rowcount: int) -> None:
    return None


def _cut(conn: Any) -> None:
    """Shut the connection's socket down (both ways), from any thread: libpq's pending read
    or write fails at once, psycopg raises ``OperationalError`` and marks the connection
    broken, and a pool discards it. Through a duplicate descriptor, so the connection's own
    descriptor is never closed under libpq's feet."""
    try:
        fd = os.dup(conn.pgconn.socket)
    except Exception:  # already closed or broken: nothing left to cut
        return
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class _Watchdog:
    """Cuts the connection of any sync operation that overruns its deadline (psycopg has no
    client-side timeout on an open connection, so a stalled network would otherwise block
    the caller until TCP gives up), on one shared timer thread per process
    (:class:`~idempotence._timers.Timers`): watching costs a dict insert and pop, and a
    connection is never cut after its operation moved on (firing and :meth:`done` settle
    ownership atomically, and the loser waits for a running cut to finish)."""

    def __init__(self) -> None:
        self._timers = Timers("idempotence-pg-watchdog")

    def watch(self, conn: Any, timeout: float) -> int:
        """Cut ``conn`` if :meth:`done` is not called within ``timeout`` seconds."""
        return self._timers.add(timeout, functools.partial(_cut, conn))

    def pending(self) -> int:
        """Operations being watched right now."""
        return len(self._timers)

    def done(self, ident: int, conn: Any) -> bool:
        """End the watch; ``True`` if the watchdog fired (then ``conn`` is cut and closed)."""
        if self._timers.cancel(ident):  # else the cut ran: cancel waited for it to finish
            return False
        with contextlib.suppress(Exception):
            conn.close()  # a pool discards it (a closed connection is never reused)
        return True


_watchdog = _Watchdog()


class _Fuse:
    """The async twin of a watch: a ``loop.call_later`` timer (no thread) that cuts the
    connection. (``asyncio.timeout`` would not do: on cancellation psycopg sends a cancel
    request and waits for the server, up to 10 s more on a stalled network.)"""

    __slots__ = ("conn", "fired")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        _cut(self.conn)


def _timed_out(timeout: float) -> TimeoutError:
    return TimeoutError(
        f"no reply from PostgreSQL within operation_timeout={timeout:g}s; the connection "
        "was closed (a statement already sent may still complete on the server)"
    )


async def _close_with_loop(pool: AsyncConnectionPool[Any]) -> AsyncGenerator[None, None]:
    """Suspended for the life of an event loop; closing it closes ``pool``.

    ``asyncio.run`` closes every live async generator of its loop before closing the loop
    (``loop.shutdown_asyncgens()``), so a pool created in an ``asyncio.run(...)`` (one Lambda
    invocation, say) is closed on its own loop at the end of the run. By then ``asyncio.run``
    has cancelled the pool's worker tasks, which makes ``pool.close()`` stop early with
    ``CancelledError`` before it closes the idle connections, so they are closed here.
    """
    try:
        yield
    finally:
        idle = list(getattr(pool, "_pool", ()))  # psycopg_pool's idle connections
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await pool.close()
        for conn in idle:
            if not conn.closed:
                await conn.close()


@dataclass(slots=True)
class _LoopPool:
    pool: AsyncConnectionPool[Any]
    keeper: AsyncGenerator[None, None]


class PostgresStore(OperationStore):
    """Records in one PostgreSQL table; every operation is one SQL statement.

    Connection sources (give one): ``url`` (a ``postgresql://`` URL or libpq conninfo string;
    the store then owns a small sync pool, opened on first use, and one async pool per
    running event loop, so ``asyncio.run`` per invocation never touches a pool of a dead
    loop), or an injected ``pool`` (``psycopg_pool.ConnectionPool``), ``async_pool``
    (``AsyncConnectionPool``), ``connection`` / ``aconnection`` (a single psycopg
    connection, used by all threads/tasks). An event loop run by hand (not ``asyncio.run``)
    should ``await store.aclose()`` before it is closed, or its pool's tasks die with it.
    Injected objects are used as given and never
    closed by the store; give them ``autocommit=True`` (otherwise each operation costs a
    BEGIN/COMMIT on top) and READ COMMITTED isolation (the default). With only a sync source,
    the async methods run the sync ones in a worker thread; with only an async source, the
    sync methods raise.

    Time is the server's (``statement_timestamp()``, in epoch seconds) unless ``clock`` is
    given, in which case the client's ``clock()`` is sent with each statement (tests use a
    :class:`~idempotence.testing.ManualClock`). All processes sharing a table should use the
    same kind of clock.

    The table is created automatically the first time a statement finds it missing (no cost
    while it exists; ``auto_create=False`` turns that off). To create it in a migration
    instead, run :meth:`migration_sql` or call :meth:`create_table`.

    Failures are fast: connecting gives up after ``connect_timeout`` seconds, waiting for
    a pooled connection after ``pool_timeout`` seconds, and an operation on an open
    connection after ``operation_timeout`` seconds (default 5; ``None`` disables it): the
    connection's socket is then shut down, so a stalled network or server cannot hold the
    caller, and the connection is discarded (a statement already sent may still complete,
    as with any lost reply: a claim then holds its key until its lease lapses). All surface
    as :class:`~idempotence.StoreError`. The timeout costs no thread per call: one watchdog
    thread per process serves every sync operation (registration is a dict insert and
    pop), and async operations use an event-loop timer. It applies to injected
    connections too (a cut injected connection stays closed; its owner replaces it).
    Connections the store opens itself get TCP keepalives (``keepalives_idle=30``,
    ``keepalives_interval=10``, ``keepalives_count=3``) and ``tcp_user_timeout=30000`` ms,
    unless the URL or ``connect_kwargs`` set them. When an operation finds its connection
    dead (server restart, failover, terminated backend, timeout), it fails once with
    ``StoreError`` and the store's own pools drop their other idle connections, so the
    next call reconnects.

    Released and expired rows stay until :meth:`purge` deletes them (run it periodically;
    it scans the table, as ``expires_at`` is deliberately not indexed so that updates stay
    HOT).
    """

    uses_client_clock = False

    def __init__(
        self,
        url: str | None = None,
        *,
        pool: ConnectionPool[Any] | None = None,
        async_pool: AsyncConnectionPool[Any] | None = None,
        connection: Connection[Any] | None = None,
        aconnection: AsyncConnection[Any] | None = None,
        table: str = "idempotency",
        clock: Clock | None = None,
        connect_timeout: float = 5,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        auto_create: bool = True,
        connect_kwargs: Mapping[str, Any] | None = None,
        operation_timeout: float | None = 5.0,
        sweep_every: float | None = None,
    ) -> None:
        sources = [s for s in (url, pool, connection) if s is not None]
        asources = [s for s in (async_pool, aconnection) if s is not None]
        if url is not None and (sources[1:] or asources):
            raise ValueError("give either url or injected pools/connections, not both")
        if len(sources) > 1 or len(asources) > 1:
            raise ValueError("give at most one sync and one async connection source")
        if not sources and not asources:
            raise ValueError("give url, pool, async_pool, connection or aconnection")
        for conn in (connection, aconnection):
            if conn is not None and not conn.autocommit:
                raise ValueError("an injected connection must have autocommit=True")
        if url is not None and _is_url(url):
            # Our options in the URL are read exactly as from_url reads them (one parser).
            parsed = self.parse_url(url)
            url = parsed["url"]
            table = merge_option("table", table, "idempotency", parsed["table"])
            connect_timeout = merge_option(
                "connect_timeout", connect_timeout, 5, parsed["connect_timeout"]
            )
            pool_size = merge_option("pool_size", pool_size, DEFAULT_POOL_SIZE, parsed["pool_size"])
            pool_timeout = merge_option(
                "pool_timeout", pool_timeout, DEFAULT_POOL_TIMEOUT, parsed["pool_timeout"]
            )
            auto_create = merge_option("auto_create", auto_create, True, parsed["auto_create"])
            operation_timeout = merge_option(
                "operation_timeout", operation_timeout, 5.0, parsed["operation_timeout"]
            )
            sweep_every = merge_option("sweep_every", sweep_every, None, parsed["sweep_every"])
        sweep = sweep_interval(sweep_every)
        check_pool_options(pool_size, pool_timeout)
        self.table = table
        self.clock = clock
        self.url = url
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout
        self.auto_create = auto_create
        self.connect_kwargs = dict(connect_kwargs or {})
        if operation_timeout is not None and not operation_timeout > 0:
            raise ValueError(f"operation_timeout must be > 0 or None, not {operation_timeout!r}")
        self.operation_timeout = operation_timeout
        self._sql = _Statements.build(table, _CLIENT_NOW if clock is not None else _SERVER_NOW)
        self._pool = pool
        self._async_pool = async_pool
        self._connection = connection
        self._aconnection = aconnection
        self._owned_pool: ConnectionPool[Any] | None = None
        self._owned_pool_pid = 0
        self._owned_apools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopPool] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        if sweep is not None:
            self.start_sweep(sweep)

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``postgresql://user:password@host:5432/db?...``
        (or ``postgres://``), checked without connecting or importing psycopg.

        Store options in the query (``table``, ``pool_size``, ``pool_timeout``,
        ``auto_create``, ``operation_timeout`` (seconds, or ``none``), ``sweep_every``
        (seconds: :meth:`start_sweep` at that interval), and
        ``connect_timeout``, which libpq also reads) are taken out; libpq's own parameters
        (``sslmode``, ``application_name``, ``keepalives_idle``...) stay in the URL handed
        to libpq. Any other option is refused with ``ValueError``.
        """
        parts = urlsplit(url)
        options = url_query(url, (*_URL_OPTIONS, *sorted(_LIBPQ_OPTIONS)), extra=_libpq_knows)
        query = parse_qsl(parts.query, keep_blank_values=True)
        rest = [(k, v) for k, v in query if k not in _URL_OPTIONS]
        table = options.get("table", "idempotency")
        _table_sql(table)
        return {
            "url": urlunsplit(parts._replace(query=urlencode(rest))),
            "table": table,
            "connect_timeout": option_number(options, "connect_timeout", 5),
            **pool_url_options(options),
            "auto_create": option_bool(options, "auto_create", True),
            "operation_timeout": option_number(options, "operation_timeout", 5.0, none=True),
            "sweep_every": option_sweep_every(options),
        }

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """The store of a ``postgresql://`` URL (see :meth:`parse_url`); the same as
        ``PostgresStore(url)``."""
        return cls(**cls.parse_url(url))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(table={self.table!r})"

    def migration_sql(self) -> str:
        """The ``CREATE TABLE IF NOT EXISTS`` statement of this store's table, for users
        who run schema migrations themselves (then pass ``auto_create=False``). Needs no
        connection."""
        return self._sql.ddl

    # -- statements as data -------------------------------------------------------------
    def _params(self, **params: object) -> dict[str, object]:
        if self.clock is not None:
            params["now"] = float(self.clock())
        return params

    def _claim_op(self, key: str, fingerprint: str, lease: float, ttl: float) -> _Op[Claim]:
        params = self._params(
            key=key, fingerprint=fingerprint, lease=float(lease), keep=float(max(ttl, lease))
        )
        return _Op(self._sql.claim, params, _parse_claim)

    def _complete_op(self, key: str, fence: int, result: bytes, ttl: float) -> _Op[bool]:
        params = self._params(key=key, fence=fence, result=bytes(result), ttl=float(ttl))
        return _Op(self._sql.complete, params, _parse_changed)

    def _release_op(self, key: str, fence: int) -> _Op[bool]:
        return _Op(self._sql.release, self._params(key=key, fence=fence), _parse_changed)

    def _renew_op(self, key: str, fence: int, lease: float) -> _Op[bool]:
        params = self._params(key=key, fence=fence, lease=float(lease))
        return _Op(self._sql.renew, params, _parse_changed)

    def _get_op(self, key: str) -> _Op[Record | None]:
        return _Op(self._sql.get, self._params(key=key), _parse_get)

    def _delete_op(self, key: str) -> _Op[bool]:
        return _Op(self._sql.delete, {"key": key}, _parse_changed)

    def _purge_op(self) -> _Op[int]:
        return _Op(self._sql.purge, self._params(), _parse_count)

    def _ddl_op(self) -> _Op[None]:
        return _Op(self._sql.ddl, {}, _parse_none)

    # -- pools ---------------------------------------------------------------------------
    def _pool_options(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        given = set(self.connect_kwargs) | set(_conninfo_keys(self.url))
        defaults = dict(_KEEPALIVES)
        if require("psycopg", "postgres").pq.version() >= 120000:  # libpq 12 added it
            defaults["tcp_user_timeout"] = _TCP_USER_TIMEOUT_MS
        kwargs.update({k: v for k, v in defaults.items() if k not in given})
        kwargs.update(self.connect_kwargs)
        kwargs["connect_timeout"] = max(1, round(self.connect_timeout))
        return {
            "conninfo": self.url,
            "kwargs": kwargs,
            "min_size": 0,
            "max_size": self.pool_size,
            "timeout": self.pool_timeout,
            "open": False,
        }

    def _probe(self, options: Mapping[str, Any]) -> None:
        """Connect once, directly, before the store's pool is built (and after the pool
        timed out): a pool only reports ``PoolTimeout`` after ``pool_timeout``, while this
        fails at once with the real cause (refused, unknown host, authentication, missing
        database) as :class:`~idempotence.StoreError`."""
        psycopg = require("psycopg", "postgres")
        try:
            psycopg.connect(options["conninfo"], **options["kwargs"]).close()
        except psycopg.OperationalError as exc:
            raise _connect_failure(exc, self.connect_timeout) from exc

    async def _aprobe(self, options: Mapping[str, Any]) -> None:
        """Async :meth:`_probe`."""
        psycopg = require("psycopg", "postgres")
        try:
            conn = await psycopg.AsyncConnection.connect(options["conninfo"], **options["kwargs"])
        except psycopg.OperationalError as exc:
            raise _connect_failure(exc, self.connect_timeout) from exc
        await conn.close()

    def _sync_pool(self) -> ConnectionPool[Any]:
        pool = self._owned_pool
        if pool is not None and self._owned_pool_pid == os.getpid():
            return pool
        with self._lock:
            # A pool inherited through fork() is unusable (its threads stayed behind);
            # leave it to the parent and start one for this process.
            if self._owned_pool is None or self._owned_pool_pid != os.getpid():
                pool_mod = require("psycopg_pool", "postgres")
                options = self._pool_options()
                self._probe(options)
                new: ConnectionPool[Any] = pool_mod.ConnectionPool(**options)
                new.open(wait=False)
                self._owned_pool, self._owned_pool_pid = new, os.getpid()
            return self._owned_pool

    async def _loop_pool(self) -> AsyncConnectionPool[Any]:
        loop = asyncio.get_running_loop()
        entry = self._owned_apools.get(loop)
        if entry is not None and not entry.pool.closed:
            return entry.pool
        pool_mod = require("psycopg_pool", "postgres")
        options = self._pool_options()
        await self._aprobe(options)
        pool: AsyncConnectionPool[Any] = pool_mod.AsyncConnectionPool(**options)
        await pool.open(wait=False)
        entry = self._owned_apools.get(loop)
        if entry is not None and not entry.pool.closed:  # another task got there first
            await pool.close()
            return entry.pool
        keeper = _close_with_loop(pool)
        await keeper.__anext__()
        self._owned_apools[loop] = _LoopPool(pool, keeper)
        return pool

    @contextmanager
    def _sync_conn(self) -> Iterator[Connection[Any]]:
        if self._connection is not None:
            yield self._connection
            return
        owned = self._pool is None
        pool = self._pool if self._pool is not None else self._sync_pool()
        broken = False
        try:
            with pool.connection() as conn:
                try:
                    yield conn
                finally:
                    broken = conn.closed
        except require("psycopg_pool", "postgres").PoolTimeout as exc:
            if not owned:
                raise
            self._probe(self._pool_options())  # name the cause if the server is unreachable
            raise pool_exhausted(type(self).__name__, self.pool_size, self.pool_timeout) from exc
        finally:
            if broken and owned:
                # Its idle siblings were most likely cut off by the same event.
                if hasattr(pool, "drain"):  # psycopg_pool >= 3.3
                    pool.drain()
                else:
                    pool.check()

    @asynccontextmanager
    async def _async_conn(self) -> AsyncIterator[AsyncConnection[Any]]:
        if self._aconnection is not None:
            yield self._aconnection
            return
        owned = self._async_pool is None
        pool = self._async_pool if self._async_pool is not None else await self._loop_pool()
        broken = False
        try:
            async with pool.connection() as conn:
                try:
                    yield conn
                finally:
                    broken = conn.closed
        except require("psycopg_pool", "postgres").PoolTimeout as exc:
            if not owned:
                raise
            await self._aprobe(self._pool_options())  # name the cause if unreachable
            raise pool_exhausted(type(self).__name__, self.pool_size, self.pool_timeout) from exc
        finally:
            if broken and owned:
                if hasattr(pool, "drain"):  # psycopg_pool >= 3.3
                    await pool.drain()
                else:
                    await pool.check()

    @property
    def _has_async_source(self) -> bool:
        return any(s is not None for s in (self.url, self._async_pool, self._aconnection))

    # -- capability: SQLConnections (idempotence.stores.capabilities) --------------------
    def sql_connection(self) -> contextlib.AbstractContextManager[Connection[Any]]:
        """A connection of the store (its pool's, or the one it was given), autocommit as
        the store keeps them; returned on exit. See
        :class:`~idempotence.stores.capabilities.SQLConnections`."""
        return self._sync_conn()

    def asql_connection(
        self,
    ) -> contextlib.AbstractAsyncContextManager[AsyncConnection[Any]] | None:
        """An ``AsyncConnection`` of the store, or ``None`` when it was built without an
        async source (no URL, async pool or async connection)."""
        return self._async_conn() if self._has_async_source else None

    # -- the two shells ------------------------------------------------------------------
    def _missing_table(self, exc: Exception) -> bool:
        errors = require("psycopg", "postgres").errors
        return isinstance(exc, errors.UndefinedTable)

    def _tolerable_ddl_race(self, exc: Exception) -> bool:
        # Concurrent CREATE TABLE IF NOT EXISTS can collide in the catalog; the table exists.
        errors = require("psycopg", "postgres").errors
        return isinstance(
            exc, (errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateObject)
        )

    def _run(self, op: _Op[_T], *, auto_create: bool = True) -> _T:
        if self._connection is None and self._pool is None and self.url is None:
            raise RuntimeError(
                "this PostgresStore has only an async connection source; use the a* methods"
            )
        created = not (auto_create and self.auto_create)
        timeout = self.operation_timeout
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                with self._sync_conn() as conn:
                    if timeout is None:
                        outcome = _execute(conn, op)
                    else:
                        watch = _watchdog.watch(conn, timeout)
                        try:
                            outcome = _execute(conn, op)
                        except Exception as exc:
                            if _watchdog.done(watch, conn):
                                raise _timed_out(timeout) from exc
                            raise
                        _watchdog.done(watch, conn)  # fired late: the reply is good
            except Exception as exc:
                if created or not self._missing_table(exc):
                    raise
                self.create_table()
                created = True
                continue
            if not isinstance(outcome, _Again):
                return outcome
        raise RuntimeError(f"claim did not settle after {_CLAIM_ATTEMPTS} attempts")

    async def _arun(self, op: _Op[_T], *, auto_create: bool = True) -> _T:
        if not self._has_async_source:
            return await asyncio.to_thread(self._run, op, auto_create=auto_create)
        created = not (auto_create and self.auto_create)
        timeout = self.operation_timeout
        for _ in range(_CLAIM_ATTEMPTS):
            try:
                async with self._async_conn() as conn:
                    if timeout is None:
                        outcome = await _aexecute(conn, op)
                    else:
                        fuse = _Fuse(conn)
                        timer = asyncio.get_running_loop().call_later(timeout, fuse)
                        try:
                            outcome = await _aexecute(conn, op)
                        except Exception as exc:
                            if fuse.fired:
                                raise _timed_out(timeout) from exc
                            raise
                        finally:
                            timer.cancel()
                        if fuse.fired:  # fired late: the reply is good, the socket is not
                            await conn.close()
            except Exception as exc:
                if created or not self._missing_table(exc):
                    raise
                await self.acreate_table()
                created = True
                continue
            if not isinstance(outcome, _Again):
                return outcome
        raise RuntimeError(f"claim did not settle after {_CLAIM_ATTEMPTS} attempts")

    # -- schema and maintenance ----------------------------------------------------------
    def create_table(self) -> None:
        """Create the table if it does not exist (idempotent, safe to race)."""
        try:
            self._run(self._ddl_op(), auto_create=False)
        except Exception as exc:
            if not self._tolerable_ddl_race(exc):
                raise

    async def acreate_table(self) -> None:
        """Async :meth:`create_table`."""
        try:
            await self._arun(self._ddl_op(), auto_create=False)
        except Exception as exc:
            if not self._tolerable_ddl_race(exc):
                raise

    # -- capability: Maintainable (idempotence.stores.capabilities) ----------------------
    _sweeper: Sweeper | None = None

    @contextmanager
    def _maintenance_conn(self) -> Iterator[tuple[Connection[Any], float]]:
        """A connection and the store's clock now; a missing table is a StoreError (the
        maintenance methods never create it)."""
        errors = require("psycopg", "postgres").errors
        try:
            with self._sync_conn() as conn:
                if self.clock is not None:
                    now = float(self.clock())
                else:
                    row = conn.execute(f"SELECT {_SERVER_NOW}").fetchone()
                    assert row is not None
                    now = float(row[0])
                yield conn, now
        except errors.UndefinedTable as exc:
            raise StoreError(
                f"PostgreSQL store: the table {self.table!r} does not exist; nothing was "
                "created. Create it with `idempotence create-table` or "
                "PostgresStore(...).create_table()"
            ) from exc

    def _where(
        self,
        now: float,
        namespace: str | None,
        status: Status | None,
        older_than: float | None,
        expired: bool,
    ) -> tuple[str, dict[str, object]]:
        conditions: list[str] = ["true"]
        params: dict[str, object] = {}
        if namespace is not None:
            head = namespace + "#"
            conditions.append(
                "left(key, %(head_len)s) = %(head)s "
                "AND strpos(substr(key, %(head_len)s + 1), '#') = 0"
            )
            params.update(head=head, head_len=len(head))
        if status is not None:
            conditions.append("status = %(status)s")
            params["status"] = status.value
        if older_than is not None:
            conditions.append("fence <= %(born_ms)s::float8")
            params["born_ms"] = (now - older_than) * 1000
        if expired:
            conditions.append(
                "expires_at <= %(now)s::float8 AND lease_expires_at <= %(now)s::float8"
            )
        params["now"] = now
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
        with self._maintenance_conn() as (conn, now):
            where, params = self._where(now, namespace, status, older_than, expired)

            def fetch(after: str | None, size: int) -> list[Any]:
                page = "" if after is None else " AND key > %(after)s"
                return conn.execute(
                    f"SELECT {_COLS} FROM {table} WHERE {where}{page} ORDER BY key LIMIT %(size)s",
                    {**params, "after": after, "size": size},
                ).fetchall()

            for row in keyset_pages(fetch, lambda row: row[0], limit, batch_size):
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
        with self._maintenance_conn() as (conn, now):
            where, params = self._where(now, namespace, status, older_than, expired)
            row = conn.execute(
                f"SELECT count(*) FROM {_table_sql(self.table)} WHERE {where}", params
            ).fetchone()
            assert row is not None
            return int(row[0])

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """Delete the matching rows, ``batch_size`` per statement (each its own
        transaction). With the defaults, rows whose retention has ended and whose lease is
        over too (an expired row that still fences a paused invocation is kept while that
        lease is live). Returns how many were deleted.

        A batch is the first ``batch_size`` matching rows of a sequential scan, deleted by
        key; the ``DELETE`` checks the condition again on the row it deletes, so a row
        claimed again since the batch was read is kept. (On a table larger than a quarter
        of ``shared_buffers``, PostgreSQL starts each sequential scan where the previous one
        stopped, so batches do not rescan the rows earlier ones kept; paging by key instead
        measured slower at 1M records: index order is not table order, see
        docs/benchmarks.md.)"""
        table = _table_sql(self.table)
        total = 0
        with self._maintenance_conn() as (conn, now):
            where, params = self._where(now, namespace, None, None, expired)
            while True:
                row = conn.execute(
                    f"WITH batch AS (SELECT key FROM {table} WHERE {where} LIMIT %(size)s), "
                    f"gone AS (DELETE FROM {table} WHERE key IN (SELECT key FROM batch) "
                    f"AND {where} RETURNING 1) "
                    "SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM batch)",
                    {**params, "size": batch_size},
                ).fetchone()
                assert row is not None
                deleted, found = int(row[0]), int(row[1])
                total += deleted
                if deleted and progress is not None:
                    progress(deleted)
                if found < batch_size:
                    return total

    async def apurge(self) -> int:
        """Async purge of the expired rows (one statement on the async connection)."""
        return await self._arun(self._purge_op())

    def stats(self) -> StoreStats:
        """Counts by status and namespace (one pass over the records)."""
        records = list(self.scan())
        with self._maintenance_conn() as (_conn, now):
            return stats_of(records, now)

    def start_sweep(self, every: float) -> Sweeper:
        """Opt in to removing expired rows in this process: a claim made ``every`` seconds
        or more after the last sweep starts :meth:`purge` in a background thread (the
        claim does not wait for it). Returns the sweeper (``runs``, ``deleted``)."""
        self._sweeper = Sweeper(every, self.purge, self.clock or time.time)
        return self._sweeper

    def close(self) -> None:
        """Close the sync pool this store created. Async pools belong to their event loop:
        :meth:`aclose` closes the current loop's, and each is closed when its
        ``asyncio.run`` ends. Injected pools/connections are left alone. The store
        reconnects if used again."""
        with self._lock:
            pool, self._owned_pool = self._owned_pool, None
            owned_here = self._owned_pool_pid == os.getpid()
        if pool is not None and owned_here:
            pool.close()

    async def aclose(self) -> None:
        """Close the current event loop's async pool and the sync pool this store created."""
        entry = self._owned_apools.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.keeper.aclose()
        if self._owned_pool is not None:
            await asyncio.to_thread(self.close)

    # -- capability: BatchClaims (idempotence.stores.capabilities) ----------------------
    def _claim_many_steps(
        self, items: Sequence[tuple[str, str, float, float]]
    ) -> Generator[_Op[Any], Any, list[Claim]]:
        """One statement claims every item; items it returned no row for (a concurrent
        insert it could not see) are sent again."""
        out: dict[int, Claim] = {}
        for _ in range(_CLAIM_ATTEMPTS):
            todo = [i for i in range(len(items)) if i not in out]
            if not todo:
                break
            params = self._params(
                keys=[items[i][0] for i in todo],
                fingerprints=[items[i][1] for i in todo],
                leases=[float(items[i][2]) for i in todo],
                keeps=[float(max(items[i][3], items[i][2])) for i in todo],
            )
            numbered = yield _Op(self._sql.claim_many, params, _parse_numbered)
            for n, claim in numbered.items():
                out[todo[n - 1]] = claim
        if len(out) < len(items):
            raise RuntimeError(f"claim did not settle after {_CLAIM_ATTEMPTS} attempts")
        return [out[i] for i in range(len(items))]

    def _complete_many_op(self, items: Sequence[tuple[str, int, bytes, float]]) -> _Op[set[str]]:
        params = self._params(
            keys=[key for key, _, _, _ in items],
            fences=[int(fence) for _, fence, _, _ in items],
            results=[bytes(result) for _, _, result, _ in items],
            ttls=[float(ttl) for _, _, _, ttl in items],
        )
        return _Op(self._sql.complete_many, params, _parse_keys)

    def _release_many_op(self, items: Sequence[tuple[str, int]]) -> _Op[set[str]]:
        params = self._params(
            keys=[key for key, _ in items], fences=[int(fence) for _, fence in items]
        )
        return _Op(self._sql.release_many, params, _parse_keys)

    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)`` in one statement (``INSERT ...
        SELECT FROM unnest(...) ON CONFLICT ... RETURNING``, the single claim's rules).
        See :class:`~idempotence.stores.capabilities.BatchClaims`."""
        return drive(self._claim_many_steps(items), self._run, catch=())

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Complete every ``(key, fence, result, ttl)`` in one ``UPDATE ... FROM unnest``."""
        done = self._run(self._complete_many_op(items))
        return [item[0] in done for item in items]

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Release every ``(key, fence)`` in one ``UPDATE ... FROM unnest``."""
        done = self._run(self._release_many_op(items))
        return [item[0] in done for item in items]

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Async :meth:`claim_many`."""
        return await adrive(self._claim_many_steps(items), self._arun, catch=())

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Async :meth:`complete_many`."""
        done = await self._arun(self._complete_many_op(items))
        return [item[0] in done for item in items]

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Async :meth:`release_many`."""
        done = await self._arun(self._release_many_op(items))
        return [item[0] in done for item in items]

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
