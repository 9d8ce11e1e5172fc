# `make run` and `make test` set everything up themselves (a .venv in this folder).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin


.PHONY: run test test-fast lint bench clean

$(BIN)/simlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch from the wheel on this machine first, so nothing pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/simlab
	$(BIN)/simlab chat

# Every tier (unit, model, slow, hostile), then the house rules: ruff and the import layers.
test: $(BIN)/simlab
	$(BIN)/pytest -m 'slow or not slow'
	$(MAKE) --no-print-directory lint

test-fast: $(BIN)/simlab
	$(BIN)/pytest

lint: $(BIN)/simlab
	$(BIN)/ruff check simlab tests benchmarks
	$(BIN)/ruff format --check simlab tests benchmarks
	$(BIN)/lint-imports --no-cache

bench: $(BIN)/simlab
	$(BIN)/python benchmarks/bench_decode.py
	$(BIN)/python benchmarks/bench_sessions.py
	$(BIN)/python benchmarks/bench_compare.py
	$(BIN)/python benchmarks/bench_trace.py
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache
