# syntax=docker/dockerfile:1
#
# The image of image-worker: `image-worker run` on ONNX Runtime, GPU (default) or CPU.
#
#   podman build -t image-worker .                  # GPU image, the one ECS runs (last stage)
#   podman build --target cpu -t image-worker:cpu .  # CPU image: onnxruntime, no CUDA wheels
#   podman build --target sweep -t image-worker:sweep .  # the recovery sweep: image-jobs, no ML
#   make image / make image-cpu                      # no registry needed (docs/deploy.md)
#
# Base: plain Debian slim with Debian's python3. CUDA 12 and cuDNN 9 come as pip wheels
# (nvidia-*-cu12, the `cuda`/`cudnn` extras of onnxruntime-gpu, pinned with hashes in
# requirements/image-gpu.lock) and the worker loads them with onnxruntime.preload_dlls(), so no
# NVIDIA base image is needed and the image is made from public packages only. Only the driver
# (libcuda) comes from the host: the ECS GPU-optimised AMI ships one new enough for CUDA 12.
# Without usable CUDA/cuDNN, ONNX Runtime silently falls back to the CPU, which REQUIRE_GPU=true
# (set below) turns into a refused start with a clear message and exit code 3.
#
# Layers go from rarely to often changed: Debian packages -> CUDA/cuDNN wheels (GPU) -> the other
# locked dependencies -> model weights -> the project's own code, so a code change rebuilds one
# thin layer and a dependency change leaves the 2.7 GB CUDA layer (and its digest) as it was. The
# dependencies
# are installed in the final stage itself (not copied from another stage), so that a cached
# build never hashes their 4 GB to look up a COPY. Each stage builds only when the target needs
# it (BuildKit, and podman/buildah's default --skip-unused-stages).
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# base: Debian's Python (3.11 on bookworm) with venv support, tini and the non-root user, plus
# everything about the container that does not depend on the variant.
FROM ${BASE_IMAGE} AS base
ARG MODEL_NAME=u2netp
LABEL org.opencontainers.image.title="image-worker" \
      org.opencontainers.image.description="Background-removal worker (SQS -> S3 -> rembg -> S3)"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008: Debian's archive keeps only the newest build of a package, so an exact `=version` pin
# breaks the build at the next security update; the base image tag is the pin that matters.
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/worker \
      --shell /usr/sbin/nologin worker
COPY deploy/image/entrypoint.sh /usr/local/bin/image-worker-entrypoint
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/worker \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    NUMBA_CPU_NAME=generic \
    U2NET_HOME=/opt/models \
    MODEL_NAME=${MODEL_NAME} \
    LOG_FORMAT=json \
    METRICS_PORT=9100
WORKDIR /home/worker
EXPOSE 9100
# The same command as the ECS container health check: /healthz on the metrics port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["image-worker", "healthcheck"]
# PID 1 is tini: it reaps zombies and forwards SIGTERM/SIGINT to image-worker (the entrypoint
# script seeds numba's cache and execs it), whose own handler drains in-flight jobs within
# DRAIN_SECONDS (second signal: exit at once). `docker run --init` is therefore not needed.
ENTRYPOINT ["/usr/bin/tini", "--", "image-worker-entrypoint"]
CMD ["run"]

# ---------------------------------------------------------------------------------------------
# model: the weights, fetched by the worker's own stdlib-only module (md5-checked), so that a
# task never downloads anything at start. Only that module is copied: other code changes keep it.
FROM base AS model
ARG MODEL_NAME=u2netp
RUN python3 -m venv /opt/fetch
COPY worker/weights.py /opt/fetch/weights.py
RUN /opt/fetch/bin/python -c 'import sys; from pathlib import Path; sys.path.insert(0, "/opt/fetch"); from weights import fetch_model; print(fetch_model(Path("/opt/models"), sys.argv[1]))' "$MODEL_NAME"

# ---------------------------------------------------------------------------------------------
# code: the project itself, built offline with locked build tools and installed under /opt/code
# in the layout of a venv at /opt/venv (scripts say #!/opt/venv/bin/python3); merged below.
FROM base AS code
COPY requirements/image-build.lock /tmp/build.lock
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --require-hashes --only-binary=:all: -r /tmp/build.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jobcore ./jobcore
COPY worker ./worker
COPY api_client ./api_client
# --no-deps --no-index: the dependencies are in the runtime venv already, from the lock.
RUN /opt/venv/bin/pip install --no-deps --no-index --no-build-isolation --prefix /opt/code . \
 && /opt/venv/bin/python -m compileall -q /opt/code

# ---------------------------------------------------------------------------------------------
# rds-ca: the Amazon RDS CA bundle for `sslrootcert=/etc/ssl/certs/rds-global-bundle.pem`, from a
# file the operator puts at deploy/image/rds-ca/rds-global-bundle.pem (AWS publishes it; no
# package registry carries it, and the build host may not reach AWS). Without that file the
# image has no bundle, unless REQUIRE_RDS_CA_BUNDLE=true, which fails the build instead.
FROM base AS rds-ca
ARG REQUIRE_RDS_CA_BUNDLE=false
COPY deploy/image/rds-ca/ /tmp/rds-ca/
RUN mkdir /out \
 && if [ -s /tmp/rds-ca/rds-global-bundle.pem ]; then \
      python3 -c 'import ssl, sys; ssl.create_default_context(cafile=sys.argv[1])' \
        /tmp/rds-ca/rds-global-bundle.pem \
      && install -m 0644 /tmp/rds-ca/rds-global-bundle.pem /out/rds-global-bundle.pem; \
    elif [ "$REQUIRE_RDS_CA_BUNDLE" = true ]; then \
      echo "REQUIRE_RDS_CA_BUNDLE=true but deploy/image/rds-ca/rds-global-bundle.pem is missing" >&2; \
      exit 1; \
    fi

# ---------------------------------------------------------------------------------------------
# sweep: the recovery sweep (`image-jobs sweep`, a scheduled Fargate task): the base install
# (aioboto3, asyncpg, structlog) and the project's code, no ML stack; `--target sweep`.
FROM base AS sweep
COPY requirements/image-sweep.lock /tmp/requirements.lock
RUN python3 -m venv /opt/venv \
 && pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock
COPY --from=code /opt/code /opt/venv
COPY --from=rds-ca /out/ /etc/ssl/certs/
# It serves nothing: no /healthz to check, and a one-shot task.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/bin/tini", "--", "image-jobs"]
CMD ["sweep", "--emf"]
USER 10001:10001

# ---------------------------------------------------------------------------------------------
# cpu: plain onnxruntime (e.g. for a Fargate service); `--target cpu`.
FROM base AS cpu
COPY requirements/image-cpu.lock /tmp/requirements.lock
# Exactly the lock file, every file checked by its hash (`make lock` regenerates it).
RUN python3 -m venv /opt/venv \
 && pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock
# The numba functions that rembg's import compiles, cached for any x86-64 CPU (entrypoint.sh).
RUN NUMBA_CACHE_DIR=/opt/numba-cache python -c 'import rembg'
COPY --from=model /opt/models /opt/models
COPY --from=code /opt/code /opt/venv
COPY --from=rds-ca /out/ /etc/ssl/certs/
ENV EXECUTION_PROVIDER=cpu \
    REQUIRE_GPU=false
# Numeric (uid 10001 = `worker`): a runtime can see it is not root without reading /etc/passwd.
USER 10001:10001
# Declared last (a build step's writes under a volume are dropped). A runtime that mounts nothing
# at /tmp gives the container a volume with the image's /tmp (1777), so uid 10001 can write it:
# Fargate's bind-mounted task volume starts root 0755 unless the image declares it.
VOLUME /tmp

# ---------------------------------------------------------------------------------------------
# gpu (last, so the default target): onnxruntime-gpu with the CUDA/cuDNN wheels.
FROM base AS gpu
# The CUDA/cuDNN wheels alone first (requirements/image-cuda.lock, split from the GPU lock by
# `make lock`): this layer changes only with the CUDA line, not with any other dependency.
COPY requirements/image-cuda.lock /tmp/cuda.lock
RUN python3 -m venv /opt/venv \
 && pip install --no-deps --require-hashes --only-binary=:all: -r /tmp/cuda.lock \
 && rm /tmp/cuda.lock
COPY requirements/image-gpu.lock /tmp/requirements.lock
# As in cpu. onnxruntime (CPU) and onnxruntime-gpu own the same module: only the latter here.
RUN pip install --require-hashes --only-binary=:all: -r /tmp/requirements.lock \
 && rm /tmp/requirements.lock \
 && if pip show onnxruntime >/dev/null 2>&1; then \
      echo "the CPU onnxruntime got into the GPU image" >&2; exit 1; fi
RUN NUMBA_CACHE_DIR=/opt/numba-cache python -c 'import rembg'
COPY --from=model /opt/models /opt/models
COPY --from=code /opt/code /opt/venv
COPY --from=rds-ca /out/ /etc/ssl/certs/
ENV EXECUTION_PROVIDER=cuda \
    REQUIRE_GPU=true
USER 10001:10001
VOLUME /tmp
