# agir: `make demo` runs the loop on generated demo data; `make test` runs the test suite.
# Both create .venv once (reinstalling only when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: venv test test-fast test-slurm demo demo-data lint format bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,slurm,bench]'
	@touch $(STAMP)

# AGIR_SLURM=1: the real single-node SLURM tests run too (root only; installs slurm-wlm + munge via apt).
# TEST_WORKERS: pytest-xdist processes (0: one process). Much of an end-to-end test is waiting (process
# start-up, Snakemake and SLURM polling, the CVAT server), so two workers pay off even on 2 cores
# (18 min 43 s in one process -> 9 min 51 s). loadscope: a module's tests on one worker (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope

test: $(STAMP)
	AGIR_SLURM=$${AGIR_SLURM:-1} $(PYTEST) --durations=15

test-fast: $(STAMP)
	AGIR_SLURM=0 $(PYTEST) -m "not slow and not slurm"

test-slurm: $(STAMP)
	AGIR_SLURM=1 $(PYTEST) -m slurm

data/demo/agir_demo.duckdb: | $(STAMP)
	$(BIN)/agir-cvtoolkit demo-data --out data/demo

demo-data: data/demo/agir_demo.duckdb

# The workflow's demo_data rule generates data/demo/ when it is missing.
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --cores $(CORES)

lint: $(STAMP)
	$(BIN)/ruff check lib tests scripts benchmarks

format: $(STAMP)
	$(BIN)/ruff format lib tests scripts benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/query_bench.py
	$(BIN)/python benchmarks/infer_bench.py
	$(BIN)/python benchmarks/train_bench.py
	$(BIN)/python benchmarks/cvat_bench.py

clean:
	rm -rf outputs .snakemake report.html
