# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment it needs on a fresh machine and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall when the project's dependencies change.
STAMP_RUN := $(VENV)/.stamp-run-$(shell cksum pyproject.toml | cut -d' ' -f1)
STAMP_DEV := $(VENV)/.stamp-dev-$(shell cksum pyproject.toml | cut -d' ' -f1)
# torch is needed only by the CosmicAI .pt converter and its tests. 2.13.0 is the CPU build
# this project's machines keep on disk; elsewhere pip would fetch a multi-GB CUDA build, so
# the install is allowed to fail and the converter tests then skip.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test check lint typecheck unit clean venv

$(STAMP_RUN):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_DEV): $(STAMP_RUN)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	-$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)' || echo "torch not installed: converter tests will skip"
	touch $@

venv: $(STAMP_DEV)

demo: $(STAMP_RUN)
	$(BIN)/cosmicai demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

unit: $(STAMP_DEV)
	$(BIN)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) .demo .mypy_cache .ruff_cache .pytest_cache
