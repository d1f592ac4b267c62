# Every target creates .venv and installs miniran into it when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# real CuPy + NVRTC + the CUDA runtime headers, no GPU or driver needed: the
# NVRTC compile check of every kernel (tools/nvrtc_check.py) runs in it
NVRTC_VENV ?= .venv-nvrtc
NVRTC_PKGS := 'cupy-cuda12x==14.*' 'cuda-toolkit[nvrtc,cudart]==12.*' tqdm matplotlib  # + what every miniran module imports

.PHONY: demo test test-standin test-slow test-gpu gpu-check nvrtc-check bench notebooks clean

$(VENV)/.stamp-base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml $(VENV)/.stamp-base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

$(NVRTC_VENV)/.stamp:
	$(PYTHON) -m venv $(NVRTC_VENV)
	$(NVRTC_VENV)/bin/python -m pip install -q $(NVRTC_PKGS)
	touch $@

## make demo: train a small attention network on the embedded CIFAR-10 sample, then draw the shipped
## model's attention masks on a few test images (runs/demo/masks.png)
demo: $(VENV)/.stamp-base
	$(PY) -m miniran demo --force  # runs/demo is the demo's own folder: each `make demo` starts it over

## make test: the test suite (slow cases excluded), then every GPU test again
## on the CPU through the CuPy stand-in (tests/standin); the NVRTC compile
## check of every kernel runs inside the first pass
test: $(VENV)/.stamp-test $(NVRTC_VENV)/.stamp
	$(PY) -m pytest
	$(MAKE) --no-print-directory test-standin

## make test-standin: the `gpu` tests on the CPU, through the CuPy stand-in
test-standin: $(VENV)/.stamp-test
	MINIRAN_CUPY_STANDIN=1 $(PY) -m pytest -m gpu -p no:cacheprovider

## make gpu-check: on a GPU machine, reads the driver's CUDA line (nvidia-smi),
## installs the matching CuPy extra (.[cuda12] / .[cuda13]) into $(VENV) and
## PyTorch into its own $(TORCH_VENV), then the real gpu tests, the GPU
## benchmark and a timed Attention-56 run on CIFAR-10 (set MINIRAN_DATA), under
## 8 minutes after the installs. Fails with one line without nvidia-smi, a GPU
## or CuPy, or when any gpu test skips. GPU_CHECK_ARGS=--dry-run: the plan only
TORCH_VENV ?= .venv-torch
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.stamp-test
	$(PY) tools/gpu_check.py --torch-env $(TORCH_VENV) $(GPU_CHECK_ARGS)

## make nvrtc-check: compile every GPU kernel with NVRTC as CuPy would (no GPU needed)
nvrtc-check: $(NVRTC_VENV)/.stamp
	$(NVRTC_VENV)/bin/python tools/nvrtc_check.py

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
	rm -rf $(VENV) $(NVRTC_VENV) build *.egg-info .pytest_cache
