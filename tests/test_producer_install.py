"""The package builds (`python -m build`: a wheel and an sdist) and the wheel installs, not
editable, into fresh venvs: with no extras (the producer) it brings `api_client` and `jobcore` but
none of rembg, onnxruntime, onnx, numpy, pillow or scikit-image, and from that venv `image-jobs`
creates a job against the local stack; with the `sync` extra `SyncJobClient` creates one too."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import asyncpg
import pytest

from jobcore.jobs import decode_message
from tests.conftest import Aws

pytestmark = pytest.mark.slow  # a fresh venv and a pip install

REPO = Path(__file__).resolve().parents[1]
ML_MODULES = ("rembg", "onnxruntime", "onnx", "numpy", "PIL", "skimage")
PROJECT_FILES = ("pyproject.toml", "README.md")
PACKAGES = ("api_client", "jobcore", "worker")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build` of a copy of the checkout (so the build writes nothing into it)."""
    root = tmp_path_factory.mktemp("build")
    source = root / "source"
    source.mkdir()
    for name in PROJECT_FILES:
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(root / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return root / "dist"


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob("image_worker-*-py3-none-any.whl")
    return wheel


def fresh_venv(root: Path, requirement: str) -> Path:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", requirement],
        env=clean_env(),  # a checkout on PYTHONPATH would look installed already
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def producer_venv(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> Path:
    """A fresh venv with the built wheel and no extras, its dependencies resolved by pip."""
    return fresh_venv(tmp_path_factory.mktemp("producer"), str(wheel_of(dist)))


@pytest.fixture(scope="module")
def sync_venv(tmp_path_factory: pytest.TempPathFactory, dist: Path) -> Path:
    """A fresh venv with the built wheel and the `sync` extra."""
    return fresh_venv(tmp_path_factory.mktemp("sync"), f"{wheel_of(dist)}[sync]")


def test_build_makes_a_wheel_and_an_sdist_with_the_data_files(dist: Path) -> None:
    (sdist,) = dist.glob("image_worker-*.tar.gz")
    assert sdist.stat().st_size > 0
    names = zipfile.ZipFile(wheel_of(dist)).namelist()
    for needed in ("api_client/py.typed", "jobcore/py.typed", "api_client/sync_client.py",
                   "jobcore/migrations/0001_create_jobs.sql"):  # fmt: skip
        assert needed in names, needed
    assert not [name for name in names if name.startswith(("tests/", "devstack/", "bench/"))]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would let the venv see the checkout's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


def test_producer_install_has_no_model_stack(producer_venv: Path, tmp_path: Path) -> None:
    probe = (
        "import importlib.util, json, sys\n"
        "import api_client, jobcore.jobs\n"
        "print(json.dumps({\n"
        "  'api_client': api_client.__file__,\n"
        f"  'absent': [m for m in {ML_MODULES!r} if importlib.util.find_spec(m) is None],\n"
        "  'psycopg': importlib.util.find_spec('psycopg') is not None,\n"
        "  'worker_imported': sorted(m for m in sys.modules if m.split('.')[0] == 'worker'),\n"
        "}))\n"
    )
    result = subprocess.run(
        [str(producer_venv / "bin" / "python"), "-c", probe],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["api_client"]).is_relative_to(producer_venv), found["api_client"]
    assert found["absent"] == list(ML_MODULES)
    assert found["worker_imported"] == []  # the producer never imports the worker package
    assert found["psycopg"] is False  # the sync producer's driver comes with the `sync` extra


def test_worker_command_in_a_producer_install_names_the_missing_extra(
    producer_venv: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(producer_venv / "bin" / "image-worker"), "run"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "image-worker[worker,gpu]" in result.stderr
    assert "rembg" in result.stderr


async def test_producer_install_creates_a_job(
    producer_venv: Path, tmp_path: Path, database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    await aws.put("books/cover.jpg", b"bytes the producer never decodes")
    env = clean_env(
        DATABASE_URL=database_url,
        SQS_QUEUE_URL=aws.queue_url,
        AWS_ENDPOINT_URL=aws.endpoint,
        AWS_REGION="us-east-1",
        SOURCE_BUCKET=aws.bucket,
    )
    process = await asyncio.create_subprocess_exec(
        str(producer_venv / "bin" / "image-jobs"),
        "--json",
        "enqueue",
        "--key",
        "books/cover.jpg",
        "--book-id",
        "b-1",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    job = json.loads(stdout)
    assert job["status"] == "pending"
    row = await db.fetchrow(
        "SELECT status, source_bucket, source_key, book_id FROM image_processing_jobs"
        " WHERE id = $1::uuid",
        job["id"],
    )
    assert row is not None
    assert dict(row) == {
        "status": "pending",
        "source_bucket": aws.bucket,
        "source_key": "books/cover.jpg",
        "book_id": "b-1",
    }
    bodies = await aws.receive_all()
    assert [str(decode_message(body)) for body in bodies] == [job["id"]]


async def test_sync_extra_install_creates_a_job_with_sync_job_client(
    sync_venv: Path, tmp_path: Path, database_url: str, aws: Aws, db: asyncpg.Pool
) -> None:
    script = (
        "import json\n"
        "from api_client import ClientSettings\n"
        "from api_client.sync_client import SyncJobClient\n"
        "with SyncJobClient.connect(ClientSettings.from_env()) as client:\n"
        "    job = client.create_job('books/cover.jpg', book_id=7)\n"
        "print(json.dumps({'id': str(job.id), 'status': job.status.value,\n"
        "                  'module': __import__('psycopg').__file__}))\n"
    )
    env = clean_env(
        DATABASE_URL=database_url,
        SQS_QUEUE_URL=aws.queue_url,
        AWS_ENDPOINT_URL=aws.endpoint,
        AWS_REGION="us-east-1",
        SOURCE_BUCKET=aws.bucket,
    )
    process = await asyncio.create_subprocess_exec(
        str(sync_venv / "bin" / "python"), "-c", script, cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert stderr == b""  # the library logs nothing to the app's streams on its own
    found = json.loads(stdout)
    assert found["status"] == "pending"
    assert Path(found["module"]).is_relative_to(sync_venv)
    assert await db.fetchval("SELECT book_id FROM image_processing_jobs") == "7"
    assert [str(decode_message(b)) for b in await aws.receive_all()] == [found["id"]]
