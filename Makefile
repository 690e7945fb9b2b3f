# ChatLab: `make` lists the targets. Each target is thin and calls the Python package.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 4000

.PHONY: help stage1 test lint

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The virtualenv is a file target: rebuilt only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

stage1: $(VENV)/.installed ## Serve the stage 1 chat on http://localhost:$(PORT)
	PORT=$(PORT) $(BIN)/python -m stage1_dev

test: $(VENV)/.installed tests/js/node_modules/.installed ## Run every test (CI=true: nothing may be skipped)
	$(BIN)/python -m pytest

lint: $(VENV)/.installed ## Check style with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
