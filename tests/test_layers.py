"""One-way layers: no module of the package reaches into another package's private parts.

Packages are ``idempotence`` and each of its subpackages (``stores``, ``http``,
``aws_lambda``, ``effects``, ``compat.powertools``...). A module may import:

- anything public of any package (a name without a leading ``_``, from a public module or
  a package ``__init__``);
- private modules and private names of its own package;
- private modules of an enclosing package (the root's ``_errors``, ``_record``, ``_keys``...
  are the shared value layer every subpackage builds on), but no private *names* from them.

So a front-end uses :mod:`idempotence.engine`, :mod:`idempotence.stores` and
:mod:`idempotence.http` through their public names only, and no store, engine or value
module imports a front-end (checked by ``lint-imports``, see ``[tool.importlinter]``).
``TYPE_CHECKING``-only imports are exempt. The import graph is parsed with :mod:`ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "idempotence"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def owning_package(module: str) -> str:
    """The package whose private part ``module`` is: the parent of its first private
    component (``idempotence.stores._base`` -> ``idempotence.stores``), or the package
    ``module`` itself when no component is private."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return module


def within(package: str, ancestor: str) -> bool:
    return package == ancestor or package.startswith(ancestor + ".")


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import of the module (function-level ones too), outside ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def violations(path: Path) -> list[str]:
    module = module_name(path)
    package = package_of(module, path)
    found = []
    for node in imports(ast.parse(path.read_text(), str(path))):
        targets: list[tuple[str, str | None]]
        if isinstance(node, ast.Import):
            targets = [(alias.name, None) for alias in node.names]
        else:
            target = resolve(node, package)
            targets = [(target, alias.name) for alias in node.names]
        for target, name in targets:
            if not within(target, "idempotence"):
                continue
            owner = owning_package(target)
            if owner != target and not within(package, owner):
                found.append(f"{module}:{node.lineno} imports private module {target}")
                continue
            if name is None or not name.startswith("_") or name.startswith("__"):
                continue
            if f"{target}.{name}" in MODULES:  # ``from . import _sql``: a module
                if not within(package, target):
                    found.append(f"{module}:{node.lineno} imports private module {target}.{name}")
            elif owning_package(target) != package and target != package:
                found.append(f"{module}:{node.lineno} imports private name {name} from {target}")
    return found


FILES = sorted(ROOT.rglob("*.py"))
MODULES = {module_name(p) for p in FILES}


def test_the_checker_sees_what_it_should() -> None:
    sample = ROOT / "aws_lambda" / "_batch.py"
    assert module_name(sample) == "idempotence.aws_lambda._batch"
    assert owning_package("idempotence.stores._base") == "idempotence.stores"
    assert owning_package("idempotence.engine") == "idempotence.engine"
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..x import _y\n"
        "def f():\n    from ..stores._base import Store\n"
    )
    assert [n.module for n in imports(tree) if isinstance(n, ast.ImportFrom)] == [
        "typing",
        "stores._base",
    ]


@pytest.mark.parametrize("path", FILES, ids=lambda p: module_name(p))
def test_no_private_import_across_packages(path: Path) -> None:
    assert violations(path) == []
