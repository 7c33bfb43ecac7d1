# The two commands of the README: `make demo` and `make test`. Each creates the virtual
# environment it needs on a fresh machine and installs the project into it. `make fast` is the
# inner loop: ruff and every test not marked slow (no sam build, NATs, forked worlds, local runs).
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

.PHONY: demo sweep test fast lint typecheck unit clean venv sam-build e2e

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

# CosmicAI's table on this machine, its report and the projection to AWS (docs/sweep/).
sweep: $(STAMP_RUN)
	$(BIN)/cosmicai bench sweep --out docs/sweep
	$(BIN)/cosmicai report docs/sweep
	$(BIN)/cosmicai project --sweep docs/sweep/sweep.json --out docs/sweep/projection.json
	$(BIN)/cosmicai bench sweep --model builtin:astromae-int8 --out docs/sweep-astromae
	$(BIN)/cosmicai report docs/sweep-astromae
	$(BIN)/cosmicai project --sweep docs/sweep-astromae/sweep.json \
		--out docs/sweep-astromae/projection.json

LINT_PATHS := src tests scripts functions benchmarks harness

lint: $(STAMP_DEV)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

# The end-to-end tests (tests/e2e: the deployment in a local AWS, podman + LocalStack) run
# where the machine can bring it up: root, with apt. Override with `make test E2E=0` (or 1).
E2E ?= $(shell [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && echo 1 || echo 0)

unit: $(STAMP_DEV) $(STAMP_SAM)
	COSMICAI_E2E=$(E2E) COSMICAI_SAM="$(abspath $(SAM_VENV))/bin/sam" $(BIN)/python -m pytest

# Build, deploy and run the real template in a local AWS, then `sam local invoke` every sample
# event and the rendezvous image (docs/local-aws.md). Setup is cached in .localaws/.
e2e: $(STAMP_DEV) $(STAMP_SAM)
	scripts/localaws/setup.sh >/dev/null
	COSMICAI_E2E=1 COSMICAI_SAM="$(abspath $(SAM_VENV))/bin/sam" \
	  $(BIN)/python -m pytest tests/e2e -m e2e -v -rs

test: lint typecheck unit

fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(SAM_VENV) .demo .aws-sam .mypy_cache .ruff_cache .pytest_cache
	-[ ! -d .localaws ] || scripts/localaws/clean.sh
