"""The demo: the same at-least-once schedule without and with idempotency."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rich")

from idempotence import __main__ as cli
from idempotence._demo import DemoResult, RunStats, build_schedule, run_demo

SEED, ORDERS = 8, 25  # a schedule with every kind of delivery (asserted below)
ROOT = Path(__file__).resolve().parents[1]


def test_schedule_is_seeded_and_covers_every_case() -> None:
    schedule = build_schedule(SEED, ORDERS)
    assert schedule == build_schedule(SEED, ORDERS)
    assert schedule != build_schedule(SEED + 1, ORDERS)
    assert len(schedule) == 2 * ORDERS
    deliveries = [d for m in schedule for d in m.deliveries]
    assert any(d.crash == "before-commit" for d in deliveries)
    assert any(d.crash == "after-commit" for d in deliveries)
    assert any(d.concurrent for d in deliveries)
    assert any(d.payload != m.deliveries[0].payload for m in schedule for d in m.deliveries)


def _check_numbers(result: DemoResult) -> None:
    plain, idem = result.plain, result.idempotent
    messages = 2 * ORDERS
    assert plain.messages == idem.messages == messages

    # Without idempotency every delivery runs the function: duplicates.
    assert plain.body_runs == plain.deliveries
    assert plain.side_effects == plain.deliveries - plain.crashes_before_commit
    assert plain.duplicate_orders > 0
    assert plain.duplicate_charges > 0
    assert plain.replays == plain.in_progress == plain.key_reuse == 0

    # With idempotency: each message has its effect once, except the reported re-runs
    # after a worker was killed between its commit and the recorded result.
    assert result.ok
    assert idem.duplicate_orders == idem.duplicate_charges == 0
    assert idem.lease_lost == 0
    assert idem.side_effects == messages + idem.crash_window_reexecutions
    assert idem.crash_window_reexecutions == idem.crashes_after_commit
    assert idem.body_runs == messages + idem.crashes  # each killed worker's message re-ran
    assert idem.crashes_after_commit > 0
    assert idem.replays > 0
    assert idem.key_reuse > 0
    assert idem.in_progress > 0


def test_demo_in_process_on_sqlite() -> None:
    result = run_demo(seed=SEED, orders=ORDERS, progress=False)
    assert result.store.startswith("sqlite:///")
    _check_numbers(result)


def test_demo_on_a_store_url() -> None:
    _check_numbers(run_demo("memory://", seed=SEED, orders=ORDERS, progress=False))


def test_demo_as_a_subprocess() -> None:
    env = {**os.environ, "COLUMNS": "120"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "idempotence",
            "demo",
            "--check",
            "--seed",
            str(SEED),
            "--orders",
            str(ORDERS),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "duplicate charges" in proc.stdout
    assert "OK: with idempotency no side effect was repeated" in proc.stdout


def _result(duplicates: int) -> DemoResult:
    return DemoResult(
        seed=1,
        orders=1,
        store="memory://",
        plain=RunStats("without idempotency", messages=2, duplicate_orders=3),
        idempotent=RunStats("with idempotency", messages=2, duplicate_charges=duplicates),
    )


@pytest.mark.parametrize(
    ("duplicates", "check", "status"), [(0, True, 0), (1, True, 1), (1, False, 0)]
)
def test_check_fails_only_on_idempotent_duplicates(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    duplicates: int,
    check: bool,
    status: int,
) -> None:
    monkeypatch.setattr("idempotence._demo.run_demo", lambda *a, **k: _result(duplicates))
    argv = ["demo", "--orders", "1"] + (["--check"] if check else [])
    assert cli.main(argv) == status
    out = capsys.readouterr().out
    assert ("FAIL" in out) == bool(duplicates)


def test_demo_without_rich_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.delitem(sys.modules, "idempotence._demo")
    assert cli.main(["demo"]) == 2
    assert "pip install 'idempotence[cli]'" in capsys.readouterr().err


def test_orders_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", "--orders", "0"])
    assert exc.value.code == 2
    assert "at least 1" in capsys.readouterr().err
