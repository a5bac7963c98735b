# dode — common tasks. `make help` lists them.
PYTHON ?= python3
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true

.PHONY: help install test test-all lint format bench

help:  ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-22s %s\n", $$1, $$2}'

install:  ## install dode with its dev tools (pip install -e ".[dev]")
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## run the default test suite (CPU, < 10 min)
	$(PYTHON) -m pytest -q -x --durations=15

test-all:  ## run every test, including the slow ones
	$(PYTHON) -m pytest -q -m "not gpu"

lint:  ## ruff check + format check
	$(PYTHON) -m ruff check dode tests experiments
	$(PYTHON) -m ruff format --check dode tests experiments

format:  ## apply ruff formatting and autofixes
	$(PYTHON) -m ruff check --fix dode tests experiments
	$(PYTHON) -m ruff format dode tests experiments

bench:  ## core benchmark: fit overhead vs teacher, D-solver vs base sampling time
	$(PYTHON) experiments/bench_core.py
