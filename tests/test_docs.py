"""The docs show real, working code: snippets run, and copies of generated text match."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from idempotence import KeyReuseError

ROOT = Path(__file__).resolve().parent.parent


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


def test_readme_quick_start_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = blocks(ROOT / "README.md", "python")[0]
    lines = code.splitlines()
    last = lines.pop()  # the reuse line raises, as its comment says
    namespace: dict[str, object] = {"__name__": "readme"}
    exec("\n".join(lines), namespace)
    assert capsys.readouterr().out == "charging 42\n"
    with pytest.raises(KeyReuseError):
        exec(last, namespace)
    assert (tmp_path / "idempotency.db").exists()


def test_docs_decorator_examples_compile() -> None:
    for code in blocks(ROOT / "docs" / "index.md", "python"):
        compile(code, "docs/index.md", "exec")


def test_stores_doc_sam_snippet_matches_the_store() -> None:
    from idempotence.stores._dynamodb import CLOUDFORMATION_TEMPLATE

    yaml = blocks(ROOT / "docs" / "stores.md", "yaml")[0]
    assert yaml.strip() in CLOUDFORMATION_TEMPLATE


def test_stores_doc_sql_matches_the_migration() -> None:
    from idempotence.stores import PostgresStore

    sql = blocks(ROOT / "docs" / "stores.md", "sql")[0]
    store = PostgresStore(os.environ.get("IDEMPOTENCE_TEST_POSTGRES_URL", "postgresql://x@h/d"))
    assert sql.strip() == store.migration_sql().strip()
