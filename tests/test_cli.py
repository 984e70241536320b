"""``idempotence inspect`` and ``idempotence forget`` against a SQLite store."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from idempotence import Idempotency, Record, Status, __version__
from idempotence.__main__ import format_record, main
from idempotence._ops import parse_duration
from idempotence.http import HTTPResponse
from idempotence.stores import store_from_url
from tests import moto_server
from tests.conftest import (
    MYSQL_URL,
    POSTGRES_URL,
    REDIS_URL,
    mysql_admin_or_unavailable,
    postgres_admin_or_unavailable,
    redis_client_or_unavailable,
)

dynamodb_endpoint = moto_server.dynamodb_endpoint  # the session fixture


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def key(url: str) -> Iterator[str]:
    """The key of one completed call in the store at ``url``."""
    idem = Idempotency(url, key="order_id")

    @idem
    def create_order(order: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": order["order_id"], "status": "created"}

    create_order({"order_id": "o-1"})
    yield create_order.key_for({"order_id": "o-1"})
    idem.store.close()


def test_inspect_prints_the_record(url: str, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--store", url, key]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line)
    assert lines["key"] == key
    assert lines["status"] == "COMPLETED"
    record = store_from_url(url).get(key)
    assert record is not None
    assert lines["fence"] == str(record.fence)
    assert lines["result"].startswith("value (")
    assert '"status": "created"' in lines["result"]
    assert "expires" in lines


def test_forget_deletes_the_record(url: str, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forget", "--store", url, key]) == 0
    assert "forgot" in capsys.readouterr().out
    assert main(["inspect", "--store", url, key]) == 1
    assert main(["forget", "--store", url, key]) == 1
    assert "no record" in capsys.readouterr().err


def test_inspect_as_a_subprocess(url: str, key: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "idempotence", "inspect", "--store", url, key],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "COMPLETED" in proc.stdout


def test_format_record_in_progress() -> None:
    record = Record("ns#k", Status.IN_PROGRESS, "fp", 3, lease_expires_at=110.0, expires_at=50.0)
    text = format_record(record, now=100.0)
    assert "IN_PROGRESS" in text
    assert "(in 10.0s)" in text
    assert "(50.0s ago)" in text
    assert "result        none" in text


def test_unknown_store_scheme_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--store", "nope://x", "k"]) == 2
    assert "unknown store URL scheme" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [[], ["inspect"], ["forget"], ["purge"], ["list", "--status", "x"], ["key"]]
)
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


# -- operator commands on every store -------------------------------------------------------
BACKENDS = ["sqlite", "redis", "postgres", "mysql", "dynamodb"]


def _backend_url(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL of ``name`` whose table/prefix does not exist yet."""
    tag = uuid.uuid4().hex[:10]
    if name == "sqlite":
        return f"sqlite:///{tmp_path / 'ops.db'}"
    if name == "redis":
        redis_client_or_unavailable(REDIS_URL).close()
        return f"{REDIS_URL}?prefix=cli-{tag}:"
    if name == "postgres":
        postgres_admin_or_unavailable(POSTGRES_URL).close()
        return f"{POSTGRES_URL}?table=cli_{tag}"
    if name == "mysql":
        mysql_admin_or_unavailable(MYSQL_URL).close()
        return f"{MYSQL_URL}?table=cli_{tag}"
    endpoint = request.getfixturevalue("dynamodb_endpoint")
    return f"dynamodb://cli-{tag}?region=us-east-1&endpoint_url={quote(endpoint, safe='')}"


def _drop(name: str, url: str) -> None:
    store: Any = store_from_url(url)
    try:
        if name == "postgres":
            with store.sql_connection() as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{store.table}"')
        elif name == "mysql":
            with store.sql_connection() as conn, conn.cursor() as cursor:
                cursor.execute(f"DROP TABLE IF EXISTS `{store.table}`")
        elif name == "dynamodb":
            with contextlib.suppress(Exception):
                store.call("delete_table", {"TableName": store.table})
        elif name == "redis":
            store.purge(expired=False)
    finally:
        store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(name, url)`` of a store whose table does not exist yet (created by the test)."""
    name = request.param
    url = _backend_url(name, request, tmp_path)
    yield name, url
    _drop(name, url)


@pytest.fixture
def ready(backend: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """A backend after ``idempotence create-table``."""
    assert main(["create-table", "--store", backend[1]]) == 0
    capsys.readouterr()
    return backend


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def _exists(name: str, url: str) -> bool:
    """Whether the store's file / table exists (checked without the store)."""
    if name == "sqlite":
        return Path(url.removeprefix("sqlite:///")).exists()
    if name == "postgres":
        admin = postgres_admin_or_unavailable(POSTGRES_URL)
        table = url.rpartition("table=")[2]
        found = admin.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        admin.close()
        return found != (None,)
    if name == "mysql":
        admin = mysql_admin_or_unavailable(MYSQL_URL)
        with admin.cursor() as cursor:
            cursor.execute("SHOW TABLES LIKE %s", (url.rpartition("table=")[2],))
            rows = cursor.fetchall()
        admin.close()
        return bool(rows)
    store: Any = store_from_url(url)
    try:  # ListTables pages by 100: with the whole suite's tables the first page may miss it
        args: dict[str, Any] = {}
        while True:
            page = store.call("list_tables", args)
            if store.table in page["TableNames"]:
                return True
            if "LastEvaluatedTableName" not in page:
                return False
            args = {"ExclusiveStartTableName": page["LastEvaluatedTableName"]}
    finally:
        store.close()


@pytest.mark.parametrize("name", ["sqlite", "postgres", "mysql", "dynamodb"])
def test_reads_never_create_the_table(
    name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = _backend_url(name, request, tmp_path)
    try:
        for argv in (
            ["inspect", "k#1"],
            ["forget", "k#1"],
            ["list"],
            ["stats"],
            ["purge", "--expired", "--dry-run"],
            ["purge", "--expired"],
        ):
            assert main([*argv, "--store", url]) == 2, argv
            err = capsys.readouterr().err
            assert "not" in err, (argv, err)
            assert "exist" in err or "found" in err, (argv, err)
        assert main(["doctor", "--store", url, "--json"]) == 1
        report = _json(capsys)
        assert report["ok"] is False
        assert report["checks"][0]["check"] == "reachable"
        assert report["checks"][0]["ok"] is False
        assert not _exists(name, url)
        assert main(["create-table", "--store", url]) == 0
        assert _exists(name, url)
    finally:
        _drop(name, url)


def test_store_defaults_to_the_environment(
    ready: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IDEMPOTENCE_STORE", ready[1])
    assert main(["stats", "--json"]) == 0
    assert _json(capsys)["total"] == 0
    monkeypatch.delenv("IDEMPOTENCE_STORE")
    assert main(["stats"]) == 2
    assert "IDEMPOTENCE_STORE" in capsys.readouterr().err


def _seed(url: str) -> dict[str, str]:
    """A completed function call, an HTTP response, an in-progress claim and an expired
    record; their keys by role."""
    idem = Idempotency(url, key="order_id")

    @idem(namespace="orders.create")
    def create_order(order: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": order["order_id"], "lines": (1, 2)}

    create_order({"order_id": "o-1"})
    store = idem.store
    http = HTTPResponse(201, [("content-type", "application/json")], b'{"id": 7}')
    claim = store.claim("http#abc", "fp", lease=30.0, ttl=3600.0)
    assert store.complete("http#abc", claim.record.fence, http.encode(), ttl=3600.0)
    assert store.claim("jobs#running", "fp", lease=300.0, ttl=3600.0).acquired
    if url.startswith("redis"):
        # Redis expires a record's key itself about a second after its lease: write one it
        # has not removed yet (as it is between the end of retention and the key's TTL).
        client = redis_client_or_unavailable(url.partition("?")[0])
        past = repr(time.time() - 10)
        fence = str(int(time.time() * 1000) - 5000)
        fields = {"status": "IN_PROGRESS", "fingerprint": "fp", "fence": fence}
        fields.update(lease_expires_at=past, expires_at=past)
        client.hset(url.rpartition("prefix=")[2] + "jobs#gone", mapping=fields)
        client.close()
    else:
        gone = store.claim("jobs#gone", "fp", lease=0.5, ttl=0.5)
        assert store.release("jobs#gone", gone.record.fence)
        time.sleep(0.6)
    keys = {
        "function": create_order.key_for({"order_id": "o-1"}),
        "http": "http#abc",
        "running": "jobs#running",
        "gone": "jobs#gone",
    }
    store.close()
    return keys


def test_inspect_json_function_and_http_records(
    ready: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = ready
    keys = _seed(url)
    assert main(["inspect", "--store", url, "--json", keys["function"]]) == 0
    record = _json(capsys)
    assert record["status"] == "COMPLETED"
    assert record["namespace"] == "orders.create"
    assert record["result"]["kind"] == "value"
    # The stored JSON, tags kept: no class rebuilt, no tuple made.
    assert record["result"]["json"] == {"order_id": "o-1", "lines": {"$tuple": [1, 2]}}
    for field in ("claimed_at", "lease_expires_at", "expires_at"):
        assert dt.datetime.fromisoformat(record[field]).tzinfo is not None
    assert main(["inspect", "--store", url, "--json", keys["http"]]) == 0
    result = _json(capsys)["result"]
    assert result["kind"] == "http"
    assert result["status"] == 201
    assert result["headers"] == [["content-type", "application/json"]]
    assert result["body_bytes"] == 9
    assert result["body_preview"] == '{"id": 7}'
    assert main(["inspect", "--store", url, keys["http"]]) == 0
    assert "HTTP 201" in capsys.readouterr().out
    if name == "redis":  # the raw Redis key, with the store's prefix, is accepted too
        prefix = url.rpartition("prefix=")[2]
        assert main(["inspect", "--store", url, "--json", prefix + keys["running"]]) == 0
        assert _json(capsys)["key"] == keys["running"]
    assert main(["inspect", "--store", url, "--json", keys["running"]]) == 0
    running = _json(capsys)
    assert running["status"] == "IN_PROGRESS"
    assert running["result"] == {"kind": "none"}


def test_list_filters(ready: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    _name, url = ready
    keys = _seed(url)

    def listed(*argv: str) -> set[str]:
        assert main(["list", "--store", url, "--json", *argv]) == 0
        out = _json(capsys)
        assert out["count"] == len(out["records"])
        return {r["key"] for r in out["records"]}

    everything = set(keys.values())
    assert listed() == everything
    assert listed("--namespace", "jobs") == {keys["running"], keys["gone"]}
    assert listed("--status", "completed") == {keys["function"], keys["http"]}
    assert listed("--namespace", "jobs", "--status", "in_progress") == {
        keys["running"],
        keys["gone"],
    }
    assert listed("--expired") == {keys["gone"]}
    assert listed("--older-than", "1h") == set()
    assert listed("--older-than", "0") == everything
    assert len(listed("--limit", "2")) == 2
    assert main(["list", "--store", url]) == 0
    text = capsys.readouterr().out
    assert "(expired)" in text
    assert "4 record(s)" in text


def test_stats(ready: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    _name, url = ready
    keys = _seed(url)
    assert main(["stats", "--store", url, "--json"]) == 0
    stats = _json(capsys)
    assert stats["total"] == 4
    assert stats["by_status"] == {"COMPLETED": 2, "IN_PROGRESS": 2}
    assert stats["by_namespace"] == {"http": 1, "jobs": 2, "orders.create": 1}
    assert stats["expired"] == 1
    assert stats["oldest_in_progress_key"] == keys["running"]
    assert dt.datetime.fromisoformat(stats["oldest_in_progress"]).tzinfo is not None
    assert main(["stats", "--store", url]) == 0
    assert "orders.create" in capsys.readouterr().out


def test_purge(ready: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    _name, url = ready
    keys = _seed(url)

    def count() -> int:
        assert main(["stats", "--store", url, "--json"]) == 0
        return int(_json(capsys)["total"])

    assert main(["purge", "--store", url, "--json", "--namespace", "jobs", "--dry-run"]) == 0
    assert _json(capsys) == {"dry_run": True, "would_delete": 2}
    assert main(["purge", "--store", url, "--json", "--expired", "--dry-run"]) == 0
    assert _json(capsys) == {"dry_run": True, "would_delete": 1}
    assert count() == 4  # a dry run deletes nothing
    # A namespace purge deletes records in use: refused without --yes (stdin is no TTY).
    assert main(["purge", "--store", url, "--namespace", "orders.create"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert count() == 4
    assert main(["purge", "--store", url, "--json", "--expired"]) == 0
    assert _json(capsys) == {"dry_run": False, "deleted": 1}
    assert main(["purge", "--store", url, "--json", "--namespace", "orders.create", "--yes"]) == 0
    assert _json(capsys) == {"dry_run": False, "deleted": 1}
    assert main(["purge", "--store", url, "--json", "--key", keys["http"]]) == 0
    assert _json(capsys) == {"dry_run": False, "deleted": 1}
    assert main(["purge", "--store", url, "--key", keys["running"], "--batch-size", "1"]) == 0
    assert "deleted 1 record(s)" in capsys.readouterr().out
    assert count() == 0


def test_doctor_on_a_healthy_store(
    ready: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    name, url = ready
    assert main(["doctor", "--store", url, "--json"]) == 0
    report = _json(capsys)
    assert report["ok"] is True, report
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"reachable", "schema", "write and delete", "time to live", "clock skew"}
    assert checks["write and delete"]["ok"] is True
    if name == "dynamodb":
        assert checks["time to live"]["ok"] is True
        assert "expiration" in checks["time to live"]["detail"]
    if name in ("redis", "postgres", "mysql"):
        assert checks["clock skew"]["ok"] is True
        assert checks["clock skew"]["detail"].endswith("s)")
    else:
        assert checks["clock skew"]["ok"] is None
    assert main(["stats", "--store", url, "--json"]) == 0
    assert _json(capsys)["total"] == 0  # the probe key was deleted
    assert main(["doctor", "--store", url]) == 0
    assert "healthy" in capsys.readouterr().out


def test_doctor_finds_a_dynamodb_table_without_ttl(
    dynamodb_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    table = f"cli-nottl-{uuid.uuid4().hex[:8]}"
    url = f"dynamodb://{table}?region=us-east-1&endpoint_url={quote(dynamodb_endpoint, safe='')}"
    store: Any = store_from_url(url)
    store.call(
        "create_table",
        {
            "TableName": table,
            "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
            "BillingMode": "PAY_PER_REQUEST",
        },
    )
    try:
        assert main(["doctor", "--store", url, "--json"]) == 1
        report = _json(capsys)
        checks = {c["check"]: c for c in report["checks"]}
        assert report["ok"] is False
        assert checks["write and delete"]["ok"] is True
        assert checks["time to live"]["ok"] is False
        assert "expiration" in checks["time to live"]["detail"]
        # create-table on the existing table enables TTL; then the doctor is happy.
        assert main(["create-table", "--store", url, "--json"]) == 0
        assert _json(capsys)["created"] is False
        assert main(["doctor", "--store", url, "--json"]) == 0
        assert _json(capsys)["ok"] is True
    finally:
        store.call("delete_table", {"TableName": table})
        store.close()


def test_doctor_finds_a_table_that_is_not_a_records_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE idempotency (key TEXT PRIMARY KEY, value TEXT)")
    assert main(["doctor", "--store", f"sqlite:///{path}", "--json"]) == 1
    checks = {c["check"]: c for c in _json(capsys)["checks"]}
    assert checks["schema"]["ok"] is False
    assert "status" in checks["schema"]["detail"]


def test_key_of_a_function_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cli_app_mod.py").write_text(
        "from idempotence import Idempotency\n"
        "idem = Idempotency('memory://', key='order_id')\n"
        "@idem\n"
        "def charge(order):\n"
        "    return order\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    payload = '{"order_id": "o-1", "amount": 5}'
    assert main(["key", "--json", "--function", "cli_app_mod:charge", "--payload", payload]) == 0
    out = _json(capsys)
    import cli_app_mod

    order = {"order_id": "o-1", "amount": 5}
    assert out == {
        "key": cli_app_mod.charge.key_for(order),
        "fingerprint": cli_app_mod.charge.fingerprint_for(order),
    }
    assert main(["key", "--function", "cli_app_mod:nope", "--payload", "{}"]) == 2
    assert main(["key", "--function", "cli_app_mod", "--payload", "{}"]) == 2
    assert main(["key", "--function", "cli_app_mod:charge", "--payload", "{bad"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_key_of_an_http_request(capsys: pytest.CaptureFixture[str]) -> None:
    from idempotence.http import HTTPIdempotency, HTTPRequest

    argv = ["key", "--json", "--header", '"k-1"', "--method", "post", "--path", "/orders?x=1"]
    assert main([*argv, "--body", '{"a": 1}', "--content-type", "application/json"]) == 0
    out = _json(capsys)
    request = HTTPRequest(
        "POST", "/orders", "x=1", [("content-type", "application/json")], b'{"a": 1}'
    )
    engine = HTTPIdempotency(Idempotency("memory://"))
    assert out == {
        "key": engine.key_for(request, "k-1"),
        "fingerprint": engine.fingerprint_for(request),
    }
    assert main(["key", "--json", "--header", "k-1", "--scope", "tenant-9"]) == 0
    scoped = HTTPIdempotency(Idempotency("memory://"), scope=lambda r: "tenant-9")
    assert _json(capsys)["key"] == scoped.key_for(HTTPRequest("POST", "/", "", [], b""), "k-1")
    assert main(["key", "--header", "bad,key"]) == 2


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "15m", "2h", "7d", "1w", "0.5")] == [
        90,
        30,
        900,
        7200,
        604800,
        604800,
        0.5,
    ]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration("soon")


def test_purge_shows_a_progress_bar_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("rich")
    url = f"sqlite:///{tmp_path / 'bar.db'}"
    store = store_from_url(url)
    for i in range(30):
        store.claim(f"bulk#{i}", "fp", lease=30.0, ttl=60.0)
    store.close()
    seen: list[int] = []
    from idempotence.stores import SQLiteStore

    purge = SQLiteStore.purge

    def spy(self: Any, **kwargs: Any) -> int:
        progress = kwargs["progress"]
        assert progress is not None  # the bar advances per batch

        def advance(n: int) -> None:
            seen.append(n)
            progress(n)

        return purge(self, **{**kwargs, "progress": advance})

    monkeypatch.setattr(SQLiteStore, "purge", spy)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["purge", "--store", url, "--namespace", "bulk", "--yes", "--batch-size", "10"]
    assert main(argv) == 0
    assert seen == [10, 10, 10]
    assert "deleted 30 record(s)" in capsys.readouterr().out
