"""``idempotence inspect`` and ``idempotence forget`` against a SQLite store."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempotence import Idempotency, Record, Status, __version__
from idempotence.__main__ import format_record, main
from idempotence.stores import store_from_url


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
    assert lines["result"].endswith(" bytes")
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


@pytest.mark.parametrize("argv", [[], ["inspect", "k"], ["forget"]])
def test_usage_errors(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out
