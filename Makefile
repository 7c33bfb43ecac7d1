# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment it needs on a fresh machine and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall when the project's dependencies change.
STAMP_RUN := $(VENV)/.stamp-run-$(shell cksum pyproject.toml | cut -d' ' -f1)
STAMP_DEV := $(VENV)/.stamp-dev-$(shell cksum pyproject.toml | cut -d' ' -f1)
# torch is needed only by the CosmicAI .pt converter, AstroMAE training/export and their
# tests. 2.13.0 is the CPU build
# this project's machines keep on disk; elsewhere pip would fetch a multi-GB CUDA build, so
# the install is allowed to fail and the converter tests then skip.
TORCH_SPEC ?= torch==2.13.0
# aws-sam-cli pins boto3 to one exact version, so it lives in a tool environment of its own.
SAM_VENV ?= .venv-sam
SAM_CLI_SPEC ?= aws-sam-cli==1.170.0
STAMP_SAM := $(SAM_VENV)/.stamp-$(subst =,-,$(SAM_CLI_SPEC))

.PHONY: demo test lint typecheck unit clean venv sam-build

$(STAMP_RUN):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[plots]'
	touch $@

$(STAMP_DEV): $(STAMP_RUN)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	-$(BIN)/python -m pip install --quiet '$(TORCH_SPEC)' || echo "torch not installed: converter and AstroMAE torch tests will skip"
	touch $@

$(STAMP_SAM):
	$(PYTHON) -m venv $(SAM_VENV)
	$(SAM_VENV)/bin/python -m pip install --quiet '$(SAM_CLI_SPEC)'
	touch $@

venv: $(STAMP_DEV) $(STAMP_SAM)

# Build the Lambda functions and layers (needs a python3.12; pyenv has one on our machines).
sam-build: $(STAMP_SAM)
	PATH="$$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin 2>/dev/null | tail -1):$$PATH" \
	  SAM_CLI_TELEMETRY=0 $(SAM_VENV)/bin/sam build

demo: $(STAMP_RUN)
	$(BIN)/cosmicai demo

lint: $(STAMP_DEV)
	$(BIN)/ruff check src tests scripts functions benchmarks
	$(BIN)/ruff format --check src tests scripts functions benchmarks

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

unit: $(STAMP_DEV) $(STAMP_SAM)
	COSMICAI_SAM="$(abspath $(SAM_VENV))/bin/sam" $(BIN)/python -m pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) $(SAM_VENV) .demo .aws-sam .mypy_cache .ruff_cache .pytest_cache
