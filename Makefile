# pollctl: `make demo` runs the system on embedded defaults, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install bench demo test test-fast test-e2e test-faults test-long lint format typecheck clean

help:
	@echo "make demo         run pollctl on embedded defaults with a simulated fleet and its status page (Ctrl-C stops)"
	@echo "make test         create the environment and run the suite (all but the long tests)"
	@echo "make test-fast    the suite without the slow end-to-end tests"
	@echo "make test-e2e     only the end-to-end tests (real worker, beat, API and Flower processes)"
	@echo "make test-faults  the whole fault suite, long outages included, with its summary"
	@echo "make test-long    only the long tests (CI runs them after make test)"
	@echo "make bench        the benchmark against a naive setup and an asyncio floor (BENCH_ARGS=...)"
	@echo "make install      create .venv and install pollctl with its dev and demo extras"
	@echo "make lint         ruff check and format check"
	@echo "make format       ruff format and fix"
	@echo "make typecheck    mypy"
	@echo "make clean        remove the environment and build output"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,demo]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pollctl demo $(if $(DURATION),--duration $(DURATION))

# The benchmark (not part of make test): BENCH_ARGS="--gateways 10000 --scale ..." to vary it.
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench $(BENCH_ARGS)

test: $(STAMP)
	$(BIN)/pytest -m "not long"

test-fast: $(STAMP)
	$(BIN)/pytest -m "not e2e and not long"

test-e2e: $(STAMP)
	$(BIN)/pytest -m e2e

test-faults: $(STAMP)
	$(BIN)/pytest -m faults

test-long: $(STAMP)
	$(BIN)/pytest -m long

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) pollctl-demo .pytest_cache .ruff_cache .mypy_cache *.egg-info
