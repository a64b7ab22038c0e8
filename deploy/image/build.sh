#!/usr/bin/env bash
# Build the shipped Dockerfile with podman: deploy/image/build.sh TARGET TAG [podman build args...]
#   TARGET: gpu (the image ECS runs), cpu, or sweep (the recovery sweep's image-jobs).
# --format docker: the OCI format has no HEALTHCHECK (podman would drop it with a warning).
# With the base image already in local storage (pulled, or made by make-base.sh) nothing is
# pulled (--pull=never), so no registry is needed; otherwise podman pulls it as usual.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${1:?usage: build.sh gpu|cpu|sweep TAG [podman build args...]}
tag=${2:?usage: build.sh gpu|cpu|sweep TAG [podman build args...]}
shift 2
base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
pull=missing
if podman image exists "$base"; then pull=never; fi
set -x
exec podman build --format docker --pull="$pull" --target "$target" --tag "$tag" "$@" .
