# Every target bootstraps .venv from pyproject.toml on first use (and again when it changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make demo` needs the package and rich only: its own stamp, no dev group.
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: .venv demo test lint bench bench-scale dist docs clean distclean

.venv: $(STAMP)

# The stamps are the real targets: a fresh clone bootstraps, later runs reuse the venv until
# pyproject.toml changes. Dependencies come from pyproject only (extras + dev group).
# --compile-bytecode: installed packages get their .pyc files at install time (about 12 s
# once), so the many Python subprocesses the tests start (workers, CLIs, crash tests, where
# PYTHONDONTWRITEBYTECODE is set) do not compile boto3, redis-py... from source each time:
# about 1.3 s less per such process.
$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip uv

$(STAMP): pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e '.[all]' --group dev
	touch $@

$(DEMO_STAMP): pyproject.toml | $(BIN)/uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e '.[cli]'
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/python -m idempotence demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy --strict
	$(BIN)/lint-imports

# The sdist and wheel as they would ship to the index, checked by twine.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist
	$(BIN)/twine check --strict dist/*

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link, a page
# missing from the nav, a missing included file or a docstring warning.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	@if [ -f bench/run.py ]; then $(BIN)/python bench/run.py; else echo "bench/run.py does not exist yet"; fi

# Latency per call with 1k, 100k and 1M records stored, 1/10/100 callers, and the purge
# under load, on SQLite, PostgreSQL and MySQL (about 10 minutes; docs/benchmarks.md).
bench-scale: $(STAMP)
	$(BIN)/python bench/scale.py $(BENCH_ARGS)

clean:
	rm -rf build dist site .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
