# `make` sets up .venv (once, from pyproject.toml) and runs lint + the default test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: all check setup lint format test test-slow docs bench clean

all: check

check: lint test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,torch,onnx]'
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check nlpkit tests bench
	$(BIN)/ruff format --check nlpkit tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix nlpkit tests bench
	$(BIN)/ruff format nlpkit tests bench

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Real models and long runs (pulls the real assets into NLPKIT_HOME; minutes).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Regenerate completions/ and man/ from the CLI (tests/test_docs.py checks they are current).
docs: $(STAMP)
	$(BIN)/python -m nlpkit._gendocs

# Side-by-side benchmarks against the reference tools (installs the bench extra).
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/bench_analogy.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
