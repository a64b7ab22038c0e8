# syntax=docker/dockerfile:1
#
# The GPU image of image-worker: `image-worker run` on ONNX Runtime's CUDA execution provider.
#
# CUDA / cuDNN pairing (keep these two ARGs in step; docs/deploy.md has the table):
#   onnxruntime-gpu 1.23.2 (PyPI) is built against CUDA 12.2 and cuDNN 9 (its package metadata
#   says cuda_version='12.2'; its `cuda`/`cudnn` extras ask for nvidia-*-cu12 and cudnn-cu12~=9).
#   ONNX Runtime built with CUDA 12.x runs on any CUDA 12.x runtime (CUDA minor-version
#   compatibility), but a cuDNN 8 build never loads cuDNN 9 and vice versa. The base image is
#   NVIDIA's `cudnn-runtime` flavour, which carries libcudart, libcublas(Lt), libcufft, libcurand
#   AND libcudnn 9: without cuDNN in the image ONNX Runtime silently falls back to the CPU, which
#   REQUIRE_GPU=true (set below) turns into a refused start with a clear message.
#   Host side: the ECS GPU-optimised AMI ships an NVIDIA driver >= 525.60.13, the minimum that
#   CUDA 12.x minor-version compatibility needs.
#   onnxruntime-gpu >= 1.24 on PyPI may move to CUDA 13: bump the base image with it.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# build: a virtual environment with the package (gpu extra) and the model weights.
FROM ${CUDA_IMAGE} AS build
ARG ONNXRUNTIME_GPU_VERSION=1.23.2
ARG MODEL_NAME=u2netp
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    U2NET_HOME=/opt/models
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008: Ubuntu's archive keeps only the newest build of a package, so an exact `=version` pin
# breaks the build at the next security update; the base image tag above is the pin that matters.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv "$VIRTUAL_ENV"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY api_client ./api_client
# The gpu extra brings onnxruntime-gpu; the pin keeps it on the CUDA 12 / cuDNN 9 line above.
# The CPU `onnxruntime` wheel must never be installed next to it (both own the same module).
# DL3013: `.` is this repository's own package (its dependency ranges live in pyproject.toml);
# the one version that decides whether the GPU works, onnxruntime-gpu, is pinned right here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[gpu]" "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" \
 && if pip show onnxruntime >/dev/null 2>&1; then echo "CPU onnxruntime got installed" >&2; exit 1; fi
# Weights are baked in (md5-checked by the command): a task never downloads anything at start.
RUN image-worker models fetch "${MODEL_NAME}"

# ---------------------------------------------------------------------------------------------
# runtime: the same CUDA/cuDNN base, Python, tini, the venv and the weights; no build tools.
FROM ${CUDA_IMAGE} AS runtime
ARG MODEL_NAME=u2netp
LABEL org.opencontainers.image.title="image-worker" \
      org.opencontainers.image.description="GPU background-removal worker (SQS -> S3 -> rembg -> S3)"
ENV DEBIAN_FRONTEND=noninteractive
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# DL3008: as in the build stage, the base image tag is the pin (Ubuntu drops superseded builds).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/worker \
      --shell /usr/sbin/nologin worker
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/models
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/worker \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    U2NET_HOME=/opt/models \
    MODEL_NAME=${MODEL_NAME} \
    EXECUTION_PROVIDER=cuda \
    REQUIRE_GPU=true \
    LOG_FORMAT=json \
    METRICS_PORT=9100
WORKDIR /home/worker
# Numeric (uid 10001 = `worker`): a runtime can see it is not root without reading /etc/passwd.
USER 10001:10001
EXPOSE 9100
# The same command as the ECS container health check: /healthz on the metrics port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["image-worker", "healthcheck"]
# PID 1 is tini: it reaps zombies and forwards SIGTERM/SIGINT to image-worker, whose own handler
# drains in-flight jobs within DRAIN_SECONDS (second signal: exit at once). `docker run --init`
# is therefore not needed (it would only add a second init).
ENTRYPOINT ["/usr/bin/tini", "--", "image-worker"]
CMD ["run"]
