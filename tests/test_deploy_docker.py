"""The image's Dockerfile and lock files, statically: hadolint finds nothing (each ignore justified
inline), and they keep the promises the deployment relies on. tests/test_image.py builds and runs
the image itself."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.helpers import setting_names
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = REPO / "pyproject.toml"
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


def stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """{stage name: (what it is FROM, its instructions)} in file order; the last is the default."""
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            parent, _, name = rest.partition(" AS ")
            current = []
            found[name.strip()] = (parent.strip(), current)
        elif found:
            current.append((keyword, rest))
    return found


def stage_chain(target: str) -> list[tuple[str, str]]:
    """Instructions in effect for `target`: its parents' (stages of this file) first."""
    all_stages = stages()
    parent, own = all_stages[target]
    inherited = stage_chain(parent) if parent in all_stages else []
    return inherited + own


def env_values(target: str = "gpu") -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, rest in stage_chain(target):
        if keyword == "ENV":
            values.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", rest)))
    return values


def lock_pins(variant: str) -> dict[str, str]:
    text = (REPO / "requirements" / f"image-{variant}.lock").read_text()
    return dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+)", text, flags=re.MULTILINE))


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
    assert ignores, "expected the justified ignores (DL3008 apt pins)"
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


def test_debian_slim_base_with_cuda_and_cudnn_from_locked_wheels() -> None:
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert base
    # The official Debian slim image, which deploy/image/make-base.sh can also make locally.
    assert re.fullmatch(r"docker\.io/library/debian:[a-z]+-slim", base.group(1))
    assert next(parent for parent, _ in stages().values()) == "${BASE_IMAGE}"
    assert list(stages())[-1] == "gpu", "the GPU image must be the default (last) target"
    gpu = lock_pins("gpu") | lock_pins("cuda")
    # onnxruntime-gpu 1.19-1.23 on PyPI: CUDA 12.x + cuDNN 9; the wheels must be that pair.
    assert re.fullmatch(r"1\.(19|2[0-3])\.\d+", gpu["onnxruntime-gpu"]), "re-check the CUDA pairing"
    assert gpu["nvidia-cudnn-cu12"].startswith("9.")
    for library in ("cuda-runtime", "cublas", "cufft", "curand"):
        assert f"nvidia-{library}-cu12" in gpu, library
    assert "onnxruntime" not in gpu, "the CPU wheel would shadow onnxruntime-gpu's module"
    cpu = lock_pins("cpu")
    assert "onnxruntime" in cpu
    assert not [name for name in cpu if name.startswith(("nvidia-", "onnxruntime-gpu"))]
    docs = (REPO / "docs" / "deploy.md").read_text()
    assert base.group(1) in docs, "document the base in docs/deploy.md"
    assert gpu["onnxruntime-gpu"] in docs, "document the pairing in docs/deploy.md"


def test_locks_pin_every_dependency_with_hashes_and_the_image_installs_only_them() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    makefile = (REPO / "Makefile").read_text()

    def declared(variant: str) -> list[str]:
        extras = re.search(rf"^IMAGE_EXTRAS_{variant} := (.+)$", makefile, flags=re.MULTILINE)
        assert extras, f"IMAGE_EXTRAS_{variant} in the Makefile (what `make lock` reads)"
        requirements = list(project["dependencies"])
        for extra in extras.group(1).split():
            requirements += project["optional-dependencies"][extra]
        return [re.split(r"[\[<>=~! ;]", r, maxsplit=1)[0].lower() for r in requirements]

    for variant in ("gpu", "cuda", "cpu", "sweep", "build"):
        text = (REPO / "requirements" / f"image-{variant}.lock").read_text()
        entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2].strip())
        for entry in entries:
            if entry.startswith("#"):
                continue
            assert re.match(r"[a-z0-9][a-z0-9._-]*(\[[a-z,]+\])?==\S+ \\", entry), entry
            assert "--hash=sha256:" in entry, f"{variant}: no hash for {entry.splitlines()[0]}"
        if variant in ("gpu", "cpu"):
            pins = lock_pins(variant) | (lock_pins("cuda") if variant == "gpu" else {})
            missing = [n for n in declared(variant) if n.replace("_", "-") not in pins]
            assert not missing, f"image-{variant}.lock lacks {missing}: run `make lock`"
    for target, lock in (("gpu", "image-gpu.lock"), ("cpu", "image-cpu.lock"),
                         ("sweep", "image-sweep.lock")):  # fmt: skip
        chain = stage_chain(target)
        assert ("COPY", f"requirements/{lock} /tmp/requirements.lock") in chain
        installs = [rest for keyword, rest in chain if keyword == "RUN" and "pip install" in rest]
        assert installs
        assert all("--require-hashes" in rest or "--no-index" in rest for rest in installs)


def test_layers_go_deps_then_model_then_code() -> None:
    for target in ("gpu", "cpu"):
        own = stages()[target][1]
        order = [
            next(i for i, (_, rest) in enumerate(own) if marker in rest)
            for marker in ("--require-hashes", "--from=model", "--from=code")
        ]
        assert order == sorted(order), f"{target}: deps -> model -> code"
        assert not [rest for keyword, rest in own if keyword == "COPY" and "--from" not in rest
                    and "requirements" not in rest]  # fmt: skip
    model_stage = stages()["model"][1]
    assert [rest for keyword, rest in model_stage if keyword == "COPY"] == [
        "worker/weights.py /opt/fetch/weights.py"
    ], "the model layer must not depend on the rest of the code"


def test_model_is_baked_in_and_the_runtime_is_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"from weights import fetch_model", text)
    env = env_values("gpu")
    assert env["U2NET_HOME"] == "/opt/models"
    assert env["REQUIRE_GPU"] == "true"
    assert env["EXECUTION_PROVIDER"] == "cuda"
    assert env["LOG_FORMAT"] == "json"
    assert env_values("cpu")["REQUIRE_GPU"] == "false"
    for target in ("gpu", "cpu"):
        assert ("COPY", "--from=model /opt/models /opt/models") in stages()[target][1]
        users = [rest for keyword, rest in stage_chain(target) if keyword == "USER"]
        assert users
        assert users[-1].split(":")[0] not in ("root", "0")


def test_image_env_names_are_worker_settings() -> None:
    settings = setting_names(Settings.from_env) | {"U2NET_HOME"}
    system = {
        "PATH", "HOME", "VIRTUAL_ENV", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE",
        "NUMBA_CACHE_DIR", "NUMBA_CPU_NAME", "DEBIAN_FRONTEND", "PIP_NO_CACHE_DIR",
        "PIP_DISABLE_PIP_VERSION_CHECK",
    }  # fmt: skip
    unknown = (set(env_values("gpu")) | set(env_values("cpu"))) - settings - system
    assert not unknown, f"ENV names the worker does not read: {sorted(unknown)}"


def test_exec_form_entrypoint_with_an_init_and_healthcheck() -> None:
    found = dict(stage_chain("gpu"))
    assert found["ENTRYPOINT"] == '["/usr/bin/tini", "--", "image-worker-entrypoint"]'
    assert found["CMD"] == '["run"]'
    assert re.search(r'CMD \["image-worker", "healthcheck"\]$', found["HEALTHCHECK"])
    script = (REPO / "deploy" / "image" / "entrypoint.sh").read_text().strip().splitlines()
    assert script[-1] == 'exec image-worker "$@"', "tini's signals must reach the worker itself"


def test_dockerignore_keeps_the_context_to_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default (.venv, .models, .git, out/ stay out)"
    included = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    copied: set[str] = set()
    for keyword, rest in instructions():
        if keyword == "COPY" and "--from" not in rest:
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    copied = {re.sub(r"\$\{?\w+\}?", "*", path) for path in copied}
    excluded = {
        path
        for path in copied
        if not any(fnmatch(path, pattern) or path.startswith(pattern + "/") for pattern in included)
    }
    assert not excluded, f"COPY sources excluded from the context: {excluded}"


def test_cuda_wheels_are_a_layer_of_their_own_below_the_other_dependencies() -> None:
    """A dependency or code change leaves the CUDA/cuDNN layer (2.7 GB) and its digest alone."""
    cuda, gpu = lock_pins("cuda"), lock_pins("gpu")
    assert cuda
    assert all(name.startswith("nvidia-") for name in cuda), cuda
    assert not [name for name in gpu if name.startswith("nvidia-")]
    own = stages()["gpu"][1]
    copies = [i for i, (keyword, rest) in enumerate(own) if keyword == "COPY"]
    first_copy = own[copies[0]]
    assert first_copy == ("COPY", "requirements/image-cuda.lock /tmp/cuda.lock")
    cuda_install = own[copies[0] + 1]
    assert cuda_install[0] == "RUN"
    assert "--no-deps --require-hashes" in cuda_install[1]
    assert "/tmp/cuda.lock" in cuda_install[1]
    assert own[copies[1]] == ("COPY", "requirements/image-gpu.lock /tmp/requirements.lock")
    from deploy.image.split_lock import split

    # The two halves are exactly a split of the full lock `make lock` compiles (same header).
    joined = (REPO / "requirements" / "image-cuda.lock").read_text() + (
        REPO / "requirements" / "image-gpu.lock"
    ).read_text()
    again_cuda, again_gpu = split(joined)
    assert re.findall(r"^\S+==\S+", again_cuda, flags=re.MULTILINE) == [
        f"{name}=={version}" for name, version in cuda.items()
    ]
    assert len(re.findall(r"^\S+==", again_gpu, flags=re.MULTILINE)) == len(gpu)


def test_the_sweep_target_is_the_producer_without_the_ml_stack() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    sweep = lock_pins("sweep")
    for requirement in project["dependencies"]:
        assert re.split(r"[\[<>=~! ;]", requirement, maxsplit=1)[0].lower() in sweep
    heavy = {"onnx", "onnxruntime", "onnxruntime-gpu", "numpy", "rembg", "pillow", "scipy"}
    assert not heavy & set(sweep), heavy & set(sweep)
    assert sweep.items() <= (lock_pins("gpu") | lock_pins("cuda")).items(), "pins differ"
    found = dict(stage_chain("sweep"))
    assert found["ENTRYPOINT"] == '["/usr/bin/tini", "--", "image-jobs"]'
    assert found["CMD"] == '["sweep", "--emf"]'
    assert found["HEALTHCHECK"] == "NONE"
    assert found["USER"].split(":")[0] not in ("root", "0")
    assert ("COPY", "--from=code /opt/code /opt/venv") in stages()["sweep"][1]
    assert "build.sh sweep $(IMAGE)-sweep" in (REPO / "Makefile").read_text()


def test_tmp_is_a_declared_volume_and_the_rds_bundle_is_optional() -> None:
    for target in ("gpu", "cpu"):
        own = stages()[target][1]
        assert own[-1] == ("VOLUME", "/tmp"), f"{target}: VOLUME /tmp last (after every write)"
    for target in ("gpu", "cpu", "sweep"):
        assert ("COPY", "--from=rds-ca /out/ /etc/ssl/certs/") in stages()[target][1]
    rds = dict(stages()["rds-ca"][1])
    assert rds["ARG"] == "REQUIRE_RDS_CA_BUNDLE=false"
    assert "rds-global-bundle.pem" in rds["RUN"]
