"""examples/sqs_to_postgres: a batch delivered twice, and a batch whose first delivery
crashes mid-way, each record every payment exactly once."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.effects.conftest import PG_URL, SESSION

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sqs_to_postgres"


def load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sqs_to_postgres_app", EXAMPLE / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def schema(pg_admin: Any) -> Iterator[str]:
    """A schema of its own, so the example's plain table names do not collide."""
    name = f"sqs_example_{SESSION}_{uuid.uuid4().hex[:6]}"
    pg_admin.execute(f'CREATE SCHEMA "{name}"')
    with pg_admin.cursor() as cur:
        cur.execute(f'SET search_path TO "{name}"')
        cur.execute((EXAMPLE / "schema.sql").read_text())
        cur.execute("SET search_path TO DEFAULT")
    yield name
    pg_admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def batch(n: int = 5) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": uuid.uuid4().hex,  # differs per delivery; never in the key
                "body": json.dumps({"order_id": f"o{i}", "amount_cents": 100 * i}),
                "attributes": {"ApproximateReceiveCount": "1"},
            }
            for i in range(1, n + 1)
        ]
    }


def redeliver(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {**r, "receiptHandle": uuid.uuid4().hex, "attributes": {"ApproximateReceiveCount": "2"}}
            for r in event["Records"]
        ]
    }


def payments(pg_admin: Any, schema: str) -> list[tuple[str, int]]:
    rows = pg_admin.execute(
        f'SELECT order_id, amount_cents FROM "{schema}".payments ORDER BY order_id'
    ).fetchall()
    return [(str(o), int(a)) for o, a in rows]


EXPECTED = [(f"o{i}", 100 * i) for i in range(1, 6)]


def test_batch_delivered_twice(pg_admin: Any, schema: str) -> None:
    from psycopg_pool import ConnectionPool

    app = load_app()
    options = {"options": f"-c search_path={schema}"}
    with ConnectionPool(PG_URL, kwargs=options, min_size=1, max_size=2) as pool:
        handler = app.make_handler(pool)
        event = batch()
        assert handler(event) == {"batchItemFailures": []}
        assert handler(redeliver(event)) == {"batchItemFailures": []}
    assert payments(pg_admin, schema) == EXPECTED


CRASHING = """
import json, os, signal, sys
from psycopg_pool import ConnectionPool
sys.path.insert(0, {example!r})
import app
event = json.loads(sys.stdin.read())
original = app.insert_payment
def insert_then_die(conn, payment):
    original(conn, payment)
    if payment["order_id"] == "o3":  # the business write is in, the COMMIT is not
        os.kill(os.getpid(), signal.SIGKILL)
app.insert_payment = insert_then_die
pool = ConnectionPool({url!r}, kwargs={{"options": "-c search_path={schema}"}}, min_size=1)
app.make_handler(pool)(event)
"""


def test_crash_mid_batch_then_redelivery(pg_admin: Any, schema: str) -> None:
    from psycopg_pool import ConnectionPool

    event = batch()
    script = CRASHING.format(example=str(EXAMPLE), url=PG_URL, schema=schema)
    died = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert died.returncode == -signal.SIGKILL, died.stderr
    assert payments(pg_admin, schema) == EXPECTED[:2]  # o3 died with its transaction

    app = load_app()
    options = {"options": f"-c search_path={schema}"}
    with ConnectionPool(PG_URL, kwargs=options, min_size=1, max_size=2) as pool:
        handler = app.make_handler(pool)
        assert handler(redeliver(event)) == {"batchItemFailures": []}
        assert handler(redeliver(event)) == {"batchItemFailures": []}
    assert payments(pg_admin, schema) == EXPECTED  # o1, o2 skipped; o3-o5 done; none twice


def test_changed_body_under_the_same_message_id_is_reported(pg_admin: Any, schema: str) -> None:
    from psycopg_pool import ConnectionPool

    app = load_app()
    options = {"options": f"-c search_path={schema}"}
    with ConnectionPool(PG_URL, kwargs=options, min_size=1, max_size=2) as pool:
        handler = app.make_handler(pool)
        event = batch(1)
        handler(event)
        event["Records"][0]["body"] = json.dumps({"order_id": "o1", "amount_cents": 1})
        failed = handler(event)["batchItemFailures"]
    assert failed == [{"itemIdentifier": event["Records"][0]["messageId"]}]
    assert payments(pg_admin, schema) == [("o1", 100)]


def test_docs_show_the_tested_code() -> None:
    docs = (ROOT / "docs" / "effects.md").read_text()
    start = docs.index("```python\n", docs.index("The tested example")) + len("```python\n")
    snippet = docs[start : docs.index("```", start)]
    assert snippet.strip() in (EXAMPLE / "app.py").read_text()
