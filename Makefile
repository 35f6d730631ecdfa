# Two commands do all set-up on a fresh machine with Python 3.11:
#   make run    the main job: every table at the embedded mini scale (snakemake --profile profiles/local)
#   make test   the tests: unit tests, the smoke-scale pipeline end to end, integration tests,
#               with the optional extra `nequip` installed (tests/models/test_nequip.py)
#   make rehearsal  the paper scale's path on small generated archives through Slurm (README
#               "Rehearse the paper scale"); REHEARSAL_TARGETS=... to run fewer targets
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS_STAMP := $(VENV)/.installed-extras

.PHONY: run test lint rehearsal

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

# Generates the archives (results/rehearsal/mirror), serves them on 127.0.0.1, uses the working
# Slurm cluster or starts a one-node one (as root), runs the Slurm profile at scale rehearsal,
# stops what it started and prints wall time and peak memory per job family.
REHEARSAL_TARGETS ?= all_tables
REHEARSAL_OPTIONS ?=
rehearsal: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m dens.pipeline.rehearsal run $(REHEARSAL_OPTIONS) $(REHEARSAL_TARGETS)
