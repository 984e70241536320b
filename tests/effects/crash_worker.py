"""Run one idempotent transaction and die at a chosen point (used by the crash tests).

``python -m tests.effects.crash_worker <sqlite|postgres|mysql> <db> <records table> <business
table> <key> <before-commit|after-commit|none>``

``before-commit`` kills the process with SIGKILL after the business write and the record's
completion were sent, right before ``COMMIT``; ``after-commit`` exits right after the
commit, before the caller could learn the outcome.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from typing import Any

from idempotence.effects import TransactionalIdempotency, _sql_records


def main() -> None:
    dialect, db, records, business, key, crash = sys.argv[1:7]
    if crash == "before-commit":
        complete = _sql_records.complete_steps

        def complete_then_die(*args: Any, **kwargs: Any) -> Any:
            yield from complete(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        _sql_records.complete_steps = complete_then_die
    if dialect == "sqlite":
        conn: Any = sqlite3.connect(db, timeout=30)
        insert = f'INSERT INTO "{business}" (key, amount) VALUES (?, ?)'
    elif dialect == "mysql":
        import pymysql

        from idempotence.stores._mysql import MySQLStore

        conn = pymysql.connect(**MySQLStore.parse_url(db)["connect"])
        insert = f"INSERT INTO `{business}` (`key`, amount) VALUES (%s, %s)"
    else:
        import psycopg

        conn = psycopg.connect(db)
        insert = f'INSERT INTO "{business}" (key, amount) VALUES (%s, %s)'
    txi = TransactionalIdempotency(table=records)
    with txi.transaction(conn, key, payload={"amount": 42}) as tx:
        if not tx.replayed:
            if dialect == "mysql":
                with conn.cursor() as cur:
                    cur.execute(insert, (key, 42))
            else:
                conn.execute(insert, (key, 42))
            tx.set_result({"charged": 42})
    if crash == "after-commit":
        os._exit(3)
    print("replayed" if tx.replayed else "ran", flush=True)


if __name__ == "__main__":
    main()
