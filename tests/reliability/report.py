"""Reading what the workers wrote, and printing the measured numbers."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def ledger(workdir: Path) -> dict[str, list[str]]:
    """key -> nonces of every execution of its body (all processes), in the order the
    executions began (nonces start with a nanosecond timestamp)."""
    runs: dict[str, list[str]] = defaultdict(list)
    for path in sorted(workdir.glob("ledger-*")):
        for line in path.read_text().splitlines():
            key, nonce = line.split()
            runs[key].append(nonce)
    return {key: sorted(nonces) for key, nonces in runs.items()}


def results(workdir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(workdir.glob("results-*")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def windows(workdir: Path) -> Counter[str]:
    """key -> number of kills that fell between its side effect and ``complete``."""
    seen: Counter[str] = Counter()
    for path in sorted(workdir.glob("windows-*")):
        for line in path.read_text().splitlines():
            seen[line.split()[1]] += 1
    return seen


def emit(name: str, **numbers: Any) -> None:
    """One greppable line per workload (shown with ``-s`` or in the captured output)."""
    print(f"\nRELIABILITY {name}: " + " ".join(f"{k}={v}" for k, v in numbers.items()))
