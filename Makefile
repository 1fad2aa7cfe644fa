# Two commands do all the set-up on a fresh machine:
#   make demo   builds the venv, the demo data and study, and serves the rating app
#   make test   builds the venv and runs the whole test suite (browser tests need Debian's chromium)
# make test-fast is the inner loop: no browser, no other process, no training (under 2 minutes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install chromium docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/histosynth demo

# The whole suite, one worker per core (pytest-xdist); a test file stays on one worker, so its
# module fixtures are built once. Files go out in the order they are collected: xdist's default
# sends the files with the fewest tests last, and the README's one long test then ran alone at the end.
PYTEST_PARALLEL := -n auto --dist loadfile --no-loadscope-reorder

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_PARALLEL)

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest $(PYTEST_PARALLEL) -m "not browser and not processes and not training"

docs: $(STAMP)
	$(BIN)/python -m histosynth.cli.reference > docs/cli.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Browser tests drive Debian's Chromium (never `playwright install`, whose download fails offline).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
