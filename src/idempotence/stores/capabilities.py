"""What a store can do beyond the :class:`~idempotence.stores.Store` protocol: capabilities.

The exactly-once effects (:mod:`idempotence.effects`) need more than claim/complete: a SQL
connection to put a state table next to the records, a way to run a script atomically next
to them, or DynamoDB's conditional transactional writes. Each need is one small protocol
here. A store offers a capability by implementing its public methods; the effects check
``isinstance(store, Capability)`` and use nothing else, so a third-party store gets them by
implementing the same methods:

- :class:`SQLConnections`: DB-API connections to the store's SQL database (``sqlite3``,
  psycopg 3, or PyMySQL / aiomysql). :class:`~idempotence.stores.SQLiteStore`,
  :class:`~idempotence.stores.PostgresStore`, :class:`~idempotence.stores.MySQLStore`. Used by
  :class:`~idempotence.effects.StateGuard` and as the ``connect`` source of
  :class:`~idempotence.effects.TransactionalIdempotency`.
- :class:`AtomicScripts`: run a Lua script atomically on one key.
  :class:`~idempotence.stores.RedisStore`. Used by ``StateGuard``.
- :class:`DynamoDBRecords`: the store's table, the typed key and the item codec of a record,
  the conditional ``TransactWriteItems`` entry that completes a record, and one request on
  the store's client. :class:`~idempotence.stores.DynamoDBStore`. Used by ``StateGuard`` and
  :func:`~idempotence.effects.dynamodb_transaction`.

- :class:`Maintainable`: list, count and delete records in batches, and statistics, for
  operators (the ``idempotence`` command line: ``list``, ``stats``, ``purge``). Every
  built-in store (MySQLStore included).
- :class:`BatchClaims`: claim, complete and release many keys in one request (or as few as
  the backend allows). Every built-in store, and a
  :class:`~idempotence.stores.LargeResultStore` around one (it compresses and offloads
  each result before the one batch write, and reads back each completed record a batch
  claim returns). Used by the AWS Lambda batch adapter
  (``process_batch``), which falls back to one request per record without it; the
  functions :func:`claim_each`, :func:`complete_each` and :func:`release_each` are that
  fallback, usable by any caller.

The SQL records table (shared by the SQL stores and the transactional effects, so both see
the same records) is described by :func:`records_ddl`, :func:`quoted_table`,
:data:`RECORD_COLUMNS`, :func:`record_from_row` and :func:`fresh_fence_sql`.

One file (over 400 lines): the capability protocols and the helpers their implementations
share (the one-at-a-time ``BatchClaims`` fallbacks, the SQL table and statement helpers) are
one public module, so a third-party store imports all it needs from one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, Literal, Protocol, runtime_checkable

from .._record import Claim, Record, Status
from ._base import Store
from ._maintenance import Progress, StoreStats, created_at, namespace_of

__all__ = [
    "RECORD_COLUMNS",
    "AtomicScripts",
    "BatchClaims",
    "ClaimItem",
    "CompleteItem",
    "DynamoDBRecords",
    "Maintainable",
    "ReleaseItem",
    "SQLConnections",
    "StoreStats",
    "aclaim_each",
    "acomplete_each",
    "arelease_each",
    "claim_each",
    "complete_each",
    "created_at",
    "fresh_fence_sql",
    "mysql_statement",
    "mysql_states_ddl",
    "namespace_of",
    "quoted_table",
    "record_from_row",
    "records_ddl",
    "release_each",
]

#: ``(key, fingerprint, lease, ttl)``: one key to claim, as :meth:`Store.claim` takes it
#: (the engine's ``ClaimOp`` is one).
ClaimItem = tuple[str, str, float, float]
#: ``(key, fence, result, ttl)``: one record to complete (the engine's ``CompleteOp``).
CompleteItem = tuple[str, int, bytes, float]
#: ``(key, fence)``: one record to release (the engine's ``ReleaseOp``).
ReleaseItem = tuple[str, int]


@runtime_checkable
class SQLConnections(Protocol):
    """A store whose data lives in a SQL database it reaches through DB-API connections."""

    def sql_connection(self) -> AbstractContextManager[Any]:
        """A ``with`` block holding a connection to the store's database: a
        ``sqlite3.Connection``, a psycopg 3 ``Connection`` or a PyMySQL ``Connection``, in
        autocommit mode (each
        statement commits by itself unless the caller opens a transaction: ``BEGIN`` /
        ``conn.transaction()``). The connection is the store's: return it in the state you
        got it (no open transaction) by leaving the block. Errors propagate unchanged."""
        ...

    def asql_connection(self) -> AbstractAsyncContextManager[Any] | None:
        """The same as an ``async with`` block holding a psycopg ``AsyncConnection`` (or an
        aiomysql ``Connection``), or
        ``None`` when the store has no async connection source: callers then use
        :meth:`sql_connection` in a worker thread."""
        ...


@runtime_checkable
class AtomicScripts(Protocol):
    """A store that runs a Lua script atomically on one key (Redis ``EVALSHA``/``EVAL``)."""

    #: Prefix of every key the store writes; a capability user puts its own keys under it.
    prefix: str

    def run_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """Run ``script`` with ``KEYS[1] = key`` (the full key: add :attr:`prefix` yourself)
        and ``ARGV = args``, atomically; return the raw reply (bytes, ints, lists or
        ``None``). The key is the script's only key, so it is valid on Redis Cluster.
        Errors of the client propagate unchanged."""
        ...

    async def arun_script(self, script: str, key: str, args: Sequence[str | bytes]) -> Any:
        """Async :meth:`run_script`."""
        ...


@runtime_checkable
class DynamoDBRecords(Protocol):
    """A store whose records are items of one DynamoDB table.

    A store whose :meth:`record_from_item` makes a request
    (:class:`~idempotence.stores.LargeResultStore`: the S3 ``GetObject`` of an offloaded
    result) also offers ``async arecord_from_item(item)``, which the async effects await
    instead; it is not required (``isinstance`` does not check it).
    """

    #: The table of the records.
    table: str
    #: The clock of the store's leases and retention (epoch seconds).
    clock: Callable[[], float]

    def item_key(self, key: str) -> dict[str, Any]:
        """The typed primary key (``{"id": {"S": ...}}``, plus the sort key if the table
        has one) of the item holding ``key``. Any string can be given: a capability user
        keeps its own items apart by a prefix."""
        ...

    def record_from_item(self, item: Mapping[str, Any]) -> Record:
        """The record an item holds (as returned by ``GetItem`` or a cancellation reason).
        Raises :class:`~idempotence.CorruptRecordError` for an item that is not one."""
        ...

    def completion_write(
        self, key: str, fingerprint: str, result: bytes, *, ttl: float, now: float
    ) -> dict[str, Any]:
        """A ``TransactWriteItems`` entry (``{"Update": {...}}``) writing the completed
        record of ``key`` with ``result`` (kept ``ttl`` seconds from ``now``), on condition
        that ``key`` may be claimed at ``now``: absent, past retention, or an in-progress
        claim with the same fingerprint whose lease lapsed. On a failed condition DynamoDB
        returns the existing item in the cancellation reason (``ALL_OLD``)."""
        ...

    def call(self, method: str, request: Mapping[str, Any]) -> Any:
        """One request ``client.<method>(**request)`` on the store's boto3 client; its
        response. botocore's exceptions propagate (a missing table as
        :class:`~idempotence.StoreError`)."""
        ...

    async def acall(self, method: str, request: Mapping[str, Any]) -> Any:
        """Async :meth:`call` (aiobotocore, or the sync client in a worker thread)."""
        ...


@runtime_checkable
class Maintainable(Protocol):
    """A store whose records can be listed, counted and deleted in bulk, in batches (a
    round trip per batch, not per record). Filters, the same for every method:

    - ``namespace``: records whose key is ``namespace#...`` (:func:`namespace_of`);
    - ``status``: ``IN_PROGRESS`` or ``COMPLETED``;
    - ``older_than``: first created more than that many seconds ago (read from the fence,
      the store clock in milliseconds at creation);
    - ``expired``: retention ended and the lease is over too (what a store without native
      expiry keeps until purged).

    Reads never create a table or file; a missing one raises
    :class:`~idempotence.StoreError`.
    """

    def scan(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
        limit: int | None = None,
        batch_size: int = 1000,
    ) -> Iterator[Record]:
        """The stored records matching the filters (expired ones included unless filtered:
        their ``expires_at`` tells), at most ``limit``, fetched ``batch_size`` at a time.
        Order is the store's."""
        ...

    def count(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
    ) -> int:
        """How many stored records match (what :meth:`purge` would delete now)."""
        ...

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = 1000,
        progress: Progress | None = None,
    ) -> int:
        """Delete the records matching ``namespace`` (all if ``None``) and, if ``expired``
        (the default), only those whose retention and lease have ended. Deletes in batches
        of ``batch_size`` (one round trip each), calling ``progress(n)`` after each; returns
        how many were deleted. ``purge()`` deletes every expired record."""
        ...

    def stats(self) -> StoreStats:
        """Counts by status and namespace, expired records still stored, and the oldest
        live in-progress record."""
        ...


@runtime_checkable
class BatchClaims(Protocol):
    """A store that claims, completes and releases many keys in one request.

    Each item has exactly the outcome the single operation would give it
    (:meth:`~idempotence.stores.Store.claim` and its takeover and fence rules,
    fence-conditional ``complete``/``release``), as if the items were applied one after the
    other in order; results come back in the items' order. The keys of one call are
    distinct (callers split repeated keys over several calls). Items may be applied in
    several requests where the backend caps a request (DynamoDB: 100 items per
    transaction; Redis Cluster: one script per hash slot, the scripts of the slots one
    master owns pipelined in one request to it, so one round trip per master, the masters
    written to concurrently), and a conflict may cost one more request (DynamoDB). A
    request redirected before it ran (a Redis Cluster slot that moved) is sent again; one
    whose reply was lost is not. A failed request raises :class:`~idempotence.StoreError`
    for the whole call: some items may have been applied (a retry of a claim sees its own
    in-progress record; of a complete, ``False``). A failure of one item alone that the
    single operation would raise (a result over the store's item limit:
    :class:`~idempotence.ResultTooLargeError`) is returned in that item's place.
    """

    def claim_many(self, items: Sequence[ClaimItem]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)``; one :class:`Claim` per item."""
        ...

    def complete_many(self, items: Sequence[CompleteItem]) -> list[bool]:
        """Complete every ``(key, fence, result, ttl)``; whether each was still owned."""
        ...

    def release_many(self, items: Sequence[ReleaseItem]) -> list[bool]:
        """Release every ``(key, fence)``; whether each was still owned."""
        ...

    async def aclaim_many(self, items: Sequence[ClaimItem]) -> list[Claim]:
        """Async :meth:`claim_many`."""
        ...

    async def acomplete_many(self, items: Sequence[CompleteItem]) -> list[bool]:
        """Async :meth:`complete_many`."""
        ...

    async def arelease_many(self, items: Sequence[ReleaseItem]) -> list[bool]:
        """Async :meth:`release_many`."""
        ...


def claim_each(store: Store, items: Sequence[ClaimItem]) -> list[Claim | Exception]:
    """The per-record fallback of :meth:`BatchClaims.claim_many`: one ``claim`` request
    per item, in order; an item whose request failed gets its exception in its place."""
    out: list[Claim | Exception] = []
    for key, fingerprint, lease, ttl in items:
        try:
            out.append(store.claim(key, fingerprint, lease=lease, ttl=ttl))
        except Exception as exc:
            out.append(exc)
    return out


def complete_each(store: Store, items: Sequence[CompleteItem]) -> list[bool | Exception]:
    """One ``complete`` per item (see :func:`claim_each`)."""
    out: list[bool | Exception] = []
    for key, fence, result, ttl in items:
        try:
            out.append(store.complete(key, fence, result, ttl=ttl))
        except Exception as exc:
            out.append(exc)
    return out


def release_each(store: Store, items: Sequence[ReleaseItem]) -> list[bool | Exception]:
    """One ``release`` per item (see :func:`claim_each`)."""
    out: list[bool | Exception] = []
    for key, fence in items:
        try:
            out.append(store.release(key, fence))
        except Exception as exc:
            out.append(exc)
    return out


async def aclaim_each(store: Store, items: Sequence[ClaimItem]) -> list[Claim | Exception]:
    """Async :func:`claim_each`."""
    out: list[Claim | Exception] = []
    for key, fingerprint, lease, ttl in items:
        try:
            out.append(await store.aclaim(key, fingerprint, lease=lease, ttl=ttl))
        except Exception as exc:
            out.append(exc)
    return out


async def acomplete_each(store: Store, items: Sequence[CompleteItem]) -> list[bool | Exception]:
    """Async :func:`complete_each`."""
    out: list[bool | Exception] = []
    for key, fence, result, ttl in items:
        try:
            out.append(await store.acomplete(key, fence, result, ttl=ttl))
        except Exception as exc:
            out.append(exc)
    return out


async def arelease_each(store: Store, items: Sequence[ReleaseItem]) -> list[bool | Exception]:
    """Async :func:`release_each`."""
    out: list[bool | Exception] = []
    for key, fence in items:
        try:
            out.append(await store.arelease(key, fence))
        except Exception as exc:
            out.append(exc)
    return out


# -- the SQL records table ---------------------------------------------------------------
#: The columns of the SQL records table, in the order :func:`record_from_row` reads them.
RECORD_COLUMNS: tuple[str, ...] = (
    "key",
    "status",
    "fingerprint",
    "fence",
    "lease_expires_at",
    "expires_at",
    "result",
)

Dialect = Literal["sqlite", "postgres", "mysql"]


def quoted_table(table: str, dialect: Dialect) -> str:
    """The records table name as SQL. PostgreSQL takes ``table`` or ``schema.table``, MySQL
    ``table`` or ``database.table`` (letters, digits, ``_``; else ``ValueError``); SQLite
    quotes any name verbatim."""
    if dialect == "postgres":
        from ._postgres import _table_sql

        return _table_sql(table)
    if dialect == "mysql":
        from ._mysql import _table_sql as mysql_table_sql

        return mysql_table_sql(table)
    if not table or "\x00" in table:
        raise ValueError(f"invalid table name {table!r}")
    return '"' + table.replace('"', '""') + '"'


def records_ddl(table: str, dialect: Dialect) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` of the records table ``table`` (as the stores
    create it)."""
    if dialect == "postgres":
        from ._postgres import _ddl

        return _ddl(table)
    if dialect == "mysql":
        from ._mysql import _ddl as mysql_ddl

        return mysql_ddl(table)
    from ._sqlite import sqlite_ddl

    return sqlite_ddl(quoted_table(table, "sqlite"))


def record_from_row(row: Sequence[Any]) -> Record:
    """The record of a row whose first columns are :data:`RECORD_COLUMNS` (extra columns
    after them are ignored). Binary key, status and fingerprint values (MySQL's VARBINARY
    columns) are decoded as UTF-8."""
    from ._mysql import _record

    return _record(tuple(row))


def mysql_statement(conn: Any, query: str, params: Mapping[str, object]) -> str:
    """``query`` (``%(name)s`` placeholders) with ``params`` in place for a PyMySQL or
    aiomysql connection ``conn``, as the MySQL store sends its statements (bytes as hex
    literals, strings escaped by the connection)."""
    from ._mysql import mysql_sql

    return mysql_sql(conn, query, params)


def mysql_states_ddl(table: str) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` of a MariaDB/MySQL states table (``table``
    already quoted) as :class:`~idempotence.effects.StateGuard` uses it."""
    from ._mysql import states_ddl

    return states_ddl(table)


def fresh_fence_sql(now: str) -> str:
    """PostgreSQL expression of :func:`~idempotence.stores.fresh_fence` at the SQL time
    expression ``now`` (epoch seconds): the fence of a record created from nothing."""
    from ._postgres import _fresh_fence

    return _fresh_fence(now)
