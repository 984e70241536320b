"""The ``idempotence`` command line.

``idempotence demo [--store URL] [--seed N] [--orders N] [--check]``
    Runs an order service under at-least-once delivery (duplicates, concurrent copies,
    killed workers) without and with idempotency, and prints a comparison table (needs
    ``rich``: ``pip install 'idempotence[cli]'``). Exit status 0; with ``--check``, 1 if the
    record-based run repeated a side effect outside the crash window or the transactional
    run repeated any.
``idempotence inspect --store URL KEY``
    Prints the record of ``KEY`` (a full store key, e.g. from ``fn.key_for(...)``). Exit
    status 1 if there is none.
``idempotence forget --store URL KEY``
    Deletes the record of ``KEY`` so the next call runs again. Exit status 1 if there was
    none.

Store errors and a missing optional dependency print a message and exit with status 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Sequence

from . import __version__
from ._errors import IdempotencyError
from ._record import Record
from .stores._registry import store_from_url

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

    for name, text in (
        ("inspect", "print the record of a key"),
        ("forget", "delete the record of a key (the next call runs again)"),
    ):
        command = commands.add_parser(name, help=text, description=text.capitalize() + ".")
        command.add_argument(
            "--store", metavar="URL", required=True, help="store URL, e.g. sqlite:///app.db"
        )
        command.add_argument("key", metavar="KEY", help="the full key, e.g. from fn.key_for()")
    return parser


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


def _record_command(args: argparse.Namespace) -> int:
    store = store_from_url(args.store)
    try:
        if args.command == "inspect":
            record = store.get(args.key)
            if record is None:
                print(f"no record for {args.key!r}", file=sys.stderr)
                return 1
            print(format_record(record))
            return 0
        if store.delete(args.key):
            print(f"forgot {args.key!r}")
            return 0
        print(f"no record for {args.key!r}", file=sys.stderr)
        return 1
    finally:
        store.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit
    status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        return _record_command(args)
    except (IdempotencyError, ValueError) as exc:
        print(f"idempotence: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
