# Two commands do all the set-up on a fresh machine:
#   make demo   builds the venv, the demo data and study, and serves the rating app
#   make test   builds the venv and runs the whole test suite (browser tests need Debian's chromium)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install chromium docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/histosynth demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

docs: $(STAMP)
	$(BIN)/python -m histosynth.cli.reference > docs/cli.md

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Browser tests drive Debian's Chromium (never `playwright install`, whose download fails offline).
chromium:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
