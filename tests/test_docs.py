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


def test_stores_doc_sam_snippet_matches_the_store() -> None:
    from idempotence.stores._dynamodb import CLOUDFORMATION_TEMPLATE

    yaml = blocks(ROOT / "docs" / "stores.md", "yaml")[0]
    assert yaml.strip() in CLOUDFORMATION_TEMPLATE


def test_stores_doc_sql_matches_the_migration() -> None:
    from idempotence.stores import PostgresStore

    page = (ROOT / "docs" / "stores.md").read_text()
    assert '--8<-- "docs/snippets/postgres/migration.sql"' in page
    sql = (ROOT / "docs" / "snippets" / "postgres" / "migration.sql").read_text()
    store = PostgresStore(os.environ.get("IDEMPOTENCE_TEST_POSTGRES_URL", "postgresql://x@h/d"))
    assert sql.strip() == store.migration_sql().strip()


# -- the documentation site (mkdocs.yml) --------------------------------------------------
DOCS = ROOT / "docs"
#: Files under docs/ that are not pages: the build hook and the included text snippets.
NOT_PAGES = ("hooks", "snippets")
FENCE = re.compile(r"^```([\w+-]*)\n(.*?)^```\s*$", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "([^":]+)(?::([\w-]+))?"$')


def nav_pages() -> list[str]:
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"
    pages: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(config["nav"])
    return pages


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).parts[0] not in NOT_PAGES)


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    pages = nav_pages()
    assert len(pages) == len(set(pages)), "a page is listed twice in mkdocs.yml"
    on_disk = {p.relative_to(DOCS).as_posix() for p in doc_pages()}
    assert sorted(on_disk - set(pages)) == [], "pages missing from the nav in mkdocs.yml"
    assert sorted(set(pages) - on_disk) == [], "nav entries without a page"


def test_every_public_module_has_a_reference_page() -> None:
    documented = {
        line.removeprefix(":::").strip()
        for page in (DOCS / "reference").glob("*.md")
        for line in page.read_text().splitlines()
        if line.startswith(":::")
    }
    assert documented >= {
        "idempotence",
        "idempotence.engine",
        "idempotence.stores",
        "idempotence.http",
        "idempotence.http.fastapi",
        "idempotence.http.django",
        "idempotence.aws_lambda",
        "idempotence.consumer",
        "idempotence.consumer.redis_streams",
        "idempotence.effects",
        "idempotence.testing",
        "idempotence.celery",
    }


def all_test_sources() -> str:
    """The text of every test module (to check that an included file is exercised)."""
    return "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))


def snippet_is_run(path: str, tests: str) -> bool:
    if path.startswith("tests/"):
        return Path(path).name.startswith("test_")  # a test module: it runs itself
    if path.startswith("docs/snippets/cli/"):
        return True  # compared with the real help below
    if path.startswith("docs/snippets/"):
        return path in tests  # a test that reads (and checks) the included text
    # an example: some test names the file (by its path, or its directory and name)
    parent, name = Path(path).parent.name, Path(path).name
    return (
        path in tests
        or (f'"{parent}"' in tests and f'"{name}"' in tests)
        or (f"{parent}/{name}" in tests)
    )


def classify(page: Path, start: int, lang: str, body: str) -> str:
    """How a fenced block of ``page`` is kept true: 'included', 'verbatim', 'excerpt',
    'diagram' (no language: not code), or 'unchecked'."""
    lines = [line for line in body.splitlines() if line.strip()]
    if lines and all(SNIPPET.match(line) for line in lines):
        return "included"
    if lang in ("", "text"):
        return "diagram"  # not code
    before = page.read_text()[:start].rstrip().rsplit("\n", 1)[-1]
    if before.startswith("<!-- include: "):
        return "verbatim"  # docs/lambda.md: tests/examples/test_orders.py compares them
    for source in [*(ROOT / "examples").rglob("*.py"), *(ROOT / "examples").rglob("*.y*ml")]:
        if body.strip() and body in source.read_text():
            return "excerpt"  # docs/http.md's mechanism (tests/http/test_examples.py)
    from idempotence.stores._dynamodb import CLOUDFORMATION_TEMPLATE

    if lang == "yaml" and body.strip() in CLOUDFORMATION_TEMPLATE:
        return "excerpt"  # test_stores_doc_sam_snippet_matches_the_store
    return "unchecked"


def test_code_samples_are_included_from_tested_files() -> None:
    tests = all_test_sources()
    unchecked: dict[str, int] = {}
    for page in doc_pages():
        text = page.read_text()
        for block in FENCE.finditer(text):
            kind = classify(page, block.start(), block.group(1), block.group(2))
            if kind == "included":
                for line in block.group(2).split("\n"):
                    match = SNIPPET.match(line.strip())
                    if not match:
                        continue
                    path, section = match.groups()
                    assert (ROOT / path).is_file(), f"{page.name}: {path} does not exist"
                    assert snippet_is_run(path, tests), f"{page.name}: no test runs {path}"
                    if section:
                        assert f"--8<-- [start:{section}]" in (ROOT / path).read_text()
            elif kind == "unchecked":
                name = page.relative_to(DOCS).as_posix()
                unchecked[name] = unchecked.get(name, 0) + 1
    assert unchecked == {}, (
        f"inline code samples no test checks (per page: {unchecked}): include them from a "
        'tested file with --8<-- "path" (see docs/testing.md)'
    )


def test_cli_help_in_the_docs_is_the_real_help(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib
    import io

    from idempotence.__main__ import main

    monkeypatch.setenv("COLUMNS", "100")
    commands = ("", "demo", "inspect", "forget", "key", "list", "stats", "purge")
    for command in (*commands, "create-table", "doctor"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            main([*([command] if command else []), "--help"])
        shown = (DOCS / "snippets" / "cli" / f"{command or 'idempotence'}.txt").read_text()
        prompt, _, help_text = shown.partition("\n")
        assert prompt == f"$ idempotence {command} --help".replace("  ", " ")
        assert help_text == out.getvalue(), f"regenerate docs/snippets/cli for {command!r}"


def test_quick_start_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy

    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "quickstart" / "quickstart.py"), run_name="__main__")
    assert capsys.readouterr().out == "key 42 was already used with another payload\n"
    assert (tmp_path / "idempotency.db").exists()
