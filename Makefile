# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# mkdocs-material prints a banner about MkDocs 2.0 on every build; it is not ours.
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs
# every environment make builds honours constraints.txt (why: see that file)
PIP_INSTALL := $(BIN)/python -m pip install --quiet -c constraints.txt

.PHONY: demo test test-all docs docs-serve docs-results docs-results-quick bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test,docs]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-docs

$(VENV)/.installed-docs: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[docs]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP_INSTALL) -e '.[test,bench]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flowgap run step-vs-flow $(ARGS)

# The docs must build without a warning before the tests run. The tests run on
# every core (pytest-xdist); `make test ARGS="-n 0"` runs them in one process.
# A test file stays on one worker (--dist loadfile): the study tests share one
# run of their job through a module fixture, which would otherwise be computed
# once on every worker that receives one of its tests.
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadfile

test: $(VENV)/.installed-test
	$(MKDOCS) build --strict --quiet
	$(PYTEST) $(ARGS)

test-all: $(VENV)/.installed-test
	$(MKDOCS) build --strict --quiet
	$(PYTEST) -m '' $(ARGS)

# The documentation site, built into site/ (mkdocs.yml, pages under docs/).
docs: $(VENV)/.installed-docs
	$(MKDOCS) build --strict

docs-serve: $(VENV)/.installed-docs
	$(MKDOCS) serve

# The study pages' results: every job at its default settings (tens of minutes on
# 2 CPU cores), or the committed docs profile (--quick except step-vs-flow).
docs-results: $(VENV)/.installed
	$(BIN)/python docs/gen_results.py --full $(ARGS)

docs-results-quick: $(VENV)/.installed
	$(BIN)/python docs/gen_results.py $(ARGS)

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench_core.py $(ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check flowgap tests benchmarks docs/*.py
	$(BIN)/ruff format --check flowgap tests benchmarks docs/*.py

clean:
	rm -rf $(VENV) runs site .cache
