"""The ``idempotence`` command line.

``idempotence demo [--store URL] [--seed N] [--orders N] [--check]``
    Runs an order service under at-least-once delivery (duplicates, concurrent copies,
    killed workers) without and with idempotency, and prints a comparison table (needs
    ``rich``: ``pip install 'idempotence[cli]'``). Exit status 0; with ``--check``, 1 if the
    record-based run repeated a side effect outside the crash window or the transactional
    run repeated any.
``idempotence inspect|forget KEY``, ``key``, ``list``, ``stats``, ``purge``,
``create-table``, ``doctor``
    Operator commands on a store (``--store URL``, default ``$IDEMPOTENCE_STORE``;
    ``--json`` for machines), implemented in :mod:`idempotence._ops` and documented in
    docs/cli.md. Reads never create a file or table.

Store errors, usage errors and a missing optional dependency print a message and exit with
status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from ._errors import IdempotencyError
from ._ops import COMMANDS, ENV_STORE, UsageError, parse_duration
from ._record import Record

__all__ = ["main"]

_NEEDS_RICH = "the demo needs rich: pip install 'idempotence[cli]'"


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idempotence",
        description="Make functions and at-least-once consumers safe to retry.",
    )
    parser.add_argument("--version", action="version", version=f"idempotence {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="duplicated, concurrent and crashed deliveries, without and with idempotency",
        description="Run an order service under at-least-once delivery three times (plain "
        "functions, record-based idempotency, transactional idempotency) and compare the "
        "side effects.",
    )
    demo.add_argument("--store", metavar="URL", help="store URL (default: a temporary SQLite file)")
    demo.add_argument("--seed", type=int, default=7, help="schedule seed (default: 7)")
    demo.add_argument(
        "--orders", type=_positive, default=200, help="number of orders (default: 200)"
    )
    demo.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if the record-based run repeated a side effect outside the crash window, "
        "or the transactional run repeated any",
    )

    _operator_commands(commands)
    return parser


def _store_options(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--store",
        metavar="URL",
        help=f"store URL, e.g. sqlite:///app.db (default: ${ENV_STORE})",
    )
    command.add_argument("--json", action="store_true", help="print JSON for machines")


def _operator_commands(commands: Any) -> None:
    def add(name: str, text: str, description: str) -> argparse.ArgumentParser:
        command: argparse.ArgumentParser = commands.add_parser(
            name, help=text, description=description
        )
        _store_options(command)
        return command

    full_key = "the key, from fn.key_for() or `idempotence key` (a raw Redis key is accepted)"
    inspect = add(
        "inspect",
        "print the record of a key",
        "Print the record of a key: status, times, fence and the stored result (as stored: "
        "JSON without rebuilding classes; an HTTP response as status, headers and body "
        "summary).",
    )
    inspect.add_argument("key", metavar="KEY", help=full_key)
    forget = add(
        "forget",
        "delete the record of a key (the next call runs again)",
        "Delete the record of a key (the next call runs again).",
    )
    forget.add_argument("key", metavar="KEY", help=full_key)

    key = commands.add_parser(
        "key",
        help="print the key a function call or an HTTP request would use",
        description="Print the key and fingerprint a call of a decorated function, or a "
        "request through the HTTP middleware, would use. Touches no store.",
    )
    key.add_argument("--json", action="store_true", help="print JSON for machines")
    what = key.add_mutually_exclusive_group(required=True)
    what.add_argument("--function", metavar="MOD:FN", help="a decorated function to import")
    what.add_argument("--header", metavar="VALUE", help="an Idempotency-Key header value")
    key.add_argument("--payload", metavar="JSON", help="the call's first argument, as JSON")
    key.add_argument("--kwargs", metavar="JSON", help="the call's keyword arguments (object)")
    key.add_argument("--method", default="POST", help="HTTP method (default: POST)")
    key.add_argument("--path", default="/", help="HTTP path and query (default: /)")
    key.add_argument("--body", help="HTTP request body (for the fingerprint)")
    key.add_argument("--content-type", help="HTTP Content-Type (for the fingerprint)")
    key.add_argument("--scope", help="the caller scope the middleware's scope= returns")
    key.add_argument("--namespace", default="http", help="HTTP key namespace (default: http)")

    listing = add(
        "list",
        "list records, filtered",
        "List the stored records (expired ones still stored included, marked), filtered.",
    )
    _filters(listing)
    listing.add_argument(
        "--status", choices=("in_progress", "completed"), help="only records with this status"
    )
    listing.add_argument(
        "--older-than",
        metavar="DURATION",
        type=parse_duration,
        help="only records first claimed longer ago than this (90, 30s, 15m, 2h, 7d)",
    )
    listing.add_argument("--limit", metavar="N", type=_positive, help="at most N records")

    add(
        "stats",
        "count records by status and namespace",
        "Count records by status and namespace, expired records still stored, and show "
        "the oldest in-progress record.",
    )

    purge = add(
        "purge",
        "delete records in batches",
        "Delete records in batches (one round trip per batch). --expired is safe at any "
        "time; --namespace deletes records still in use and asks for confirmation.",
    )
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--expired", action="store_true", help="records whose retention and lease have ended"
    )
    which.add_argument("--namespace", metavar="NS", help="every record of a namespace")
    which.add_argument("--key", metavar="KEY", help="one record")
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    purge.add_argument("--yes", action="store_true", help="do not ask before purging a namespace")
    purge.add_argument(
        "--batch-size",
        metavar="N",
        type=_positive,
        default=1000,
        help="records per round trip (default: 1000; DynamoDB: 25)",
    )

    add(
        "create-table",
        "create the store's table (SQLite file, SQL table, DynamoDB table with TTL)",
        "Create what the store needs, with its own DDL: the SQLite file and table, the "
        "PostgreSQL/MySQL table, or the DynamoDB table with Time to Live on 'expiration'. "
        "Idempotent.",
    )
    add(
        "doctor",
        "check that the store is usable",
        "Check the store: reachable, table schema, write and delete of a probe key "
        "(namespace idempotence.doctor), DynamoDB Time to Live, clock skew with this host. "
        "Exit status 1 if a check fails.",
    )


def _filters(command: argparse.ArgumentParser) -> None:
    command.add_argument("--namespace", metavar="NS", help="only records of this namespace")
    command.add_argument(
        "--expired", action="store_true", help="only records whose retention and lease ended"
    )


def _when(at: float, now: float) -> str:
    stamp = dt.datetime.fromtimestamp(at, dt.timezone.utc).isoformat(timespec="seconds")
    delta = at - now
    relative = f"in {delta:.1f}s" if delta >= 0 else f"{-delta:.1f}s ago"
    return f"{stamp} ({relative})"


def format_record(record: Record, now: float | None = None) -> str:
    """``record`` as aligned ``name  value`` lines (times in UTC, relative to ``now``)."""
    now = time.time() if now is None else now
    result = "none" if record.result is None else f"{len(record.result)} bytes"
    rows = [
        ("key", record.key),
        ("status", record.status.value),
        ("fingerprint", record.fingerprint),
        ("fence", str(record.fence)),
        ("lease expires", _when(record.lease_expires_at, now)),
        ("expires", _when(record.expires_at, now)),
        ("result", result),
    ]
    return "\n".join(f"{name:<14}{value}" for name, value in rows)


def _demo(args: argparse.Namespace) -> int:
    try:
        from rich.console import Console

        from ._demo import render, run_demo
    except ImportError as exc:
        if (exc.name or "").split(".")[0] != "rich":
            raise
        print(f"idempotence: {_NEEDS_RICH}", file=sys.stderr)
        return 2
    result = run_demo(args.store, seed=args.seed, orders=args.orders)
    console = Console()
    console.print(render(result))
    b, t = result.idempotent, result.transactional
    if result.ok:
        console.print(
            f"[green]OK[/]: with idempotency no side effect was repeated outside the crash "
            f"window ({b.crash_window_reexecutions} crash-window re-execution(s) reported); "
            "transactional: no side effect was repeated at all."
        )
    else:
        console.print(
            f"[red]FAIL[/]: the record-based run repeated {b.duplicates} side effect(s) "
            f"outside the crash window; the transactional run repeated {t.repeated}."
        )
    return 1 if args.check and not result.ok else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit
    status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        return COMMANDS[args.command](args)
    except (IdempotencyError, ValueError, UsageError) as exc:
        print(f"idempotence: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
