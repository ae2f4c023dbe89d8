# Quick start: `make demo` runs the main job on built-in defaults, `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch lies on this machine's disk; a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,logging,plots]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	# results go under runs/ so the demo never overwrites the committed results/ of the larger preset
	$(BIN)/adaspec reproduce --task gsm8k --preset demo --results-dir runs/results

test: $(STAMP)
	$(BIN)/python -m pytest -q -x

clean:
	rm -rf $(VENV) runs
