# pneumolab — two commands do all the set-up on a fresh machine:
#   make demo   train the default model, evaluate it, print the results and where the run went
#   make test   run the test suite (make test-fast: the quick loop, without the slow tests)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED_DATA := ../shared/data/chest_xray
SHARED_WEIGHTS := ../shared/weights
DATA ?= $(if $(wildcard $(SHARED_DATA)/train),$(SHARED_DATA),)
WEIGHTS ?= $(if $(wildcard $(SHARED_WEIGHTS)),$(SHARED_WEIGHTS),)
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: demo test test-fast lint typecheck env docs

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

env: $(BIN)/.installed

demo: $(BIN)/.installed
	@if [ -z "$(DATA)" ]; then \
	  echo "No dataset: pass DATA=/path/to/chest_xray, or get it with '$(BIN)/pneumolab data fetch --out data'"; exit 2; fi
	$(BIN)/pneumolab train --data $(DATA) --out $(RUN) --config configs/default.yaml $(if $(WEIGHTS),--weights $(WEIGHTS),)
	$(BIN)/pneumolab evaluate $(RUN) --data $(DATA) --split val --robustness
	@echo "run written to $(RUN)"

test: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast: $(BIN)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

lint: $(BIN)/.installed typecheck
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(BIN)/.installed
	$(BIN)/mypy

docs: $(BIN)/.installed
	$(BIN)/mkdocs build --strict
