"""The commands of docs/reliability.md (included from docs/snippets/reliability/rerun.txt):
they name the suite that exists, options pytest accepts, and the word its report prints.
The suite itself is not run here (it takes minutes on every store)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ROOT / "docs" / "snippets" / "reliability" / "rerun.txt"


def test_rerun_commands_are_real() -> None:
    assert (
        '--8<-- "docs/snippets/reliability/rerun.txt"'
        in (ROOT / "docs" / "reliability.md").read_text()
    )
    lines = COMMANDS.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        command, _, comment = line.partition("#")
        assert comment.strip()
        pipeline = [shlex.split(part) for part in command.split("|")]
        python, dash_m, pytest_, suite, *options = pipeline[0]
        assert (python, dash_m, pytest_, suite) == (
            ".venv/bin/python",
            "-m",
            "pytest",
            "tests/reliability",
        )
        assert (ROOT / suite).is_dir()
        # pytest accepts the options (collecting one small module, not the suite)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                *options,
                "--collect-only",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/docs_samples/test_reliability_guide.py",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        for grep in pipeline[1:]:
            assert grep[0] == "grep"
            # each reliability test prints "RELIABILITY <workload>[<store>]: ..."
            assert (
                f'print(f"\\n{grep[1]} '
                in (ROOT / "tests" / "reliability" / "report.py").read_text()
            )
