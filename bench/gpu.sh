#!/usr/bin/env bash
# The throughput benchmark on a GPU machine, in one go (under 8 minutes on an H100/H200):
# installs onnxruntime-gpu with its CUDA and cuDNN wheels into a fresh venv, fetches the model,
# and prints the same table as bench/throughput.py with both sides on the CUDA provider.
# PostgreSQL: DATABASE_URL or 127.0.0.1:5432 if one answers, else an embedded pgserver.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GPU_VENV:-/tmp/image-worker-gpu}
export U2NET_HOME=${U2NET_HOME:-$PWD/.models}
export PYTHONUNBUFFERED=1

python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet -e '.[worker,gpu,dev]' 'onnxruntime-gpu[cuda,cudnn]'
"$VENV/bin/image-worker" models fetch u2netp
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$VENV/bin/python" -c 'import onnxruntime as ort; print("onnxruntime", ort.__version__, ort.get_available_providers())'

GPU_ENV=(--env EXECUTION_PROVIDER=cuda --env REQUIRE_GPU=true
  --env WORKER_CONCURRENCY="${CONCURRENCY:-16}" --env BATCH_SIZE="${BATCH_SIZE:-8}"
  --env BATCH_WAIT_MS=5 --env CPU_THREADS="$(nproc)")
# The default recipe (a transparent cut-out), then the seed's (matting, auto background, 300 px
# thumbnail): its baseline is rembg's own matting loop, seconds per photo, so fewer photos.
"$VENV/bin/python" -m bench.throughput --images "${IMAGES:-200}" --jobs "${JOBS:-1000}" \
  "${GPU_ENV[@]}" "$@"
"$VENV/bin/python" -m bench.throughput --recipe seed --images "${SEED_IMAGES:-16}" \
  "${GPU_ENV[@]}" "$@"
