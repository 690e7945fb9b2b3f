# ChatLab: `make` lists the targets. Each target is thin and calls the Python package.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 4000

# Stage 2 options: how many nodes (a@localhost, b@localhost, ...), the port of node a
# (the others follow), how they find each other (manual | redis | gossip), and the
# port of the embedded redis-server (not used when REDIS_URL is set).
NODES ?= 3
BASE_PORT ?= 4000
DISCOVERY ?= redis
REDIS_PORT ?= 6379

.PHONY: help stage1 stage2 test lint

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

stage2: $(VENV)/.installed ## Start Redis and NODES nodes on BASE_PORT.. (DISCOVERY=manual|redis|gossip)
	$(BIN)/python -m stage2_cluster.launch --nodes $(NODES) --base-port $(BASE_PORT) --discovery $(DISCOVERY) --redis-port $(REDIS_PORT)

test: $(VENV)/.installed tests/js/node_modules/.installed ## Run every test (CI=true: nothing may be skipped)
	$(BIN)/python -m pytest

lint: $(VENV)/.installed ## Check style with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
