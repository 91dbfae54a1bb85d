# Every target bootstraps .venv from nothing: `make test` on a fresh machine is the whole set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE
PYTEST_ARGS ?=

.PHONY: venv test lint typecheck unit bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[onnx,dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check sepvit tests bench
	$(VENV)/bin/ruff format --check sepvit tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(PY) -m pytest $(if $(SLOW),,-m "not slow") $(PYTEST_ARGS)

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/model_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
