# kocrank — `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

DEMO_DIR ?= demo
DEMO_MEMBERS ?= 20000
DEMO_SEED ?= 7
TEST_WORKERS ?= auto

.DEFAULT_GOAL := help
.PHONY: help install demo test browser bench bench-scale lint docs clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its dev tools

demo: $(STAMP) ## simulate a brand, validate, build features, train + register, rank (all local)
	$(BIN)/koc simulate --members $(DEMO_MEMBERS) --seed $(DEMO_SEED) --out $(DEMO_DIR)/data
	$(BIN)/koc validate --data $(DEMO_DIR)/data
	$(BIN)/koc features --data $(DEMO_DIR)/data --as-of 2025-06-01 --out $(DEMO_DIR)/features_2025-06-01.parquet
	$(BIN)/koc train --data $(DEMO_DIR)/data
	$(BIN)/koc rank --data $(DEMO_DIR)/data --as-of 2026-01-01 --top 500 --out $(DEMO_DIR)/invitations_2026-01-01

browser: ## install Debian's Chromium and a CJK font for the ops page's browser test (as root; CI does this)
	@test -x /usr/bin/chromium || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium fonts-wqy-microhei; }

test: $(STAMP) ## run the test suite (one test file per worker, TEST_WORKERS=auto: one per core)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP) ## time and peak memory of simulate, features, train, rank and /score at 100k members
	$(BIN)/python bench/run.py
	$(BIN)/python bench/monitor.py

bench-scale: $(STAMP) ## validate, ingest, features (+ DuckDB floor), train, rank at 100k/300k/1M (from the store, [engine] 2 GB); projection to 18M
	$(BIN)/python bench/scale.py --members 100000,300000,1000000 --train 100000,1000000 --rank 100000,300000,1000000

lint: $(STAMP) ## ruff check
	$(BIN)/ruff check features training serving kocrank tests bench

clean: ## remove generated data, stores and the venv
	rm -rf $(VENV) $(DEMO_DIR) mlflow.db mlartifacts mlruns .pytest_cache bench/out test-artifacts

docs: $(STAMP) ## regenerate the README's feature table from the registry
	$(BIN)/python -m kocrank.docs
