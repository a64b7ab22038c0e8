"""The shipped image, built from the Dockerfile (GPU target, locked dependencies) and run with
podman the way the ECS task definition runs it: its user, a read-only root filesystem with the
same tmpfs mounts, its environment. `--network host` reaches this session's PostgreSQL and moto;
there is no GPU here, so the job test sets EXECUTION_PROVIDER=cpu REQUIRE_GPU=false
(onnxruntime-gpu runs on its CPU provider). One build per session; unchanged layers come from
podman's cache, so a rebuild with no change takes seconds."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from api_client.client import JobClient
from devstack.stack import FAKE_CREDENTIALS
from jobcore.jobs import JobStatus
from tests.conftest import Aws, worker_env
from tests.helpers import (
    eventually,
    iou,
    large_photo,
    png_alpha,
    scrape,
    synthetic_scene,
    unused_port,
    wait_finished,
)

REPO = Path(__file__).resolve().parents[1]
IMAGE = "localhost/image-worker:latest"  # the tag `make image` gives it
SWEEP_IMAGE = f"{IMAGE}-sweep"  # `make image`'s second tag: the recovery sweep
NVIDIA = "/opt/venv/lib/python3.11/site-packages/nvidia"
TASK_DEFINITION = REPO / "deploy" / "ecs" / "task-definition.json"
DRAIN_SECONDS = 30
# The first test also builds the image (`make test` has built it already: then a cache hit).
pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]


@dataclass(frozen=True)
class Result:
    code: int
    output: str


async def podman(*args: str, timeout: float = 120) -> Result:
    process = await asyncio.create_subprocess_exec(
        "podman", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"podman {' '.join(args[:2])} ran past {timeout}s") from None
    return Result(process.returncode or 0, output.decode(errors="replace"))


@pytest.fixture(scope="session")
def worker_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`make image`'s build (deploy/image/build.sh): the Dockerfile that ships, GPU target."""
    if shutil.which("podman") is None:
        pytest.fail("podman is missing: `make container-tools` installs and configures it")
    log = tmp_path_factory.mktemp("image") / "build.log"
    started = time.monotonic()
    with log.open("w") as sink:
        completed = subprocess.run(
            [str(REPO / "deploy" / "image" / "build.sh"), "gpu", IMAGE],
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=3600,
            check=False,
        )
    if completed.returncode != 0:
        pytest.fail(f"image build failed ({log}):\n{log.read_text()[-4000:]}")
    print(f"image built in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="session")
def sweep_image(worker_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`make image`'s sweep target (after the worker: its stages are cached by then)."""
    log = tmp_path_factory.mktemp("sweep-image") / "build.log"
    with log.open("w") as sink:
        completed = subprocess.run(
            [str(REPO / "deploy" / "image" / "build.sh"), "sweep", SWEEP_IMAGE],
            stdout=sink, stderr=subprocess.STDOUT, timeout=1800, check=False,
        )  # fmt: skip
    if completed.returncode != 0:
        pytest.fail(f"sweep image build failed ({log}):\n{log.read_text()[-4000:]}")
    return SWEEP_IMAGE


def task_container() -> dict[str, Any]:
    definition = json.loads(TASK_DEFINITION.read_text())
    (container,) = definition["containerDefinitions"]
    return container  # type: ignore[no-any-return]


def task_run_options(tmpfs: bool = True) -> list[str]:
    """podman flags for what the task definition sets on the container (without its tmpfs: what
    Fargate does, where /tmp is the image-declared volume)."""
    container = task_container()
    options = ["--user", container["user"]]
    if container["readonlyRootFilesystem"]:
        # podman's --read-only would also put tmpfs on /run and /var/tmp; ECS mounts only these.
        options += ["--read-only", "--read-only-tmpfs=false"]
    for mount in container["linuxParameters"]["tmpfs"] if tmpfs else []:
        flags = ",".join([*mount["mountOptions"], f"size={mount['size']}m"])
        options += ["--tmpfs", f"{mount['containerPath']}:{flags}"]
    # Its nofile ulimit (65536) is above this host's hard limit (20000): podman's default applies.
    return options


def task_environment(values: dict[str, str]) -> dict[str, str]:
    """The task definition's environment: its literals as they are, its ${...} from `values`."""
    environment: dict[str, str] = {}
    for item in task_container()["environment"]:
        name, value = item["name"], item["value"]
        if "${" in value:
            assert name in values, f"no test value for the task definition's {name}"
            value = values[name]
        environment[name] = value
    return environment


@dataclass
class Container:
    name: str
    metrics_url: str

    async def logs(self) -> str:
        return (await podman("logs", self.name)).output

    async def exit_code(self, timeout: float) -> int:
        result = await podman("wait", self.name, timeout=timeout)
        assert result.code == 0, result.output
        return int(result.output.strip().splitlines()[-1])

    async def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in (await self.logs()).splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events


StartContainer = Callable[..., Awaitable[Container]]


@pytest.fixture
async def start_container(
    worker_image: str, database_url: str, aws: Aws
) -> AsyncIterator[StartContainer]:
    """Start the image detached, as the task definition runs it; every container is removed."""
    names: list[str] = []
    if urlsplit(database_url).hostname not in ("127.0.0.1", "localhost"):
        pytest.fail(f"the container reaches PostgreSQL over TCP only, not {database_url}")

    async def start(network: str = "host", tmpfs: bool = True, **overrides: str) -> Container:
        port = unused_port()
        local = worker_env(database_url, aws, Path("/unused"), METRICS_PORT=str(port))
        values = {
            **local,
            "RESULT_BUCKET": aws.bucket,
            "RESULT_PREFIX": "cutouts/",
            "DRAIN_SECONDS": str(DRAIN_SECONDS),
            "HEARTBEAT_INTERVAL_SECONDS": "10",
            "INFERENCE_THREADS": "2",
            "LOG_LEVEL": "info",
            "MAX_ATTEMPTS": "5",
            "EVENTS_TOPIC_ARN": "",  # events off, as Terraform renders it without a topic
        }
        environment = {
            **task_environment(values),
            "DATABASE_URL": database_url,  # a secret in the task definition
            "AWS_ENDPOINT_URL": aws.endpoint,
            "WAIT_TIME_SECONDS": "1",  # the task's 20 s long poll would slow every stop here
            **FAKE_CREDENTIALS,
            **overrides,
        }
        name = f"iw-test-{uuid.uuid4().hex[:10]}"
        names.append(name)
        env_flags = [
            flag for key, value in environment.items() for flag in ("-e", f"{key}={value}")
        ]
        result = await podman(
            "run", "--detach", "--name", name, *task_run_options(tmpfs), "--network", network,
            *env_flags, worker_image,
        )  # fmt: skip
        assert result.code == 0, result.output
        return Container(name, f"http://127.0.0.1:{port}")

    yield start
    for name in names:
        await podman("rm", "--force", "--time", "0", name)


async def wait_ready(container: Container) -> None:
    async def ready() -> bool:
        state = await podman("inspect", "--format", "{{.State.Running}}", container.name)
        if state.output.strip() != "true":
            raise AssertionError(f"container exited before ready:\n{await container.logs()}")
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{container.metrics_url}/readyz") as response,
            ):
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(ready, timeout=180, interval=0.5)


async def test_container_completes_a_job_as_the_task_runs_it_and_passes_its_healthcheck(
    start_container: StartContainer, producer: JobClient, aws: Aws
) -> None:
    container = await start_container(EXECUTION_PROVIDER="cpu", REQUIRE_GPU="false")
    await wait_ready(container)

    health = await podman("healthcheck", "run", container.name)
    assert health.code == 0, f"HEALTHCHECK failed: {health.output}\n{await container.logs()}"
    who = await podman("exec", container.name, "id", "-u")
    assert who.output.strip() == "10001"
    readonly = await podman("exec", container.name, "touch", "/opt/models/x")
    assert readonly.code != 0
    assert "Read-only file system" in readonly.output
    # The task definition's tmpfs is noexec: nothing written to /tmp runs.
    noexec = await podman("exec", container.name, "sh", "-c", "cp /bin/true /tmp/t && /tmp/t")
    assert noexec.code != 0
    assert "Permission denied" in noexec.output

    scene, truth = synthetic_scene((640, 480), seed=3)
    await aws.put("in/photo.jpg", scene)
    job = await producer.create_job("in/photo.jpg")
    finished = (await wait_finished(producer, [job.id], timeout=120))[job.id]

    assert finished.status is JobStatus.COMPLETED, (finished.error, await container.logs())
    assert finished.result_key is not None
    assert finished.result_key.startswith("cutouts/")
    _, alpha = png_alpha(await aws.get(finished.result_key))
    assert alpha.shape == truth.shape
    assert iou(alpha, truth) > 0.8
    loaded = [e for e in await container.log_events() if e.get("event") == "model loaded"]
    assert loaded, await container.logs()
    assert loaded[0]["provider"] == "CPUExecutionProvider"
    assert "CUDAExecutionProvider" in loaded[0]["available"]  # it is the onnxruntime-gpu build


async def test_podman_stop_drains_the_running_job_and_exits_0(
    start_container: StartContainer, producer: JobClient, aws: Aws, throttled_aws: str
) -> None:
    container = await start_container(
        EXECUTION_PROVIDER="cpu",
        REQUIRE_GPU="false",
        WORKER_CONCURRENCY="1",
        AWS_ENDPOINT_URL=throttled_aws,
    )
    await wait_ready(container)
    await aws.put("in/large.jpg", large_photo())
    job = await producer.create_job("in/large.jpg")

    async def in_flight() -> float:
        return (await scrape(container.metrics_url))["image_worker_jobs_in_flight"]

    await eventually(in_flight, timeout=60, interval=0.05)
    # SIGTERM to tini (PID 1), which forwards it; SIGKILL only after DRAIN_SECONDS.
    stop = await podman("stop", "--time", str(DRAIN_SECONDS), container.name, timeout=120)
    assert stop.code == 0, stop.output

    assert await container.exit_code(timeout=10) == 0, await container.logs()
    row = await producer.get_job(job.id)
    assert row is not None
    assert row.status is JobStatus.COMPLETED, (row.error, await container.logs())
    assert row.result_key is not None
    png_alpha(await aws.get(row.result_key))
    events = await container.log_events()
    stops = [e for e in events if e.get("event") == "stop requested: draining"]
    assert [e["signal"] for e in stops] == ["SIGTERM"]  # forwarded by tini, once
    assert events[-1]["event"] == "worker stopped"


async def test_image_defaults_refuse_to_start_without_a_gpu(
    start_container: StartContainer,
) -> None:
    """The task definition's EXECUTION_PROVIDER=cuda REQUIRE_GPU=true, on a host with no GPU."""
    container = await start_container()
    assert await container.exit_code(timeout=180) == 3, await container.logs()
    errors = [e for e in await container.log_events() if e.get("level") == "error"]
    assert len(errors) == 1, await container.logs()
    assert errors[0]["event"] == "cannot start"
    assert errors[0]["reason"].startswith("REQUIRE_GPU=true but ONNX Runtime runs on CPU")
    # The reason the loader gives, not a guess: here, no driver (the host would mount it).
    assert (
        "no NVIDIA driver in the container (libcuda.so.1: cannot open shared object"
        in (errors[0]["reason"])
    )
    assert "Traceback" not in await container.logs()


async def test_no_network_loads_the_baked_model_then_names_the_first_unreachable_dependency(
    start_container: StartContainer, database_url: str
) -> None:
    container = await start_container("none", EXECUTION_PROVIDER="cpu", REQUIRE_GPU="false")
    assert await container.exit_code(timeout=180) == 3, await container.logs()
    events = await container.log_events()
    names = [e.get("event") for e in events]
    assert "model loaded" in names, await container.logs()  # nothing downloaded at start
    assert names[-1] == "cannot start"
    reason = events[-1]["reason"]
    port = urlsplit(database_url).port
    assert reason.startswith("a dependency is unreachable"), reason
    assert re.search(rf"\b{port}\b", reason), reason  # PostgreSQL, the first one it opens
    assert "Traceback" not in await container.logs()


async def test_without_a_tmpfs_tmp_is_the_image_declared_volume_and_uid_10001_writes_it(
    start_container: StartContainer,
) -> None:
    """Fargate mounts no tmpfs: /tmp is then the volume the image declares (1777, like the
    image's /tmp), not root 0755. Read-only root, the task's user, no --tmpfs."""
    container = await start_container(tmpfs=False, EXECUTION_PROVIDER="cpu", REQUIRE_GPU="false")
    await wait_ready(container)
    mounts = await podman("inspect", "--format", "{{json .Mounts}}", container.name)
    (tmp,) = [m for m in json.loads(mounts.output) if m["Destination"] == "/tmp"]
    assert tmp["Type"] == "volume", tmp
    # The entrypoint (uid 10001) seeded numba's cache there before the worker started.
    probe = await podman(
        "exec", container.name, "sh", "-c",
        "id -u; stat -c '%a %U' /tmp; stat -c '%U' /tmp/numba-cache; touch /tmp/probe && echo ok",
    )  # fmt: skip
    assert probe.code == 0, probe.output
    assert probe.output.split() == ["10001", "1777", "root", "worker", "ok"], probe.output
    readonly = await podman("exec", container.name, "touch", "/home/worker/x")
    assert "Read-only file system" in readonly.output


async def cuda_check(image: str, *hidden: str) -> tuple[int, dict[str, Any]]:
    """`python -m worker.cuda_libs` in the image, with library folders hidden under an empty
    tmpfs (notmpcopyup: podman would otherwise copy the image's files into it)."""
    mounts = [flag for path in hidden for flag in ("--tmpfs", f"{path}:notmpcopyup")]
    result = await podman(
        "run", "--rm", *mounts, "--entrypoint", "python", image, "-m", "worker.cuda_libs",
        timeout=180,
    )  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.startswith("{")]
    assert lines, result.output
    return result.code, json.loads(lines[-1])


async def test_every_library_the_cuda_provider_needs_resolves_after_preload(
    worker_image: str,
) -> None:
    """No GPU here: the CUDA provider's NEEDED libraries, recursively, resolve after
    onnxruntime.preload_dlls() (only the driver, libcuda.so.1, may be missing: the host's)."""
    code, report = await cuda_check(worker_image)
    assert code == 0, report
    assert report["library"].endswith("/onnxruntime/capi/libonnxruntime_providers_cuda.so")
    assert set(report["missing"]) <= {"libcuda.so.1"}, report["missing"]
    assert report["preload_problems"] == []
    for name in ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcudnn.so.9",
                 "libcufft.so.11", "libcurand.so.10"):  # fmt: skip
        assert report["resolved"][name].startswith(f"{NVIDIA}/"), (name, report["resolved"])


async def test_a_missing_cuda_wheel_fails_the_check_and_names_the_library(
    worker_image: str,
) -> None:
    code, report = await cuda_check(worker_image, f"{NVIDIA}/cufft/lib")
    assert code == 1
    assert report["unexpected_missing"] == {"libcufft.so.11": "libonnxruntime_providers_cuda.so"}
    assert any("libcufft.so.11" in line for line in report["preload_problems"])


async def test_preload_failures_are_json_log_events_at_the_worker_start(
    worker_image: str,
) -> None:
    """The same hidden wheel at a real start: ONNX Runtime's printed failure is a JSON event."""
    hidden = await podman(
        "run", "--rm", "--user", "10001:10001", "--tmpfs", f"{NVIDIA}/cufft/lib:notmpcopyup",
        "-e", "DATABASE_URL=postgresql://127.0.0.1:1/none", "-e", "SQS_QUEUE_URL=http://x/q",
        "-e", "AWS_REGION=us-east-1", "--network", "none", worker_image, timeout=180,
    )  # fmt: skip
    assert hidden.code == 3, hidden.output
    events = [json.loads(line) for line in hidden.output.splitlines() if line.startswith("{")]
    preload = [e for e in events if e.get("event") == "CUDA library preload failed"]
    assert preload, hidden.output
    assert preload[0]["level"] == "warning"
    assert "libcufft.so.11" in preload[0]["detail"]
    assert events[-1]["event"] == "cannot start"
    assert events[-1]["reason"].startswith("REQUIRE_GPU=true but ONNX Runtime runs on CPU")


async def test_the_sweep_image_re_sends_a_queue_failed_job_without_the_ml_stack(
    sweep_image: str, database_url: str, aws: Aws
) -> None:
    """The recovery sweep's image, run as recovery.tf's task runs it (uid 10001, read-only root,
    its default command `sweep --emf`), against this session's PostgreSQL and moto."""
    job_id = uuid.uuid4()
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """INSERT INTO image_processing_jobs
                   (id, source_bucket, source_key, status, error, created_at, updated_at)
               VALUES ($1, $2, 'in/x.jpg', 'queue_failed', 'send failed: outage',
                       now() - interval '5 minutes', now() - interval '5 minutes')""",
            job_id,
            aws.bucket,
        )
        environment = {
            "DATABASE_URL": database_url, "SQS_QUEUE_URL": aws.queue_url,
            "AWS_ENDPOINT_URL": aws.endpoint, "AWS_REGION": "us-east-1",
            "SWEEP_GRACE_SECONDS": "60", **FAKE_CREDENTIALS,
        }  # fmt: skip
        flags = [f for key, value in environment.items() for f in ("-e", f"{key}={value}")]
        result = await podman(
            "run", "--rm", "--user", "10001:10001", "--read-only", "--read-only-tmpfs=false",
            "--network", "host", *flags, sweep_image, timeout=120,
        )  # fmt: skip
        assert result.code == 0, result.output
        status = await connection.fetchval(
            "SELECT status FROM image_processing_jobs WHERE id = $1", job_id
        )
        assert status == "pending", result.output
    finally:
        await connection.close()
    assert [json.loads(body)["job_id"] for body in await aws.receive_all()] == [str(job_id)]
    emf = [json.loads(line) for line in result.output.splitlines() if '"_aws"' in line]
    assert emf, result.output  # the metrics line CloudWatch Logs extracts
    heavy = await podman("run", "--rm", "--entrypoint", "python", sweep_image, "-c",
                         "import onnxruntime")  # fmt: skip
    assert "No module named 'onnxruntime'" in heavy.output
