"""The operator commands of the ``idempotence`` command line (``inspect``, ``forget``,
``key``, ``list``, ``stats``, ``purge``, ``create-table``, ``doctor``).

They reach a store only through its public operations and the capabilities of
:mod:`idempotence.stores.capabilities` (``Maintainable`` for ``list``/``stats``/``purge``).
Every read opens the store with ``auto_create`` off where it has one, so a missing SQLite
file, SQL table or DynamoDB table is a :class:`~idempotence.StoreError`, never created.

One file (over 400 lines): the operator commands are short functions over the same private
helpers (opening a store, reading a key, printing records); split per command they would
import those helpers across modules.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import importlib
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ._codec import KIND_ERROR, KIND_NOT_STORED, KIND_VALUE, open_envelope
from ._errors import CorruptRecordError, IdempotencyError, StoreError
from ._record import Record, Status
from .stores import Store, store_from_url
from .stores.capabilities import (
    RECORD_COLUMNS,
    AtomicScripts,
    DynamoDBRecords,
    Maintainable,
    SQLConnections,
    created_at,
    namespace_of,
)

__all__ = ["COMMANDS", "UsageError", "parse_duration", "record_json"]

ENV_STORE = "IDEMPOTENCE_STORE"
#: The namespace of ``doctor``'s probe keys (no decorated function uses it by default).
PROBE_NAMESPACE = "idempotence.doctor"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(Exception):
    """A command line mistake: printed with exit status 2."""


def parse_duration(text: str) -> float:
    """Seconds of ``"90"``, ``"30s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"``."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (use e.g. 90, 30s, 15m, 2h, 7d)"
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


# -- output -------------------------------------------------------------------------------
def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    try:
        return dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="milliseconds")
    except (OverflowError, OSError, ValueError):
        return "never" if at > 0 else None


def _relative(at: float | None, now: float) -> str:
    if at is None:
        return "unknown"
    stamp = _iso(at)
    delta = at - now
    if abs(delta) > 1e9:
        return str(stamp)
    return f"{stamp} ({f'in {delta:.1f}s' if delta >= 0 else f'{-delta:.1f}s ago'})"


def decode_result(data: bytes | None) -> dict[str, Any]:
    """What a stored result holds, without rebuilding any class: ``{"kind": "none"}``,
    ``{"kind": "value", "json": ...}`` (the stored JSON, tags such as ``{"$tuple": ...}``
    kept), ``{"kind": "http", "status", "headers", "body_bytes", "body_preview"}``,
    ``{"kind": "error", "json": ...}``, ``{"kind": "not-stored"}`` or, for bytes this
    library cannot read, ``{"kind": "opaque", "bytes": n, "problem": ...}``."""
    if data is None:
        return {"kind": "none"}
    try:
        kind, body = open_envelope(data)
    except CorruptRecordError as exc:
        return {"kind": "opaque", "bytes": len(data), "problem": str(exc)}
    if kind == KIND_NOT_STORED:
        return {"kind": "not-stored", "bytes": len(data)}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return {"kind": "opaque", "bytes": len(data), "problem": "not JSON (custom serializer?)"}
    if kind == KIND_ERROR:
        return {"kind": "error", "bytes": len(data), "json": value}
    http = _http_summary(value)
    if http is not None:
        return {"kind": "http", "bytes": len(data), **http}
    assert kind == KIND_VALUE
    return {"kind": "value", "bytes": len(data), "json": value}


def _http_summary(value: Any) -> dict[str, Any] | None:
    """Status, headers and a body summary of a stored HTTP response, else None."""
    if not (isinstance(value, dict) and set(value) == {"status", "headers", "body"}):
        return None
    raw = value["body"]
    if not (isinstance(raw, dict) and set(raw) == {"$bytes"} and isinstance(raw["$bytes"], str)):
        return None
    try:
        body = base64.b64decode(raw["$bytes"], validate=True)
    except ValueError:
        return None
    text = body[:200].decode("utf-8", "replace")
    return {
        "status": value["status"],
        "headers": value["headers"],
        "body_bytes": len(body),
        "body_preview": text + ("..." if len(body) > 200 else ""),
    }


def record_json(record: Record, now: float, *, result: bool = True) -> dict[str, Any]:
    """A record as a JSON-ready dict (times as ISO 8601 UTC)."""
    out: dict[str, Any] = {
        "key": record.key,
        "namespace": namespace_of(record.key),
        "status": record.status.value,
        "fingerprint": record.fingerprint,
        "fence": record.fence,
        "claimed_at": _iso(created_at(record)),
        "lease_expires_at": _iso(record.lease_expires_at),
        "expires_at": _iso(record.expires_at),
        "expired": record.is_expired(now),
    }
    if result:
        out["result"] = decode_result(record.result)
    else:
        out["result_bytes"] = None if record.result is None else len(record.result)
    return out


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")


def format_result(result: dict[str, Any]) -> str:
    """One-paragraph text of :func:`decode_result`'s dict."""
    kind = result["kind"]
    if kind == "none":
        return "none"
    if kind == "http":
        headers = ", ".join(f"{k}: {v}" for k, v in result["headers"])
        return (
            f"HTTP {result['status']}; headers: {headers or '(none)'}; body "
            f"{result['body_bytes']} bytes: {result['body_preview']!r}"
        )
    if kind in ("value", "error"):
        text = json.dumps(result["json"], ensure_ascii=False)
        text = text if len(text) <= 2000 else text[:2000] + "..."
        return f"{kind} ({result['bytes']} bytes): {text}"
    if kind == "not-stored":
        return "not stored (the result could not be encoded; duplicates get an error)"
    return f"{result['bytes']} bytes, unreadable: {result['problem']}"


# -- stores -------------------------------------------------------------------------------
def _store_url(args: argparse.Namespace) -> str:
    url = args.store or os.environ.get(ENV_STORE)
    if not url:
        raise UsageError(f"no store: pass --store URL or set {ENV_STORE}")
    return str(url)


@contextmanager
def open_store(args: argparse.Namespace, *, create: bool = False) -> Iterator[Store]:
    """The store of ``--store``/``IDEMPOTENCE_STORE``; with ``create=False`` a store that
    would create its file or table on first use is told not to."""
    store = store_from_url(_store_url(args))
    if not create and hasattr(store, "auto_create"):
        store.auto_create = False
    try:
        yield store
    finally:
        store.close()


def _maintainable(store: Store) -> Maintainable:
    if not isinstance(store, Maintainable):
        raise UsageError(
            f"{type(store).__name__} cannot list or purge records (it does not implement "
            "idempotence.stores.capabilities.Maintainable)"
        )
    return store


def _store_key(store: Store, key: str) -> str:
    """``key``, or the store key inside a raw backend key (a Redis key with its prefix)."""
    if isinstance(store, AtomicScripts) and store.prefix and key.startswith(store.prefix):
        return key[len(store.prefix) :]
    return key


def _kind(store: Store) -> str:
    """The class name of ``store``, or of the store a ``LargeResultStore`` wraps."""
    from .stores import LargeResultStore

    while isinstance(store, LargeResultStore):
        store = store.store
    return type(store).__name__


def _now(store: Store) -> float:
    clock = getattr(store, "clock", None)
    return float(clock()) if callable(clock) else time.time()


# -- commands -------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        key = _store_key(store, args.key)
        record = store.get(key)
        now = _now(store)
    if record is None:
        print("no record for this key (never claimed, forgotten or expired)", file=sys.stderr)
        return 1
    data = record_json(record, now)
    if args.json:
        _print_json(data)
        return 0
    _print_rows(
        [
            ("key", record.key),
            ("namespace", data["namespace"]),
            ("status", record.status.value),
            ("fingerprint", record.fingerprint),
            ("fence", str(record.fence)),
            ("claimed", _relative(created_at(record), now)),
            ("lease expires", _relative(record.lease_expires_at, now)),
            ("expires", _relative(record.expires_at, now)),
            ("result", format_result(data["result"])),
        ]
    )
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        deleted = store.delete(_store_key(store, args.key))
    if args.json:
        _print_json({"deleted": deleted})
    elif deleted:
        print("forgot the record; the next call with this key runs again")
    else:
        print("no record for this key", file=sys.stderr)
    return 0 if deleted else 1


def _load_function(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--function takes module:function, e.g. app.orders:charge (got {spec!r})")
    sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    finally:
        sys.path.pop(0)
    for part in attr.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise UsageError(f"{module_name} has no attribute {attr!r}")
    if not callable(getattr(target, "key_for", None)):
        raise UsageError(f"{spec} is not a function decorated with idempotence (no key_for)")
    return target


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not valid JSON ({exc.msg} at {exc.pos})") from None


def cmd_key(args: argparse.Namespace) -> int:
    if args.function is not None:
        fn = _load_function(args.function)
        call_args = [] if args.payload is None else [_json_arg(args.payload, "--payload")]
        kwargs = {} if args.kwargs is None else _json_arg(args.kwargs, "--kwargs")
        if not isinstance(kwargs, dict):
            raise UsageError("--kwargs must be a JSON object")
        out = {
            "key": fn.key_for(*call_args, **kwargs),
            "fingerprint": fn.fingerprint_for(*call_args, **kwargs),
        }
    else:
        from ._idempotency import Idempotency
        from .http import HTTPIdempotency, HTTPRequest, parse_idempotency_key

        scope_value = args.scope
        http = HTTPIdempotency(
            Idempotency("memory://"),
            namespace=args.namespace,
            scope=None if scope_value is None else (lambda _request: scope_value),
        )
        headers = [("content-type", args.content_type)] if args.content_type else []
        path, _, query = args.path.partition("?")
        request = HTTPRequest(
            args.method.upper(), path, query, headers, (args.body or "").encode("utf-8")
        )
        header = parse_idempotency_key(args.header)
        assert header is not None
        out = {"key": http.key_for(request, header), "fingerprint": http.fingerprint_for(request)}
    if args.json:
        _print_json(out)
    else:
        _print_rows([("key", out["key"]), ("fingerprint", out["fingerprint"])])
    return 0


def _status(text: str | None) -> Status | None:
    return None if text is None else Status(text.upper())


def cmd_list(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        records = list(
            _maintainable(store).scan(
                namespace=args.namespace,
                status=_status(args.status),
                older_than=args.older_than,
                expired=args.expired,
                limit=args.limit,
            )
        )
        now = _now(store)
    rows = [record_json(r, now, result=False) for r in records]
    if args.json:
        _print_json({"count": len(rows), "records": rows})
        return 0
    if not rows:
        print("no records match")
        return 0
    for row in rows:
        state = row["status"] + (" (expired)" if row["expired"] else "")
        print(f"{row['key']}  {state}  claimed {row['claimed_at']}  expires {row['expires_at']}")
    print(f"{len(rows)} record(s)")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        stats = _maintainable(store).stats().as_dict()
    stats["oldest_in_progress"] = _iso(stats["oldest_in_progress"])
    if args.json:
        _print_json(stats)
        return 0
    rows = [("records", str(stats["total"]))]
    rows += [(f"  {name}", str(n)) for name, n in stats["by_status"].items()]
    rows.append(("expired, still stored", str(stats["expired"])))
    rows.append(("namespaces", str(len(stats["by_namespace"]))))
    rows += [(f"  {name}", str(n)) for name, n in stats["by_namespace"].items()]
    oldest = stats["oldest_in_progress"]
    rows.append(
        (
            "oldest in progress",
            "none" if oldest is None else f"{oldest} ({stats['oldest_in_progress_key']})",
        )
    )
    _print_rows(rows)
    return 0


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [y/N] ").strip().lower() in {"y", "yes"}


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr advanced by each purged batch (when stderr is a
    terminal and rich is installed), else nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import Progress
    except ImportError:
        yield None
        return
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("purging", total=total)
        yield lambda n: progress.advance(task, n)


def cmd_purge(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        if args.key is not None:
            key = _store_key(store, args.key)
            found = store.get(key) is not None if args.dry_run else store.delete(key)
            count = int(found)
        else:
            target = _maintainable(store)
            selection: dict[str, Any] = {"namespace": args.namespace, "expired": args.expired}
            count = target.count(**selection)
            if not args.dry_run and count:
                ask = args.namespace is not None and not args.expired and not args.yes
                if ask and not _confirm(
                    f"delete {count} record(s) of namespace {args.namespace!r}?"
                ):
                    raise UsageError(
                        "purging a namespace deletes records that are still in use: "
                        "pass --yes (or --dry-run to see how many)"
                    )
                with _progress_bar(count, not args.json) as advance:
                    count = target.purge(**selection, batch_size=args.batch_size, progress=advance)
    if args.json:
        _print_json(
            {"dry_run": args.dry_run, ("would_delete" if args.dry_run else "deleted"): count}
        )
    else:
        print(f"would delete {count} record(s)" if args.dry_run else f"deleted {count} record(s)")
    return 0


def cmd_create_table(args: argparse.Namespace) -> int:
    with open_store(args, create=True) as store:
        create = getattr(store, "create_table", None)
        if create is None:
            detail = f"{type(store).__name__} needs no table"
            created: bool | None = None
        else:
            outcome = create()
            created = outcome if isinstance(outcome, bool) else None
            detail = f"{type(store).__name__}: table ready"
    if args.json:
        _print_json({"created": created, "detail": detail})
    else:
        print(detail)
    return 0


# -- doctor -----------------------------------------------------------------------------------
def _check(checks: list[dict[str, Any]], name: str, run: Callable[[], str]) -> bool:
    try:
        detail = run()
        ok: bool | None = True
        if detail.startswith("n/a"):
            ok = None
    except (IdempotencyError, UsageError, OSError, RuntimeError, ValueError) as exc:
        detail, ok = f"{type(exc).__name__}: {exc}", False
    except Exception as exc:
        detail, ok = f"{type(exc).__name__}: {exc}", False
    checks.append({"check": name, "ok": ok, "detail": detail})
    return ok is not False


def _reachable(store: Store, probe: str) -> str:
    store.get(probe)
    return "read a key"


def _write_delete(store: Store, probe: str) -> str:
    claim = store.claim(probe, "doctor", lease=30.0, ttl=30.0)
    if not claim.acquired:
        raise StoreError("could not claim a fresh probe key")
    if not store.complete(probe, claim.record.fence, b"\x01N", ttl=30.0):
        raise StoreError("could not complete the probe key it had claimed")
    if not store.delete(probe):
        raise StoreError("could not delete the probe key")
    return f"claimed, completed and deleted a probe key in namespace {PROBE_NAMESPACE!r}"


def _skew(store: Store) -> str:
    if getattr(store, "clock", None) not in (None, time.time):
        return "n/a: the store uses an injected clock"
    if isinstance(store, AtomicScripts):
        before = time.time()
        reply = store.run_script(
            "return redis.call('TIME')", store.prefix + PROBE_NAMESPACE + "#clock", []
        )
        server = int(reply[0]) + int(reply[1]) / 1e6
    elif isinstance(store, SQLConnections) and _kind(store) != "SQLiteStore":
        mysql = _kind(store) == "MySQLStore"
        now_sql = "UNIX_TIMESTAMP(SYSDATE(6))" if mysql else "extract(epoch FROM clock_timestamp())"
        before = time.time()
        with store.sql_connection() as conn:
            row = _query(conn, f"SELECT {now_sql}").fetchone()
        server = float(row[0])
    else:
        return "n/a: the store decides times with this host's clock"
    after = time.time()
    skew = server - (before + after) / 2
    if abs(skew) > 1.0:
        raise StoreError(
            f"the store's clock is {skew:+.3f}s from this host's; leases and retention are "
            "decided by the store's clock, so hosts with their own clock disagree: sync NTP"
        )
    return f"{skew:+.3f}s (store minus host, +/- {(after - before) / 2:.3f}s)"


def _dynamodb_ttl(store: DynamoDBRecords) -> str:
    want = str(getattr(store, "ttl_attribute", "expiration"))
    reply = store.call("describe_time_to_live", {"TableName": store.table})
    ttl = reply.get("TimeToLiveDescription", {})
    status, attribute = ttl.get("TimeToLiveStatus"), ttl.get("AttributeName")
    if status not in {"ENABLED", "ENABLING"}:
        raise StoreError(
            f"Time to Live is {status or 'DISABLED'} on table {store.table!r}: expired records "
            f"are never deleted. Enable it on {want!r} (`idempotence create-table` does)"
        )
    if attribute != want:
        raise StoreError(f"Time to Live is on {attribute!r}; this store writes {want!r}")
    return f"{status} on {want!r}"


def _schema(store: Store) -> str:
    if isinstance(store, DynamoDBRecords):
        table = store.call("describe_table", {"TableName": store.table})["Table"]
        want = [{"AttributeName": str(getattr(store, "key_attr", "id")), "KeyType": "HASH"}]
        sort = getattr(store, "sort_key_attr", None)
        if sort is not None:
            want.append({"AttributeName": sort, "KeyType": "RANGE"})
        if table.get("KeySchema") != want:
            raise StoreError(f"key schema is {table.get('KeySchema')}, the store needs {want}")
        return f"key schema {[k['AttributeName'] for k in want]}"
    if isinstance(store, SQLConnections):
        table = str(getattr(store, "table", ""))
        with store.sql_connection() as conn:
            cursor = _query(conn, f"SELECT * FROM {_quote(store, table)} WHERE 1 = 0")
            columns = tuple(d[0] for d in cursor.description)
        missing = [c for c in RECORD_COLUMNS if c not in columns]
        if missing:
            raise StoreError(f"table {table!r} lacks columns {missing}: it is not a records table")
        return f"table {table!r} has the record columns"
    return "n/a: the store has no schema"


def _query(conn: Any, sql: str) -> Any:
    """A cursor that ran ``sql`` on a DB-API connection (sqlite3/psycopg have
    ``execute`` on the connection; PyMySQL only on a cursor)."""
    if hasattr(conn, "execute"):
        return conn.execute(sql)
    cursor = conn.cursor()
    cursor.execute(sql)
    return cursor


def _quote(store: Store, table: str) -> str:
    if _kind(store) == "SQLiteStore":
        return '"' + table.replace('"', '""') + '"'
    if _kind(store) == "MySQLStore":
        return ".".join(f"`{part}`" for part in table.split("."))
    return ".".join(f'"{part}"' for part in table.split("."))


def cmd_doctor(args: argparse.Namespace) -> int:
    checks: list[dict[str, Any]] = []
    with open_store(args) as store:
        probe = f"{PROBE_NAMESPACE}#{uuid.uuid4().hex}"
        reachable = _check(checks, "reachable", lambda: _reachable(store, probe))
        if _check(checks, "schema", lambda: _schema(store)) and reachable:
            _check(checks, "write and delete", lambda: _write_delete(store, probe))
            if isinstance(store, DynamoDBRecords):
                _check(checks, "time to live", lambda: _dynamodb_ttl(store))
            else:
                checks.append({"check": "time to live", "ok": None, "detail": _retention(store)})
            _check(checks, "clock skew", lambda: _skew(store))
    ok = all(c["ok"] is not False for c in checks)
    if args.json:
        _print_json({"ok": ok, "checks": checks})
    else:
        marks = {True: "ok", False: "FAIL", None: "-"}
        for c in checks:
            print(f"{marks[c['ok']]:<5}{c['check']:<18}{c['detail']}")
        print("healthy" if ok else "problems found")
    return 0 if ok else 1


def _retention(store: Store) -> str:
    name = _kind(store)
    if name == "RedisStore":
        return "n/a: Redis expires each record's key itself"
    if name in {"SQLiteStore", "PostgresStore", "MySQLStore"}:
        return "n/a: no native expiry; run `idempotence purge --expired` or start_sweep()"
    return "n/a"


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "inspect": cmd_inspect,
    "forget": cmd_forget,
    "key": cmd_key,
    "list": cmd_list,
    "stats": cmd_stats,
    "purge": cmd_purge,
    "create-table": cmd_create_table,
    "doctor": cmd_doctor,
}
