# Every target creates .venv and installs miniran into it when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow test-gpu bench notebooks clean

$(VENV)/.stamp-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

## make demo: train a small attention network on the embedded CIFAR-10 sample
demo: $(VENV)/.stamp-base
	$(PY) -m miniran demo

## make test: the test suite (slow cases excluded; GPU cases skip without a GPU)
test: $(VENV)/.stamp-test
	$(PY) -m pytest

test-slow: $(VENV)/.stamp-test
	$(PY) -m pytest -m slow

test-gpu: $(VENV)/.stamp-test
	$(PY) -m pytest -m gpu

bench: $(VENV)/.stamp-base
	$(PY) benchmarks/bench_functions.py
	$(PY) benchmarks/bench_model.py

## make notebooks: open the tutorials in JupyterLab
notebooks: $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[notebooks]'
	$(VENV)/bin/jupyter lab tutorials/

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
