# Amber: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench dist clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[agent,hub,s3,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python packaging/demo.py

test: $(STAMP) lint
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/primitives.py
	$(BIN)/python bench/bench_agent.py
	$(BIN)/python bench/bench_sync.py
	$(BIN)/python bench/bench_restore.py

# dist/: the wheel (with its extras) and dist/amber-agent.pyz, the agent as one
# file for edge devices (packaging/build_zipapp.py; same Python minor version and platform).
dist: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dist]'
	rm -rf dist
	$(BIN)/python -m pip wheel -q --no-deps . -w dist/
	rm -rf build
	$(BIN)/python packaging/build_zipapp.py --wheel dist/amber-*.whl --out dist/amber-agent.pyz

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
