# image-origin: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export IMAGE_ORIGIN_BIND ?= 127.0.0.1:8080
export IMAGE_ORIGIN_DATA_DIR ?= ./var

.PHONY: run test bench lint format system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/image-origin dev-keys
	$(BIN)/image-origin migrate
	$(BIN)/image-origin serve

# System packages the tests drive for real (nginx, chromium, PostgreSQL); installed only when
# missing, so a prepared machine pays nothing.
system-deps:
	@bash scripts/system-deps.sh

test: $(VENV)/.installed-test system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks against thumbor and the bare codec (bench/run.py; README "Benchmarks"). The servers
# run from .venv as deployed; the harness has its own venv (bench/env.py) for numpy & co.
bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.env
	bench/.work/venv/bin/python -m bench.run $(BENCH_ARGS)

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache
