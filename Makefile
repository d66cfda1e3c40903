# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use. torch==2.13.0 is installed only when no
# torch is importable, so a machine with a CUDA build keeps it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER ?= 0

.PHONY: demo test lint check clean

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "using the torch already installed: $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	  $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q torch==2.13.0; \
	fi
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

demo: $(STAMP)
	@mkdir -p demo
	$(BIN)/attnsched trace generate -o demo/trace.jsonl --jobs 2000 --seed 1 --rate 12 --model tiny
	$(BIN)/attnsched run demo/trace.jsonl --policy adaptive --emulate-gpus 2 --speed 4 --out demo/live
	@echo "report: demo/live/report.md (plots in demo/live/plots/)"

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check scheduler workers policies tests bench examples
	$(BIN)/mypy

check: lint test

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
