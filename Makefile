# `make run` and `make test` set everything up themselves (a .venv in this folder).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin


.PHONY: run test test-fast lint bench clean browser

$(BIN)/simlab: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU torch from the wheel on this machine first, so nothing pulls a CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/simlab
	$(BIN)/simlab chat

# The HTML export's test opens the page in a real headless Chromium: Debian's, installed here when it
# is missing and this is root with apt (as CI is); elsewhere that one test says why it skips.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	  >/dev/null 2>&1; } || echo "make: no Chromium here; the HTML export's browser test will skip"

# Every tier (unit, model, slow, hostile), then the house rules: ruff and the import layers.
test: $(BIN)/simlab browser
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
