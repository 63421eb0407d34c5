# Set-up and the two main commands. Everything runs in one virtual environment, .venv.
#   make demo   install, then run the default experiment (search on the embedded data set, every core)
#   make test   install, then run the test suite (unit + smoke; `make test-slow` adds slow tests)
# Override the interpreter or the torch build: make demo PYTHON=python3.11 TORCH="torch==2.13.0"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install demo test test-slow lint benchmarks ui dashboard clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,dp,launchers,postgres,export]"
	touch $@

install: $(VENV)/.installed

demo: install  # one search worker per core (python -m pipeline alone: one, reproducible from the seed)
	$(BIN)/python -m pipeline search.n_workers=auto $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(ARGS)

lint: install
	$(BIN)/ruff check pipeline training sparse attacks tests benchmarks
	$(BIN)/mypy

benchmarks: install
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

ui: install
	@echo "MLflow UI (ready in ~15 s): http://127.0.0.1:5000/#/experiments?workflowType=machine_learning"
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root mlruns/artifacts --host 127.0.0.1

dashboard: install
	@echo "Optuna dashboard: http://127.0.0.1:8080"
	$(BIN)/optuna-dashboard sqlite:///mlruns/optuna.db --host 127.0.0.1

clean:
	rm -rf .cache outputs multirun
