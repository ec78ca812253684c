# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment on first use (about 2 minutes; torch comes from local disk).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
SEED ?= 0
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench clean venv dashboard

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded defaults (local Ray, synthetic cohorts): synth -> preprocess ->
# features -> train -> readers -> evaluate, then the paper's table. Re-running reuses what is done.
LAKE ?= lake

demo: $(STAMP)
	$(BIN)/gbmmet run --preset demo --data $(DATA)/demo --lake $(LAKE) --seed $(SEED)

# The dashboard of the lake on http://localhost:8501 (this machine only; Ctrl-C stops it).
dashboard: $(STAMP)
	$(BIN)/gbmmet dashboard --lake $(LAKE)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/synth.py
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/run.py
	$(BIN)/python bench/dashboard.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/coverage.py
	$(BIN)/python bench/lake.py

clean:
	rm -rf $(DATA) $(LAKE) .pytest_cache
