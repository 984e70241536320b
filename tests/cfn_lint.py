"""One cfn-lint process for every CloudFormation template the tests lint.

Starting cfn-lint costs about 6 s of CPU (its imports and resource schemas), linting one of
our templates a fraction of a second. So a test module registers its templates when it is
imported (at collection, before any test runs) with :func:`register`, and the first
:func:`assert_passes` of the session lints every registered template in one run
(``--format json``); each test then fails on the matches of its own template only, and
every test fails if the run itself failed or reported a match outside the templates.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

__all__ = ["assert_passes", "register"]

#: name -> a template file, or a function returning a template's text (written to a
#: temporary file for the run).
_TEMPLATES: dict[str, Path | Callable[[], str]] = {}
_lock = threading.Lock()
_report: dict[str, list[dict[str, Any]]] | None = None
_failure: str | None = None


def register(name: str, template: Path | Callable[[], str]) -> None:
    """Lint ``template`` (a file, or a function returning the text) in the session's run."""
    if _report is not None or _failure is not None:
        raise RuntimeError(f"cfn-lint already ran: register {name!r} at import time")
    _TEMPLATES[name] = template


def _run(tool: str) -> None:
    global _report, _failure
    with tempfile.TemporaryDirectory(prefix="cfn-lint-") as tmp:
        paths: dict[str, str] = {}
        for name, template in _TEMPLATES.items():
            if isinstance(template, Path):
                paths[str(template)] = name
            else:
                path = Path(tmp) / f"{len(paths)}-{name.replace('/', '-')}.yaml"
                path.write_text(template())
                paths[str(path)] = name
        done = subprocess.run(
            [tool, "--format", "json", *paths],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    try:
        matches = json.loads(done.stdout)
    except ValueError:
        _failure = f"cfn-lint failed (exit code {done.returncode}):\n{done.stdout}{done.stderr}"
        return
    report: dict[str, list[dict[str, Any]]] = {name: [] for name in _TEMPLATES}
    stray = []
    for match in matches:
        name = paths.get(match.get("Filename") or "")
        if name is None:
            stray.append(match)
        else:
            report[name].append(match)
    if stray or (done.returncode != 0 and not matches):
        _failure = (
            f"cfn-lint failed (exit code {done.returncode}) or reported on no template of "
            f"{sorted(_TEMPLATES)}:\n{json.dumps(stray, indent=1)}\n{done.stderr}"
        )
        return
    _report = report


def assert_passes(name: str) -> None:
    """Fail unless cfn-lint reports nothing for the template registered as ``name`` (skip
    if cfn-lint is not installed). The first call lints every registered template."""
    global _failure
    tool = shutil.which("cfn-lint", path=str(Path(sys.executable).parent))
    if tool is None:
        pytest.skip("cfn-lint is not installed (pip install cfn-lint)")
    with _lock:
        if _report is None and _failure is None:
            try:
                _run(tool)
            except Exception as exc:  # every test of the run fails with it, not only the first
                _failure = f"cfn-lint could not run: {type(exc).__name__}: {exc}"
    if _failure is not None:
        pytest.fail(_failure)
    assert _report is not None
    found = [
        f"{m['Rule']['Id']} {m['Message']} (line {m['Location']['Start']['LineNumber']})"
        for m in _report[name]
    ]
    assert not found, f"cfn-lint on {name}:\n" + "\n".join(found)
