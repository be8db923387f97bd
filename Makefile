# Two entry points (see README): `make quickstart` runs the main job, `make test` runs every check.
# Both create the project virtualenv in .venv on first use and re-install when the dependencies change.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,fast,gui

# Offline-friendly, quiet tools; bytecode is written so that repeated starts stay fast.
export PYTHONDONTWRITEBYTECODE :=
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: install quickstart test test-all lint typecheck contracts pytest clean

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch==2.13.0 comes from constraints.txt: the CUDA build from PyPI on a normal machine, the local
	# CPU build where one is offered. CPU-only machines: see README ("Installing").
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $@

install: $(BIN)/.installed

quickstart: $(BIN)/.installed
	$(BIN)/iris train params=quickstart

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy iris_core pipelines

contracts: $(BIN)/.installed
	$(BIN)/lint-imports

pytest: $(BIN)/.installed
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck contracts pytest

# The slow tests too (longer learning runs, 40 crash-kills of the episode store): about 5 more minutes.
test-all: PYTEST_ARGS += -m "slow or not slow"
test-all: test

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .import_linter_cache
