# Two entry points: `make demo` and `make test`. Both create .venv and install into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: install demo test test-fast lint bench-data clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned: on CPU machines this picks the local CPU wheel instead of CUDA packages.
	$(BIN)/python -m pip install -q $(TORCH_PIN)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/jowa demo --out demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15 tests

# For iteration: everything but the slow tests (the Catch learning check, end-to-end scripts); `make test` runs all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" --durations=10 tests

lint: $(STAMP)
	$(BIN)/ruff check jowa_core jowa_cli tests benchmarks

bench-data: $(STAMP)
	$(BIN)/jowa bench data --out docs/benchmarks.md

clean:
	rm -rf $(VENV) demo
