# Every target bootstraps .venv from pyproject.toml on first use (and again when it changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: .venv demo test lint bench clean distclean

.venv: $(STAMP)

# The stamp is the real target: a fresh clone bootstraps, later runs reuse the venv until
# pyproject.toml changes. Dependencies come from pyproject only (extras + dev group).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip uv
	$(BIN)/uv pip install --python $(BIN)/python -e '.[all]' --group dev
	touch $@

demo: $(STAMP)
	$(BIN)/python -m idempotence demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy --strict

bench: $(STAMP)
	@if [ -f bench/run.py ]; then $(BIN)/python bench/run.py; else echo "bench/run.py does not exist yet"; fi

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
