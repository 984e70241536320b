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
    # A post-write kill with no concurrent copy: its worker always runs and is killed.
    assert any(
        m.deliveries[0].crash == "after-commit" and not any(d.concurrent for d in m.deliveries)
        for m in schedule
    )
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

    # Transactional: the ledger rows read back from its database show each message's effect
    # exactly once, crash window included, although workers were killed after their write.
    tx = result.transactional
    assert tx.messages == messages
    # Killed after the write: deterministic (this schedule's post-write kills have no
    # concurrent copy that could run first; its pre-write kills do, so they may not happen).
    assert tx.crashes_after_commit > 0
    assert tx.side_effects == messages
    assert tx.duplicate_orders == tx.duplicate_charges == tx.crash_window_reexecutions == 0
    assert tx.repeated == 0
    assert tx.body_runs == messages + tx.crashes  # each killed worker's message re-ran once
    assert tx.replays > 0
    assert tx.key_reuse > 0
    assert tx.lease_lost == 0
    # The record-based run on the same schedule did repeat effects in the crash window.
    assert idem.repeated == idem.crash_window_reexecutions > 0


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
    assert "repeated charges: duplicates" in proc.stdout
    assert "transactional" in proc.stdout
    assert "OK: with idempotency no side effect was repeated" in proc.stdout
    total = next(line for line in proc.stdout.splitlines() if "repeated side effects" in line)
    cells = [cell.strip() for cell in total.strip("│ ").split("│")]
    assert cells[-1] == "0"  # the transactional column
    assert int(cells[-2]) > 0  # record-based: the crash window


def _result(duplicates: int, tx_crash_window: int = 0) -> DemoResult:
    return DemoResult(
        seed=1,
        orders=1,
        store="memory://",
        plain=RunStats("without idempotency", messages=2, duplicate_orders=3),
        idempotent=RunStats(
            "with idempotency",
            messages=2,
            duplicate_charges=duplicates,
            crash_window_reexecutions=1,
        ),
        transactional=RunStats(
            "transactional", messages=2, crash_window_reexecutions=tx_crash_window
        ),
    )


@pytest.mark.parametrize(
    ("duplicates", "tx_crash_window", "check", "status"),
    [(0, 0, True, 0), (1, 0, True, 1), (1, 0, False, 0), (0, 1, True, 1), (0, 1, False, 0)],
)
def test_check_fails_on_record_duplicates_or_any_transactional_repeat(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    duplicates: int,
    tx_crash_window: int,
    check: bool,
    status: int,
) -> None:
    """The record-based run may repeat in the crash window (reported); the transactional one
    may not repeat at all."""
    result = _result(duplicates, tx_crash_window)
    monkeypatch.setattr("idempotence._demo.run_demo", lambda *a, **k: result)
    argv = ["demo", "--orders", "1"] + (["--check"] if check else [])
    assert cli.main(argv) == status
    out = capsys.readouterr().out
    assert ("FAIL" in out) == bool(duplicates or tx_crash_window)


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
