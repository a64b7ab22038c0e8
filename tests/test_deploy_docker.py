"""The GPU image: hadolint finds nothing (each ignore justified inline), and the Dockerfile keeps
the promises the deployment relies on (no Docker engine is needed for these checks)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def env_values() -> dict[str, str]:
    """ENV of the final stage."""
    stages = [i for i, (keyword, _) in enumerate(instructions()) if keyword == "FROM"]
    values: dict[str, str] = {}
    for keyword, rest in instructions()[stages[-1] :]:
        if keyword == "ENV":
            values.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest)))
    return values


def test_hadolint_reports_nothing() -> None:
    if not HADOLINT.exists():
        pytest.fail(f"hadolint is missing at {HADOLINT}: `pip install -e '.[dev]'` installs it")
    completed = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.stdout.strip() == "", completed.stdout
    assert completed.returncode == 0, completed.stderr


def test_every_hadolint_ignore_is_justified_inline() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    ignores = [(n, line) for n, line in enumerate(lines) if "hadolint ignore=" in line]
    assert ignores, "expected the justified ignores (DL3008 apt pins, DL3013 local package)"
    for number, line in ignores:
        codes = re.findall(r"DL\d{4}|SC\d{4}", line.split("ignore=", 1)[1])
        comments = []
        for previous in reversed(lines[:number]):
            if not previous.startswith("#") or "hadolint ignore=" in previous:
                break
            comments.append(previous)
        text = " ".join(comments)
        for code in codes:
            assert re.search(rf"{code}:\s*\S.{{20,}}", text), (
                f"line {number + 1}: {code} unjustified"
            )


def test_multi_stage_cuda_cudnn_base_matching_the_onnxruntime_gpu_pin() -> None:
    text = DOCKERFILE.read_text()
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) >= 2, froms
    assert all("${CUDA_IMAGE}" in rest for rest in froms), froms
    base = re.search(r"ARG CUDA_IMAGE=(\S+)", text)
    pin = re.search(r"ARG ONNXRUNTIME_GPU_VERSION=(\S+)", text)
    assert base
    assert pin
    # onnxruntime-gpu 1.19+ on PyPI: CUDA 12.x + cuDNN 9; the base must carry both.
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base.group(1))
    assert re.fullmatch(r"1\.(19|2[0-3])\.\d+", pin.group(1)), "re-check the CUDA pairing"
    assert '".[gpu]"' in text
    assert "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in text
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert base.group(1) in docs, "document the pairing in docs/deploy.md"
    assert pin.group(1) in docs, "document the pairing in docs/deploy.md"


def test_model_is_baked_in_and_the_runtime_is_non_root_and_gpu_only() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"RUN image-worker models fetch", text)
    assert "COPY --from=build /opt/models /opt/models" in text
    env = env_values()
    assert env["U2NET_HOME"] == "/opt/models"
    assert env["REQUIRE_GPU"] == "true"
    assert env["LOG_FORMAT"] == "json"
    users = [rest for keyword, rest in instructions() if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_image_env_names_are_worker_settings() -> None:
    source = (REPO / "worker" / "settings.py").read_text()
    settings = set(re.findall(r"reader\.\w+\(\s*\"([A-Z][A-Z0-9_]*)\"", source)) | {"U2NET_HOME"}
    system = {
        "PATH", "HOME", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
        "NUMBA_CACHE_DIR", "DEBIAN_FRONTEND",
    }  # fmt: skip
    unknown = set(env_values()) - settings - system
    assert not unknown, f"ENV names the worker does not read: {sorted(unknown)}"


def test_exec_form_entrypoint_with_an_init_and_healthcheck() -> None:
    found = dict(instructions())
    assert found["ENTRYPOINT"] == '["/usr/bin/tini", "--", "image-worker"]'
    assert found["CMD"] == '["run"]'
    assert re.search(r'CMD \["image-worker", "healthcheck"\]$', found["HEALTHCHECK"])


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default (.venv, .models, .git, out/ stay out)"
    included = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied: set[str] = set()
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from" not in rest:
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    assert copied <= included, f"COPY sources excluded from the context: {copied - included}"
