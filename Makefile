# Two commands do all set-up on a fresh machine with Python 3.11:
#   make run    the main job: every table at the embedded mini scale (snakemake --profile profiles/local)
#   make test   the tests: unit tests, the smoke-scale pipeline end to end, integration tests,
#               with the optional extra `nequip` installed (tests/models/test_nequip.py)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras

.PHONY: run test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# optional model families (pyproject.toml [project.optional-dependencies]); `make run` needs none
$(EXTRAS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,nequip]'
	touch $(EXTRAS_STAMP)

run: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --profile profiles/local

test: $(STAMP) $(EXTRAS_STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ruff check .
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -ra --durations=15 -n auto --maxprocesses 4 --dist loadfile
