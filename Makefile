# Every target sets itself up: the first run creates .venv and installs the
# project with its pinned dependency ranges (about 1.5 minutes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_RUN := demo/runs/$(shell date +%Y%m%d-%H%M%S)

.PHONY: install test test-unit test-integration lint demo bench bench-peers clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The unit tier runs on every core (pytest-xdist, at most 4 processes); the
# integration tier one test at a time, since each starts Ray with 2 CPUs.
UNIT_WORKERS := -n auto --maxprocesses 4

test: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(UNIT_WORKERS)
	$(BIN)/python -m pytest -m integration

test-unit: $(STAMP)
	$(BIN)/python -m pytest -m "not integration" $(UNIT_WORKERS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest -m integration

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# A whole local search on synthetic shapes: data -> features once -> Optuna +
# ASHA on an embedded single-node Ray -> best config -> final model.
demo: $(STAMP)
	@test -d demo/data || $(BIN)/bottletune make-demo-data demo/data --classes 3 --per-class 40 --size 48
	$(BIN)/bottletune tune --data demo/data --out $(DEMO_RUN)/search --config configs/demo.yaml
	$(BIN)/bottletune export $(DEMO_RUN)/search --out $(DEMO_RUN)/best.json
	$(BIN)/bottletune train --config $(DEMO_RUN)/best.json --data demo/data --out $(DEMO_RUN)/model --cache-dir demo/cache
	$(BIN)/bottletune evaluate --model $(DEMO_RUN)/model/model.keras --data demo/data
	$(BIN)/bottletune predict --model $(DEMO_RUN)/model/model.keras $$(for class in demo/data/test/*/; do ls "$$class"* | head -n 1; done)
	@echo
	@echo "data:          demo/data"
	@echo "feature cache: demo/cache"
	@echo "search:        $(DEMO_RUN)/search (results.json, config.yaml, trials/)"
	@echo "best config:   $(DEMO_RUN)/best.json"
	@echo "final model:   $(DEMO_RUN)/model (model.keras, metrics.json)"

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python -m bench.run_all

# bottletune against KerasTuner Hyperband and a plain Ray Tune search (same data,
# space, budget, seed): about 32 minutes on 2 cores (96 px, 5 minutes a search);
# `make bench-peers SCALE=small` is a smoke run of about 5 minutes.
bench-peers: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]" tensorboard  # keras_tuner.Tuner needs it
	$(BIN)/python -m bench.peers $(if $(SCALE),--scale $(SCALE))
