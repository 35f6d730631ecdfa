# Two commands do all set-up on a fresh machine with Python 3.11:
#   make run    the main job: every table at the embedded mini scale (snakemake --profile profiles/local)
#   make test   the tests: unit tests, the smoke-scale pipeline end to end, integration tests
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local

test: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ruff check .
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -ra --durations=15 -n auto --maxprocesses 4 --dist loadgroup
