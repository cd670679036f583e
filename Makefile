# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-all bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flowgap run step-vs-flow $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q $(ARGS)

test-all: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -m '' $(ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_core.py $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check flowgap tests benchmarks
	$(BIN)/ruff format --check flowgap tests benchmarks

clean:
	rm -rf $(VENV) runs
