# Everything a fresh machine needs comes from here: venv, packages, model weights, Prometheus.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export U2NET_HOME ?= $(CURDIR)/.models
MODEL ?= u2netp
PYTEST_ARGS ?=

.PHONY: install model system-deps tools dev check test lint typecheck bench clean \
	container-tools base-image image image-cpu lock

$(BIN)/image-worker: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[worker,cpu,dev]'
	touch $@

install: $(BIN)/image-worker model

model: $(BIN)/image-worker
	$(BIN)/image-worker models fetch $(MODEL)

# Debian packages the tests run against (real Prometheus and promtool, headless Chromium).
system-deps:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing Debian's prometheus package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@# The admin page's browser test (tests/test_admin_page_browser.py): headless Chromium + driver.
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }

# The AWS provider's schema for deploy/terraform_schema.py: the jsii assembly of the npm package
# @cdktf/provider-aws (21.22.1 is generated from hashicorp/aws 6.25.0), kept in .tools/.
PROVIDER_AWS_VERSION := 21.22.1
PROVIDER_AWS_DIR := .tools/provider-aws/$(PROVIDER_AWS_VERSION)
PROVIDER_AWS_JSII := $(PROVIDER_AWS_DIR)/package/.jsii
$(PROVIDER_AWS_JSII):
	@command -v npm >/dev/null || { echo "installing Debian's npm"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }
	mkdir -p $(PROVIDER_AWS_DIR)
	cd $(PROVIDER_AWS_DIR) && npm pack --silent @cdktf/provider-aws@$(PROVIDER_AWS_VERSION) >/dev/null \
	  && tar -xzf cdktf-provider-aws-$(PROVIDER_AWS_VERSION).tgz package/.jsii package/package.json \
	  && rm cdktf-provider-aws-$(PROVIDER_AWS_VERSION).tgz
	touch $@

# checkov (terraform checks) in its own venv: its pins conflict with the project's botocore.
CHECKOV := .tools/checkov/bin/checkov
tools: $(CHECKOV) $(PROVIDER_AWS_JSII)
$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install -q checkov

## The main job on an embedded local stack (moto SQS/S3, local or embedded PostgreSQL); the
## dev-only `devstack` package runs from the checkout.
dev: install
	$(BIN)/python -m devstack

## The fast lane, before a commit: lint, types, and every test not marked `slow` or `image` (unit
## and fast integration against the real local services; no image build). Under 3 minutes on two
## quiet cores: a test that waits out a timeout or backoff, or starts processes, is marked `slow`;
## one real-stack test per area (worker end to end, producer, recovery, terraform) stays here.
check: install system-deps tools
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest -m "not slow and not image" $(PYTEST_ARGS)

## The whole test suite (what .ci/run calls); tests marked `image` run the image built here.
test: install system-deps tools image
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(BIN)/image-worker
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/image-worker
	$(BIN)/mypy

# ---- the container image (docs/deploy.md, "The image") --------------------------------------
IMAGE ?= localhost/image-worker:latest
BASE_IMAGE := $(shell sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
CONTAINERS_CONF := /etc/containers/containers.conf.d/50-image-worker.conf

# Debian's podman, with the two settings it needs on these hosts (deploy/image/containers.conf).
# containernetworking-plugins: the network of RUN steps (only a Recommends of podman).
CONTAINER_PACKAGES := podman runc containernetworking-plugins mmdebstrap
container-tools:
	@dpkg-query -W -f='$${Status}\n' $(CONTAINER_PACKAGES) 2>/dev/null | grep -c '^install ok installed' \
	  | grep -qx $(words $(CONTAINER_PACKAGES)) || { \
	  echo "installing Debian's $(CONTAINER_PACKAGES)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    $(CONTAINER_PACKAGES) >/dev/null; }
	@cmp -s deploy/image/containers.conf $(CONTAINERS_CONF) || { \
	  echo "installing $(CONTAINERS_CONF)"; install -D -m 0644 deploy/image/containers.conf $(CONTAINERS_CONF); }

# The Dockerfile's FROM image: kept if local (pulled or made before), else made from Debian packages.
base-image: container-tools
	deploy/image/make-base.sh $(BASE_IMAGE)

## The shipped images, built from the lock files without a registry: the GPU worker and the
## recovery sweep (`<image>-sweep`: image-jobs, no ML stack), the two a deploy pushes with one tag.
image: base-image
	deploy/image/build.sh gpu $(IMAGE)
	deploy/image/build.sh sweep $(IMAGE)-sweep

image-cpu: base-image
	deploy/image/build.sh cpu $(IMAGE:latest=cpu)

# Lock files of the image (hashes for every file): regenerate after changing pyproject.toml's
# dependencies or the extras below; `make lock LOCK_ARGS=--upgrade` moves every pin forward.
# The GPU lock is compiled whole (the two halves' pins as preferences), then split into the
# CUDA/cuDNN wheels (image-cuda.lock, their own layer) and the rest (image-gpu.lock).
# Linux x86_64, Python 3.11: the image's Debian python3, not this host's.
UV := .tools/uv/bin/uv
IMAGE_EXTRAS_gpu := worker gpu
IMAGE_EXTRAS_cpu := worker cpu
LOCK_ARGS ?=
LOCK := $(UV) pip compile --quiet --native-tls --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command 'make lock' $(LOCK_ARGS)
$(UV):
	$(PYTHON) -m venv .tools/uv
	.tools/uv/bin/pip install -q uv
GPU_FULL_LOCK := requirements/image-gpu-full.lock.tmp
lock: $(UV)
	cat requirements/image-cuda.lock requirements/image-gpu.lock > $(GPU_FULL_LOCK)
	$(LOCK) pyproject.toml requirements/image-gpu.in $(IMAGE_EXTRAS_gpu:%=--extra %) -o $(GPU_FULL_LOCK)
	$(PYTHON) deploy/image/split_lock.py $(GPU_FULL_LOCK) requirements/image-cuda.lock requirements/image-gpu.lock
	rm $(GPU_FULL_LOCK)
	$(LOCK) pyproject.toml -o requirements/image-sweep.lock
	$(LOCK) pyproject.toml $(IMAGE_EXTRAS_cpu:%=--extra %) -o requirements/image-cpu.lock
	$(LOCK) requirements/image-build.in -o requirements/image-build.lock

bench: install
	$(BIN)/python -m bench.throughput

## Autoscaling simulator: the Terraform policy before/after, on GPU and CPU (under a minute), and
## one chart per load profile in bench/results/ (docs/images/ holds the ones the docs show).
.PHONY: bench-scaling
bench-scaling: $(BIN)/image-worker
	$(BIN)/python -m bench.scaling --compute gpu --charts bench/results
	$(BIN)/python -m bench.scaling --compute cpu --charts bench/results

# Completion without polling: wait_for_job by LISTEN against 0.5 s polling (p50/p95, 100 jobs).
.PHONY: bench-wait
bench-wait: $(BIN)/image-worker
	$(BIN)/python -m bench.wait_latency

clean:
	rm -rf $(VENV) .models out .pytest_cache .mypy_cache .ruff_cache
