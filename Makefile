# Two commands on a fresh machine: `make demo` and `make test` (`make test-fast` skips the slow part).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: install test test-fast lint demo bench bench-quick bench-coverage bench-coverage-search bench-precision-study bench-horizon bench-peers bench-source-memory clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,examples,bench,grain,tensorboard,dataframe]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check jaxsweep tests benchmarks examples
	$(BIN)/ruff format --check jaxsweep tests benchmarks examples

test: lint
	$(BIN)/python -m pytest

# the inner loop: no subprocess sweeps, examples or benchmarks (CI runs `make test`)
test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

demo: $(STAMP)
	$(BIN)/jaxsweep demo --out runs/demo

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --quick

bench-coverage: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only coverage --suffix -coverage

# the search's own comparison: the defaults against precision=0.5 (digits MLP, 20 sweeps each)
bench-coverage-search: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only coverage --search --suffix=-coverage-search

bench-precision-study: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only precision_study --suffix=-precision-study

# the horizon check: the rate for a 12-epoch run from 3-epoch sweeps, against a truth trained without the engine
bench-horizon: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only horizon --suffix=-horizon

# the default sweep against a log grid, random search and Optuna's TPE with the lanes it spends
bench-peers: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only peers --suffix=-peers

# peak host memory of a sweep from a source of 10^5 to 10^8 examples (a process per size)
bench-source-memory: $(STAMP)
	$(BIN)/python -m benchmarks.run_all --only source_memory --suffix=-source-memory

clean:
	rm -rf $(VENV) runs .pytest_cache
