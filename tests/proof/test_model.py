"""Model check of the protocol (``model/idempotency.pml``) with SPIN.

The real model must verify exhaustively with no error; every deliberately broken variant
must be caught (so the properties are not vacuous). Needs ``spin`` (Debian package
``spin``) and a C compiler; without them the test skips locally and fails in CI.

The last test replays, on the real SQLiteStore, the fence reset the ``PURGE`` variant
finds (purging a released row used to restart its fence at 1, and a zombie's stale fence
owned the key again); the stores now do what ``-DPURGE -DCLOCK_FENCE`` verifies.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from idempotence.stores import SQLiteStore
from idempotence.testing import ManualClock
from tests.conftest import backend_unavailable

MODEL = Path(__file__).resolve().parents[2] / "model" / "idempotency.pml"


@dataclass(frozen=True)
class Outcome:
    errors: int
    states: int
    depth: int
    violated: str
    output: str


def verify(defines: list[str], workdir: Path) -> Outcome:
    """``spin -a`` the model with ``defines``, compile pan, search exhaustively."""
    spin, cc = shutil.which("spin"), shutil.which("gcc") or shutil.which("cc")
    if spin is None:
        backend_unavailable("spin not installed (apt-get install -y spin)")
    if cc is None:
        backend_unavailable("no C compiler (apt-get install -y gcc)")
    workdir.mkdir(parents=True, exist_ok=True)
    subprocess.run([spin, *defines, "-a", str(MODEL)], cwd=workdir, check=True, timeout=60)
    subprocess.run(
        [cc, "-O2", "-DSAFETY", "-o", "pan", "pan.c"],
        cwd=workdir,
        check=True,
        timeout=120,
    )
    run = subprocess.run(
        ["./pan", "-m100000"], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    out = run.stdout + run.stderr
    errors = re.search(r"errors: (\d+)", out)
    states = re.search(r"(\d+) states, stored", out)
    depth = re.search(r"depth reached (\d+)", out)
    assert errors, out
    assert states, out
    assert depth, out
    assert "max search depth too small" not in out, out  # the search must be exhaustive
    violated = re.search(r"assertion violated (.*?) \(at depth", out)
    return Outcome(
        int(errors.group(1)),
        int(states.group(1)),
        int(depth.group(1)),
        violated.group(1) if violated else "",
        out,
    )


@pytest.mark.parametrize(
    "defines",
    [[], ["-DPURGE", "-DCLOCK_FENCE"]],
    ids=["protocol", "purge-with-clock-fences"],
)
def test_protocol_model_verifies(defines: list[str], tmp_path: Path) -> None:
    outcome = verify(defines, tmp_path)
    assert outcome.errors == 0, outcome.output
    assert outcome.states > 100_000, outcome.output  # the search really explored the model
    assert "invalid end states\t+" in outcome.output  # deadlocks were searched for too


@pytest.mark.parametrize(
    ("defines", "property_"),
    [
        (["-DUNFENCED"], "holder==me"),  # (c) a zombie completes over its successor
        (["-DRACY_CLAIM"], ""),  # (a)/(b): two owners, or a kept result replaced
        (["-DRESET_FENCE"], "holder==me"),  # (c) ABA: a deleted record restarts at fence 1
        (["-DPURGE"], "holder==me"),  # (c) the same through purge()/TTL deletion
    ],
    ids=["unfenced", "racy-claim", "reset-fence", "purge"],
)
def test_broken_variant_is_caught(defines: list[str], property_: str, tmp_path: Path) -> None:
    outcome = verify(defines, tmp_path)
    assert outcome.errors > 0, outcome.output
    assert outcome.violated, outcome.output
    assert property_ in outcome.violated.replace(" ", ""), outcome.output


def test_purge_never_revives_a_stale_fence(tmp_path: Path) -> None:
    """Fixed as the model's ``-DPURGE -DCLOCK_FENCE`` variant verifies: a record created
    from nothing takes its fence from the clock (ms), so purging a row never lets a new
    record hand out a fence a zombie still holds."""
    clock = ManualClock()
    store = SQLiteStore(tmp_path / "p.db", clock=clock)
    zombie = store.claim("k", "fp", lease=60, ttl=3600).record.fence  # then pauses
    clock.advance(61)
    successor = store.claim("k", "fp", lease=60, ttl=3600)
    assert successor.acquired
    assert store.release("k", successor.record.fence)  # its body raised
    clock.advance(61)
    store.purge()  # the released row: retention over, lease over
    newcomer = store.claim("k", "fp", lease=60, ttl=3600)
    assert newcomer.acquired
    assert newcomer.record.fence > successor.record.fence > zombie
    assert not store.complete("k", zombie, b"zombie", ttl=3600)  # the zombie wakes up
    assert store.complete("k", newcomer.record.fence, b"newcomer", ttl=3600)
