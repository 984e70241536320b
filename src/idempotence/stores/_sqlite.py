"""Embedded store: one SQLite file in WAL mode, safe across threads and processes.

One file (over 400 lines): one class, :class:`SQLiteStore`, whose operations, maintenance
and DDL share its per-thread connections and row format.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .._errors import StoreError
from .._record import Claim, Record, Status
from ._base import Clock, Store, decide_claim, system_clock
from ._maintenance import (
    DEFAULT_BATCH,
    Progress,
    StoreStats,
    Sweeper,
    keyset_pages,
    stats_of,
    sweep_interval,
)
from ._registry import merge_option, option_number, option_sweep_every, url_query

__all__ = ["SQLiteStore"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_COLUMNS = "key, status, fingerprint, fence, lease_expires_at, expires_at, result"


def _check_table(table: str) -> None:
    if not _IDENT.match(table):
        raise ValueError(f"invalid table name {table!r}: use letters, digits and '_'")


def sqlite_ddl(table: str) -> str:
    """The ``CREATE TABLE IF NOT EXISTS`` of a records table (shared with the transactional
    API in :mod:`idempotence.effects`, so both see the same records)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} ("
        "key TEXT PRIMARY KEY, status TEXT NOT NULL, fingerprint TEXT NOT NULL, "
        "fence INTEGER NOT NULL, lease_expires_at REAL NOT NULL, "
        "expires_at REAL NOT NULL, result BLOB) WITHOUT ROWID"
    )


def _row_to_record(row: tuple[object, ...] | None) -> Record | None:
    if row is None:
        return None
    key, status, fingerprint, fence, lease_expires_at, expires_at, result = row
    return Record(
        key=str(key),
        status=Status(status),
        fingerprint=str(fingerprint),
        fence=int(fence),  # type: ignore[call-overload]
        lease_expires_at=float(lease_expires_at),  # type: ignore[arg-type]
        expires_at=float(expires_at),  # type: ignore[arg-type]
        result=bytes(result) if result is not None else None,  # type: ignore[call-overload]
    )


class SQLiteStore(Store):
    """Records in one table of a SQLite database file.

    Each thread (and each process) uses its own connection; the file is in WAL mode, and a
    claim is one ``BEGIN IMMEDIATE`` transaction, which SQLite serialises across threads and
    processes, so two processes racing on one key run the body once. Completed/released
    rows are kept until their retention ends; call :meth:`purge` to delete expired rows.

    The default store of :func:`idempotence.idempotent`. It is local to one machine: on
    Lambda each execution environment has its own ``/tmp``, so use a shared store there.
    """

    max_result_bytes = 256 * 1024 * 1024
    #: Create the file and the table on first use. ``False`` (set on the instance, as the
    #: command line does for its reads) makes a missing file or table a
    #: :class:`~idempotence.StoreError` instead; :meth:`create_table` still creates them.
    auto_create = True
    _sweeper: Sweeper | None = None

    def __init__(
        self,
        path: str | os.PathLike[str] = "idempotence.db",
        *,
        table: str = "idempotency",
        clock: Clock | None = None,
        timeout: float = 30.0,
        sweep_every: float | None = None,
    ) -> None:
        if isinstance(path, str) and path.lower().startswith("sqlite:"):
            # A URL given where a path is expected: read it as from_url does.
            options = self.parse_url(path)
            path = options["path"]
            table = merge_option("table", table, "idempotency", options["table"])
            timeout = merge_option("timeout", timeout, 30.0, options["timeout"])
            sweep_every = merge_option("sweep_every", sweep_every, None, options["sweep_every"])
        _check_table(table)
        sweep = sweep_interval(sweep_every)
        self.path = os.fspath(path)
        self.table = table
        self.clock: Clock = clock or system_clock
        self.timeout = timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if sweep is not None:
            self.start_sweep(sweep)

    @classmethod
    def parse_url(cls, url: str) -> dict[str, Any]:
        """The constructor arguments of ``sqlite:///relative/path.db`` or
        ``sqlite:////absolute/path.db`` (options ``table``, ``timeout``, ``sweep_every``:
        seconds, :meth:`start_sweep` at that interval), checked without touching the file.
        ``sqlite://:memory:`` is refused (each connection would see its own database)."""
        parts = urlsplit(url)
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if not path or path == ":memory:":
            raise ValueError(
                "a sqlite:// store URL needs a file path, e.g. sqlite:///idempotence.db "
                "(an in-memory SQLite database is not shared between connections; "
                "use memory:// instead)"
            )
        query = url_query(url, ("table", "timeout", "sweep_every"))
        table = query.get("table", "idempotency")
        _check_table(table)
        return {
            "path": path,
            "table": table,
            "timeout": option_number(query, "timeout", 30.0),
            "sweep_every": option_sweep_every(query),
        }

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        """The store of a ``sqlite://`` URL (see :meth:`parse_url`)."""
        return cls(**cls.parse_url(url))

    # -- connections --------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and getattr(self._local, "pid", None) == pid:
            return conn
        if not self.auto_create:
            return self._existing_conn(pid)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        # Switching to WAL and creating the table race when several processes open a new
        # file at once, and SQLite reports some of those conflicts without waiting on its
        # busy handler: retry them within the timeout.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(sqlite_ddl(self.table))
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    conn.close()
                    raise
                time.sleep(0.01)
        conn.execute("PRAGMA synchronous=NORMAL")
        self._local.conn, self._local.pid = conn, pid
        with self._lock:
            self._connections.append(conn)
        return conn

    def _existing_conn(self, pid: int) -> sqlite3.Connection:
        """A connection to the existing file and table (nothing created or converted)."""
        missing = (
            f"SQLite store: the {{}} does not exist (table {self.table!r}); nothing was "
            "created. Check the path, or create it with `idempotence create-table` or "
            "SQLiteStore(...).create_table()"
        )
        if not os.path.isfile(self.path):
            raise StoreError(missing.format("database file"))
        uri = "file:" + quote(os.path.abspath(self.path)) + "?mode=rw"
        conn = sqlite3.connect(
            uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        found = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (self.table,)
        ).fetchone()
        if found is None:
            conn.close()
            raise StoreError(missing.format("records table"))
        self._local.conn, self._local.pid = conn, pid
        with self._lock:
            self._connections.append(conn)
        return conn

    def create_table(self) -> None:
        """Create the database file (WAL mode) and the records table if they do not exist
        (the same statement the store runs on first use). Idempotent."""
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(sqlite_ddl(self.table))
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # -- capability: SQLConnections (idempotence.stores.capabilities) --------------------
    @contextmanager
    def sql_connection(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection to the database (autocommit: ``isolation_level=None``;
        ``BEGIN`` opens a transaction). See
        :class:`~idempotence.stores.capabilities.SQLConnections`."""
        yield self._conn()

    def asql_connection(self) -> None:
        """``None``: SQLite has no async driver; use :meth:`sql_connection` in a thread."""

    # -- operations ---------------------------------------------------------------------
    def claim(self, key: str, fingerprint: str, *, lease: float, ttl: float) -> Claim:
        return self.claim_many([(key, fingerprint, lease, ttl)])[0]

    # -- capability: BatchClaims (idempotence.stores.capabilities) ----------------------
    def claim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """Claim every ``(key, fingerprint, lease, ttl)`` in one transaction (``claim`` is
        the batch of one). See :class:`~idempotence.stores.capabilities.BatchClaims`."""
        if self._sweeper is not None:
            self._sweeper.maybe()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        outcomes = []
        try:
            now = self.clock()
            for key, fingerprint, lease, ttl in items:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM {self.table} WHERE key = ?", (key,)
                ).fetchone()
                outcome = decide_claim(
                    _row_to_record(row), key, fingerprint, now=now, lease=lease, ttl=ttl
                )
                if outcome.acquired:
                    r = outcome.record
                    conn.execute(
                        f"INSERT OR REPLACE INTO {self.table} ({_COLUMNS}) "
                        "VALUES (?, ?, ?, ?, ?, ?, NULL)",
                        (
                            key,
                            r.status.value,
                            fingerprint,
                            r.fence,
                            r.lease_expires_at,
                            r.expires_at,
                        ),
                    )
                outcomes.append(outcome)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcomes

    def _owned_many(
        self, writes: Sequence[tuple[str, tuple[object, ...], str, int]], now: float
    ) -> list[bool]:
        """Apply each ``(assignments, params, key, fence)`` if its fence owns its key, in
        one transaction."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = [
                self._update_owned(assignments, params, key, fence, now)
                for assignments, params, key, fence in writes
            ]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return done

    def complete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """Complete every ``(key, fence, result, ttl)`` in one transaction."""
        now = self.clock()
        assignments = "status = 'COMPLETED', result = ?, expires_at = ?"
        return self._owned_many(
            [
                (assignments, (sqlite3.Binary(result), now + ttl), key, fence)
                for key, fence, result, ttl in items
            ],
            now,
        )

    def release_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """Release every ``(key, fence)`` in one transaction."""
        now = self.clock()
        return self._owned_many(
            [("expires_at = ?", (now,), key, fence) for key, fence in items], now
        )

    async def aclaim_many(self, items: Sequence[tuple[str, str, float, float]]) -> list[Claim]:
        """:meth:`claim_many` in a worker thread (SQLite has no async driver)."""
        return await asyncio.to_thread(self.claim_many, items)

    async def acomplete_many(self, items: Sequence[tuple[str, int, bytes, float]]) -> list[bool]:
        """:meth:`complete_many` in a worker thread."""
        return await asyncio.to_thread(self.complete_many, items)

    async def arelease_many(self, items: Sequence[tuple[str, int]]) -> list[bool]:
        """:meth:`release_many` in a worker thread."""
        return await asyncio.to_thread(self.release_many, items)

    def _update_owned(
        self, assignments: str, params: tuple[object, ...], key: str, fence: int, now: float
    ) -> bool:
        """Apply ``assignments`` if ``fence`` owns ``key`` at ``now`` (the instant the new
        values were computed from: the clock is read once per operation)."""
        cursor = self._conn().execute(
            f"UPDATE {self.table} SET {assignments} "
            "WHERE key = ? AND fence = ? AND status = 'IN_PROGRESS' AND expires_at > ?",
            (*params, key, fence, now),
        )
        return cursor.rowcount == 1

    def complete(self, key: str, fence: int, result: bytes, *, ttl: float) -> bool:
        now = self.clock()
        return self._update_owned(
            "status = 'COMPLETED', result = ?, expires_at = ?",
            (sqlite3.Binary(result), now + ttl),
            key,
            fence,
            now,
        )

    def release(self, key: str, fence: int) -> bool:
        # Keep the row and its fence; ending retention makes it read as absent.
        now = self.clock()
        return self._update_owned("expires_at = ?", (now,), key, fence, now)

    def renew(self, key: str, fence: int, *, lease: float) -> bool:
        now = self.clock()
        until = now + lease
        return self._update_owned(
            "lease_expires_at = ?, expires_at = MAX(expires_at, ?)", (until, until), key, fence, now
        )

    def get(self, key: str) -> Record | None:
        row = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM {self.table} WHERE key = ? AND expires_at > ?",
                (key, self.clock()),
            )
            .fetchone()
        )
        return _row_to_record(row)

    def delete(self, key: str) -> bool:
        cursor = self._conn().execute(f"DELETE FROM {self.table} WHERE key = ?", (key,))
        return cursor.rowcount == 1

    # -- capability: Maintainable (idempotence.stores.capabilities) ----------------------
    def _where(
        self,
        now: float,
        namespace: str | None,
        status: Status | None,
        older_than: float | None,
        expired: bool,
    ) -> tuple[str, list[object]]:
        conditions, params = ["1 = 1"], []
        if namespace is not None:
            head = namespace + "#"
            conditions.append("substr(key, 1, ?) = ? AND instr(substr(key, ?), '#') = 0")
            params += [len(head), head, len(head) + 1]
        if status is not None:
            conditions.append("status = ?")
            params.append(status.value)
        if older_than is not None:
            conditions.append("fence <= ?")
            params.append((now - older_than) * 1000)
        if expired:
            conditions.append("expires_at <= ? AND lease_expires_at <= ?")
            params += [now, now]
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
        """The matching records in key order, ``batch_size`` per query (keyset paging).
        See :class:`~idempotence.stores.capabilities.Maintainable`."""
        conn, now = self._conn(), self.clock()
        where, params = self._where(now, namespace, status, older_than, expired)

        def fetch(after: str | None, size: int) -> list[Any]:
            return conn.execute(
                f"SELECT {_COLUMNS} FROM {self.table} WHERE {where} AND key > ? "
                "ORDER BY key LIMIT ?",
                (*params, "" if after is None else after, size),
            ).fetchall()

        for row in keyset_pages(fetch, lambda row: str(row[0]), limit, batch_size):
            record = _row_to_record(row)
            assert record is not None
            yield record

    def count(
        self,
        *,
        namespace: str | None = None,
        status: Status | None = None,
        older_than: float | None = None,
        expired: bool = False,
    ) -> int:
        """How many records match (one query)."""
        where, params = self._where(self.clock(), namespace, status, older_than, expired)
        row = self._conn().execute(f"SELECT count(*) FROM {self.table} WHERE {where}", params)
        return int(row.fetchone()[0])

    def purge(
        self,
        *,
        namespace: str | None = None,
        expired: bool = True,
        batch_size: int = DEFAULT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """Delete the matching rows, ``batch_size`` per batch, in key order (each batch its
        own short write, so claims interleave). With the defaults, rows whose retention has
        ended and whose lease is over too (an expired row that still fences a paused
        invocation is kept while that lease is live). Returns how many were deleted.

        Keyset paging: a batch finds the next ``batch_size`` matching keys after the last
        batch's (a read, no write lock), then deletes the matching rows of that key range
        (the condition checked again), so the whole purge reads the table once, however
        many batches it takes, and the write lock is held for one range at a time."""
        conn = self._conn()
        where, params = self._where(self.clock(), namespace, None, None, expired)
        total, after = 0, ""
        while True:
            found, last = conn.execute(
                f"SELECT count(*), max(key) FROM (SELECT key FROM {self.table} "
                f"WHERE {where} AND key > ? ORDER BY key LIMIT ?)",
                (*params, after, batch_size),
            ).fetchone()
            deleted = 0
            if found:
                deleted = conn.execute(
                    f"DELETE FROM {self.table} WHERE {where} AND key > ? AND key <= ?",
                    (*params, after, last),
                ).rowcount
            total += deleted
            if deleted and progress is not None:
                progress(deleted)
            if found < batch_size:
                return total
            after = str(last)

    def stats(self) -> StoreStats:
        """Counts by status and namespace (one pass over the records)."""
        return stats_of(self.scan(), self.clock())

    def start_sweep(self, every: float) -> Sweeper:
        """Opt in to removing expired rows in this process: a claim made ``every`` seconds
        or more after the last sweep starts :meth:`purge` in a background thread (the
        claim does not wait for it). Returns the sweeper (``runs``, ``deleted``)."""
        self._sweeper = Sweeper(every, self.purge, self.clock)
        return self._sweeper
