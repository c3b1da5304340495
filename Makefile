# Amber: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The editable install is strict (a link tree, so type checkers and editors follow
# `amber.agent.x` to its file); a strict install does not see modules added later, so the
# install is redone whenever the list of modules changes (build/modules.txt).
MODULES := build/modules.txt

.PHONY: demo test test-fast lint bench dist clean FORCE

$(MODULES): FORCE
	@mkdir -p build
	@find amber_ns protocol agent hub -name '*.py' | LC_ALL=C sort > $@.new
	@cmp -s $@.new $@ && rm -f $@.new || mv $@.new $@

$(STAMP): pyproject.toml $(MODULES)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[agent,hub,s3,test]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python packaging/demo.py

# Two workers (pytest-xdist), a test file each at a time so module fixtures (a fleet, a
# site) start once: most tests wait on real server processes, so two workers fit 2 cores.
# `make test WORKERS=0` runs in one process (for a debugger or a bisect).
WORKERS ?= 2
XDIST   := $(if $(filter 0,$(WORKERS)),,-n $(WORKERS) --dist loadfile)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(XDIST) tests

# The inner loop: unit and in-process tests, no server or agent processes and no slow
# builds (under 90 s). tests/conftest.py marks `servers`; see tests/support/fixtures.py.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q $(XDIST) -m "not servers and not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/primitives.py
	$(BIN)/python bench/bench_agent.py
	$(BIN)/python bench/bench_sync.py
	$(BIN)/python bench/bench_restore.py
	$(BIN)/python bench/bench_manyfiles.py

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
