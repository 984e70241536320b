"""The package as it would ship to the index: its metadata, its README, its extras, and the
built wheel installed (not editable) into a clean virtual environment.

The wheel is ``$IDEMPOTENCE_TEST_WHEEL`` when set (``.ci/run`` builds it with ``make dist``,
which also runs ``twine check``); otherwise it is built here with ``python -m build``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built wheel: the one CI built, or a fresh ``python -m build --wheel``."""
    given = os.environ.get("IDEMPOTENCE_TEST_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"IDEMPOTENCE_TEST_WHEEL={given} does not exist"
        return path
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = out.glob("idempotence-*.whl")
    return path


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return HeaderParser().parsestr(zf.read(name).decode())


def _extra(metadata: Message, extra: str) -> set[str]:
    """The distribution names an extra pulls in."""
    names = set()
    for req in metadata.get_all("Requires-Dist") or []:
        if f"extra == '{extra}'" in req:
            names.add(re.split(r"[\s\[<>=~!;]", req, maxsplit=1)[0].lower())
    return names


def test_wheel_metadata_is_what_the_index_shows(wheel: Path, metadata: Message) -> None:
    import trove_classifiers

    assert metadata["Name"] == "idempotence"
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == README.read_text().strip()
    classifiers = metadata.get_all("Classifier") or []
    unknown = [c for c in classifiers if c not in trove_classifiers.classifiers]
    assert not unknown
    for minor in range(10, 15):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # SPDX expression instead
    assert metadata["Keywords"]
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Documentation", "Source", "Issues"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        license_text = zf.read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
    assert "MIT License" in license_text
    assert "idempotence/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "examples/"))]


def test_extras_are_sized_for_their_users(metadata: Message) -> None:
    assert _extra(metadata, "dynamodb") == {"boto3"}  # sync: no aiobotocore, no aiohttp
    assert _extra(metadata, "dynamodb-async") == {"boto3", "aiobotocore"}
    assert _extra(metadata, "cli") == {"rich"}
    # No botocore pin of our own: boto3 and aiobotocore pin the range each supports.
    assert not [r for r in metadata.get_all("Requires-Dist") or [] if r.startswith("botocore")]
    everything = set().union(
        *(_extra(metadata, e) for e in metadata.get_all("Provides-Extra") or [] if e != "all")
    )
    assert _extra(metadata, "all") == everything
    core = [r for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r]
    assert core == ["jmespath>=1.0"]


def test_readme_links_work_on_the_index() -> None:
    """The index renders README.md away from the repository: no relative links."""
    links = re.findall(r"\]\(([^)]+)\)", README.read_text())
    assert links
    assert [link for link in links if not link.startswith("https://")] == []


def test_built_wheel_installs_and_runs_in_a_clean_venv(tmp_path: Path, wheel: Path) -> None:
    env_dir = tmp_path / "venv"
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    venv.EnvBuilder(with_pip=uv is None).create(env_dir)
    python = env_dir / "bin" / "python"
    spec = f"{wheel}[cli,dynamodb]"
    if uv is not None:
        install = [uv, "pip", "install", "--python", str(python), spec]
    else:
        install = [str(python), "-m", "pip", "install", "-q", spec]
    proc = subprocess.run(install, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    work = tmp_path / "work"  # away from the checkout: only the installed wheel is importable
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, cwd=work, env=env, check=False
        )

    # The README quick start, as written; its last line raises KeyReuseError, as it says.
    code = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)[0]
    script = textwrap.dedent(
        """
        import idempotence, pathlib, sys
        assert pathlib.Path(idempotence.__file__).is_relative_to(pathlib.Path(sys.prefix))
        lines = {code!r}.splitlines()
        last = lines.pop()
        exec("\\n".join(lines))
        try:
            exec(last)
        except idempotence.KeyReuseError:
            print("KeyReuseError")
        """
    ).format(code=code)
    proc = run(str(python), "-c", script)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "charging 42\nKeyReuseError\n"
    assert (work / "idempotency.db").exists()

    proc = run(str(env_dir / "bin" / "idempotence"), "--help")
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout
    assert "inspect" in proc.stdout

    # The demo runs from the wheel with [cli] only (no psycopg, no dev tools).
    proc = run(str(env_dir / "bin" / "idempotence"), "demo", "--orders", "8", "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "transactional" in proc.stdout

    # [dynamodb] is the sync client only; the async path names the extra that adds it.
    proc = run(
        str(python),
        "-c",
        textwrap.dedent(
            """
            import asyncio, importlib.util
            from idempotence import MissingDependencyError
            from idempotence.stores import DynamoDBStore
            assert importlib.util.find_spec("boto3") is not None
            assert importlib.util.find_spec("aiobotocore") is None
            assert importlib.util.find_spec("aiohttp") is None
            store = DynamoDBStore("orders", region="us-east-1")
            try:
                asyncio.run(store.aget("k"))
            except MissingDependencyError as exc:
                print(exc)
            """
        ),
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'idempotence[dynamodb-async]'" in proc.stdout


def test_lambda_example_requirements_install_the_repository_package() -> None:
    """``sam build`` runs pip from ``examples/orders``: the requirement resolves to this
    repository's package (with its sync DynamoDB extra) before any release exists."""
    example = ROOT / "examples" / "orders"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "-r",
            "requirements.txt",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=example,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Would install idempotence-" in proc.stdout
    lines = [ln for ln in (example / "requirements.txt").read_text().splitlines() if ln]
    assert [ln for ln in lines if not ln.startswith("#")] == ["../..[dynamodb]"]
