# Everything a fresh clone needs: `make demo` (the main job) and `make test` (the suite).
# The environment lives in a git-ignored .venv built from this repository's own files.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch first, pinned: nnunetv2 would otherwise pull whatever is newest.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

## The test suite (CI runs exactly this through .ci/run).
test: $(STAMP)
	$(PY) -m pytest -q

## The main job: baseline nnU-Net vs RWKV-SSS, end to end, on a synthetic phantom dataset
## (or DATASET=/path/to/DatasetXXX_Name in nnU-Net raw format). Output in OUT.
OUT ?= nnunet_sss_work
DATASET ?=
demo: $(STAMP)
	$(VENV)/bin/nnunet-sss demo -o $(OUT) $(if $(DATASET),--dataset $(DATASET),)

bench: $(STAMP)
	$(PY) -m nnunet_sss.bench.wkv
	$(PY) -m nnunet_sss.bench.network

## The checks that need a CUDA GPU (kernel and network tests on CUDA, GPU benchmarks); logs in gpu_check_logs/.
gpu-check: $(STAMP)
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
