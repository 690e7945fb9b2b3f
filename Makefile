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
# NEW_COOKIE=1: a new cluster cookie; by default the one in .stage2/cookie is kept.
NEW_COOKIE ?=

# Stage 3 options: the local Kubernetes (kind | minikube), the number of chat pods
# for stage3-scale, and DRY_RUN=1 to print the commands a target would run, running none.
K8S ?= kind
REPLICAS ?= 3
DRY_RUN ?=
STAGE3 = $(BIN)/python -m stage3_k8s.deploy --k8s $(K8S) $(if $(DRY_RUN),--dry-run)

.PHONY: help stage1 stage2 test soak lint bench stage3 stage3-scale stage3-status stage3-down screenshots \
	stage3-compose stage3-compose-down

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "}; /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The virtualenv is a file target: rebuilt only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

stage1: $(VENV)/.installed ## Serve the stage 1 chat on http://localhost:$(PORT)
	PORT=$(PORT) $(BIN)/python -m stage1_dev

stage2: $(VENV)/.installed ## Start Redis and NODES nodes on BASE_PORT.. (DISCOVERY=manual|redis|gossip)
	$(BIN)/python -m stage2_cluster.launch --nodes $(NODES) --base-port $(BASE_PORT) --discovery $(DISCOVERY) --redis-port $(REDIS_PORT) $(if $(NEW_COOKIE),--new-cookie)

# Stage 3 in containers (Compose): NODES chat containers and Redis, from stage3_k8s/compose.yaml.
# Run again with another NODES to rescale; PULL_POLICY=never builds stand-ins instead of pulling.
stage3-compose: $(VENV)/.installed ## Build the image, run Redis + NODES chat containers with Compose, wait, print the URLs
	$(BIN)/python -m stage3_k8s.compose_lab up --nodes $(NODES)

stage3-compose-down: $(VENV)/.installed ## Remove the Compose containers, network, Redis volume and .stage3/chatlab.env
	$(BIN)/python -m stage3_k8s.compose_lab down

stage3: $(VENV)/.installed ## Cluster, image, manifests on K8S=kind|minikube; prove two pods talk; print the URL
	$(STAGE3) up

stage3-scale: $(VENV)/.installed ## Scale the chat to REPLICAS pods and wait until each sees all the others
	$(STAGE3) scale --replicas $(REPLICAS)

stage3-status: $(VENV)/.installed ## Show the chat pods, the endpoints of chat-nodes and each pod's node list
	$(STAGE3) status

stage3-down: $(VENV)/.installed ## Delete the stage 3 cluster and its images
	$(STAGE3) down

test: $(VENV)/.installed tests/js/node_modules/.installed ## Run every test (CI=true: nothing may be skipped)
	$(BIN)/python -m pytest

soak: $(VENV)/.installed ## Long fault, fuzz and flood runs left out of `make test` (minutes); see docs/reliability.md
	$(BIN)/python -m pytest -m soak -rA

lint: $(VENV)/.installed ## Check style with ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed ## Benchmark ChatLab against python-socketio (W1-W4, < 5 min); writes bench/results/
	$(BIN)/python -m bench

screenshots: $(VENV)/.installed ## Take docs/img/stage1.png and stage2.png again, in Chromium (the browser tests)
	SCREENSHOT_DIR=docs/img $(BIN)/python -m pytest tests/test_browser.py tests/test_stage2_browser.py -k screenshot
