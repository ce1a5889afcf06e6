# Co-sell Sync developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run test bench lint clean

help: ## List the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP_PY): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found); see README Prerequisites"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

$(STAMP_NODE): package.json package-lock.json
	@command -v npm >/dev/null || { echo "Node.js 20 and npm are required (for Azurite); see README Prerequisites"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(STAMP_PY) $(STAMP_NODE) ## Create .venv and install Python and Node (Azurite) dependencies

run: setup ## Start the whole system in sandbox mode (Azurite, simulators, local Functions host, demo data)
	$(PY) -m sandbox.run

test: setup ## Run the test suite (starts its own Azurite and simulators on free ports)
	$(PY) -m pytest

bench: setup ## Run the benchmarks (loopback only) and append the results to BENCHMARKS.md
	$(PY) -m bench.bulk_poll --append BENCHMARKS.md

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean: ## Remove generated files (venv, node_modules, sandbox data)
	rm -rf $(VENV) node_modules .sandbox .mypy_cache .ruff_cache .pytest_cache
