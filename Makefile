# Everything a fresh machine needs comes from here: venv, packages, model weights, Prometheus.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export U2NET_HOME ?= $(CURDIR)/.models
MODEL ?= u2netp
PYTEST_ARGS ?=

.PHONY: install model system-deps tools dev test lint typecheck bench clean

$(BIN)/image-worker: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[worker,cpu,dev]'
	touch $@

install: $(BIN)/image-worker model

model: $(BIN)/image-worker
	$(BIN)/image-worker models fetch $(MODEL)

# Debian packages the tests run against (real Prometheus and promtool).
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# checkov (terraform checks) in its own venv: its pins conflict with the project's botocore.
CHECKOV := .tools/checkov/bin/checkov
tools: $(CHECKOV)
$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install -q checkov

## The main job on an embedded local stack (moto SQS/S3, local or embedded PostgreSQL); the
## dev-only `devstack` package runs from the checkout.
dev: install
	$(BIN)/python -m devstack

## The whole test suite (what .ci/run calls).
test: install system-deps tools
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/image-worker
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/image-worker
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/throughput.py

## Autoscaling simulator: the Terraform policy before/after, on GPU and CPU (under a minute).
.PHONY: bench-scaling
bench-scaling: $(BIN)/image-worker
	$(BIN)/python bench/scaling.py --compute gpu
	$(BIN)/python bench/scaling.py --compute cpu

clean:
	rm -rf $(VENV) .models out .pytest_cache .mypy_cache .ruff_cache
