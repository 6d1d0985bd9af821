# One entry point. `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNS   := runs
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

AIRFLOW_VENV := .venv-airflow
AIRFLOW_PINS := apache-airflow==3.3.2 apache-airflow-providers-apache-spark==6.3.4

.PHONY: setup java redis airflow demo test lint bench clean

$(BIN)/ugsep: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/ugsep java redis

java:  ## Spark needs a JVM; install Java 17 if none is on PATH
	@command -v java >/dev/null 2>&1 || { echo "installing openjdk-17-jre-headless"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openjdk-17-jre-headless; }

DEMO_DS ?= 2026-11-24

# Airflow pins many packages, so it gets its own venv; the DAG tests drive it from the main one.
$(AIRFLOW_VENV)/bin/airflow:
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q $(AIRFLOW_PINS)
	touch $@

airflow: $(AIRFLOW_VENV)/bin/airflow  ## Airflow + the Spark provider in .venv-airflow (for the DAG tests)

redis: java  ## Redis for the online-store tests (after java: one apt at a time); tests skip, saying why, where it cannot be installed
	@command -v redis-server >/dev/null 2>&1 || { echo "installing redis-server"; \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server) || echo "redis-server could not be installed"; }

# The demo model reads behaviour sequences (a small HyFormer on the UG-Sep split), so the demo day
# has user_events too; `ugsep train --dataset synthetic --out DIR` trains the plain UG-Sep model.
demo: setup  ## train a small sequence model (or reuse it), then generate a day with events and run both Spark stages
	@test -f $(RUNS)/model/config.json || $(BIN)/ugsep train --dataset synthetic --arch hyformer --seq-len 50 \
	  --d-model 32 --max-epochs 3 --out $(RUNS)/model
	$(BIN)/ugsep demo --ds $(DEMO_DS) --users 2000 --config job.toml

test:  ## set up (the two venvs in parallel), lint, run every test
	$(MAKE) -j3 setup airflow
	$(MAKE) lint
	$(BIN)/python -m pytest -q --durations=12 tests

lint: $(BIN)/ugsep
	$(BIN)/ruff check ugsep feature_store jobs serving pipelines cli tests benchmarks

bench: setup
	$(BIN)/python benchmarks/split_vs_full.py

clean:
	rm -rf $(RUNS) .pytest_cache $(AIRFLOW_VENV)
