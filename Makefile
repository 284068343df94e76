# Every target creates .venv when it is missing and (re)installs the package with its test and
# dev extras whenever pyproject.toml or setup.cfg changed (tracked by a stamp file).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SEEDS ?= 100
# mypy --strict covers the typed-strict layers; a path not written yet is skipped.
STRICT_PATHS := waraft/core waraft/otp

.PHONY: all venv test demo lint sim bench clean

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.cfg | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

venv: $(STAMP)

$(VENV): $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest tests/

demo: $(STAMP)
	$(BIN)/python examples/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@paths=""; for p in $(STRICT_PATHS); do [ -e "$$p" ] && paths="$$paths $$p"; done; \
	if [ -n "$$paths" ]; then echo "mypy --strict$$paths"; $(BIN)/mypy --strict $$paths; \
	else echo "mypy: nothing to check yet"; fi

sim: $(STAMP)
	$(BIN)/python -m waraft.sim.sweep --seeds $(SEEDS)

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,dev,bench]'
	$(BIN)/python -m benchmarks.otp_bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
