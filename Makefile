# Co-sell Sync developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.installed
STAMP_NODE := node_modules/.installed
# checkov and pre-commit have dependency trees that clash with the app's: their own venv.
TOOLS_VENV := .venv-tools
STAMP_TOOLS := $(TOOLS_VENV)/.installed
# checkov offline: no check of PyPI for a newer checkov (.checkov.yaml turns off platform downloads).
export CKV_SKIP_PACKAGE_UPDATE_CHECK := true

.DEFAULT_GOAL := help
.PHONY: help setup tools run test lint checkov pre-commit clean

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

$(STAMP_TOOLS): requirements-tools.txt
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found); see README Prerequisites"; exit 1; }
	test -x $(TOOLS_VENV)/bin/python || $(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-tools.txt
	touch $@

setup: $(STAMP_PY) $(STAMP_NODE) ## Create .venv and install Python and Node (Azurite) dependencies

tools: $(STAMP_TOOLS) ## Create .venv-tools with the pinned checkov and pre-commit

run: setup ## Start the whole system in sandbox mode (Azurite, simulators, local Functions host, demo data)
	$(PY) -m sandbox.run

test: setup tools ## Run the test suite (starts its own Azurite and simulators on free ports)
	$(PY) -m pytest

lint: setup tools ## ruff, mypy and checkov (the same tools and versions as pre-commit)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(TOOLS_VENV)/bin/checkov --quiet --compact

checkov: tools ## Scan infra/ with checkov (settings in .checkov.yaml; offline)
	$(TOOLS_VENV)/bin/checkov --quiet --compact

pre-commit: setup tools ## Run every pre-commit hook on the whole tree (`pre-commit install` adds the git hook)
	$(TOOLS_VENV)/bin/pre-commit run --all-files

clean: ## Remove generated files (venv, node_modules, sandbox data)
	rm -rf $(VENV) $(TOOLS_VENV) node_modules .sandbox .mypy_cache .ruff_cache .pytest_cache
