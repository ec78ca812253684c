# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates the virtual environment on first use (about 2 minutes; torch comes from local disk).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA ?= data
SEED ?= 0
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded defaults (local Ray, synthetic cohorts). It grows with each stage.
LAKE ?= lake

demo: $(STAMP)
	$(BIN)/gbmmet synth --preset demo --out $(DATA)/demo --seed $(SEED) --preview --overwrite
	$(BIN)/gbmmet preprocess --manifest $(DATA)/demo/siteA/manifest.csv --manifest $(DATA)/demo/siteB/manifest.csv --lake $(LAKE)
	$(BIN)/gbmmet query "select site, split, label, count(distinct patient_id) as patients, count(*) as slices from slices group by all order by all" --lake $(LAKE)
	$(BIN)/gbmmet features --lake $(LAKE)
	$(BIN)/gbmmet train --lake $(LAKE) --run demo
	$(BIN)/gbmmet query "select fold, count(*) as epochs, round(last(val_acc order by epoch), 3) as held_out_acc from train_history where run_id = ? group by fold order by fold" -p demo --lake $(LAKE)

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

clean:
	rm -rf $(DATA) $(LAKE) .pytest_cache
