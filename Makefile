# Two entry points: `make demo` (the quickstart) and `make test` (the CPU suite). Both create .venv if missing.
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.agentrl-installed
# CPU machines get the pinned CPU build of torch (this workplace keeps its wheel on disk); a machine with an
# NVIDIA driver gets pip's default (CUDA) torch. Off this workplace, a CPU laptop can pass
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the CPU build instead of PyPI's CUDA one.
TORCH_CPU   ?= torch==2.13.0
TORCH_GPU   ?= torch
TORCH_INDEX ?=

.PHONY: demo test venv clean-runs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then spec="$(TORCH_GPU)"; else spec="$(TORCH_CPU)"; fi; \
	  echo "installing $$spec"; \
	  $(PY) -m pip install -q "$$spec" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/agentrl train configs/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean-runs:
	rm -rf runs/
