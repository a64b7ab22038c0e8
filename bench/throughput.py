"""Throughput benchmark: a plain `rembg.remove` loop (the baseline) against the real worker
daemon draining the same images as jobs through moto SQS/S3 and PostgreSQL, in one run on one
machine. Prints images/s and their ratio, light-load latency, per-stage time shares, both sides'
peak RSS and their ratio, RSS growth, CPU seconds per job of the worker, moto and PostgreSQL, and
checks that every worker alpha mask equals the baseline's (max abs difference <= 1).

`--recipe seed` runs the recipe of the system this project replaces instead (alpha matting,
background black or white by the subject's luma, 300 px JPEG thumbnail): the loop does it with
`rembg.remove(..., alpha_matting=True)`, the composite and the thumbnail; the worker's jobs carry
the recipe (`NewJob(..., recipe=SEED_RECIPE)` through `JobClient.create_jobs`). It prints both
sides' images/s, CPU and peak RSS, the alpha error of the worker's matting against rembg's
(mean and p99 over all pixels), how far the worker's output pixels are from the loop's, and the
cost per 1000 images on Fargate beside the seed's Lambda.

    .venv/bin/python -m bench.throughput [--images 200] [--jobs 1000] [--env KEY=VALUE ...]
    .venv/bin/python -m bench.throughput --recipe seed [--images 20] [--jobs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from api_client.client import JobClient
from api_client.creation import NewJob
from api_client.settings import ClientSettings
from devstack.probes import scrape
from devstack.scenes import synthetic_scene
from devstack.stack import moto_server, postgres_server, provision, sample_photos
from jobcore.jobs import encode_message
from jobcore.recipe import Recipe
from jobcore.sqs import call_in_batches

REPO = Path(__file__).resolve().parents[1]

SIZE = (1600, 1200)
COUNT = "image_worker_stage_duration_seconds_count"
MODEL_HOME = Path(os.environ.get("U2NET_HOME", str(REPO / ".models")))

# The seed's recipe (what the system users run today does): matting, black or white by luma,
# 300 px JPEG preview.
SEED_RECIPE = Recipe(matting=True, background="auto", thumbnails=(300,))
SEED_THUMBNAIL = 300
SEED_THUMBNAIL_QUALITY = 85
# AWS Fargate, us-east-1, Linux/x86, on-demand: the published prices of 2024-2025 (not re-checked
# from this machine, which has no internet access): per vCPU-hour and per GB-hour.
FARGATE_VCPU_HOUR = 0.04048
FARGATE_GB_HOUR = 0.004445
FARGATE_VCPUS = 2  # a task like the benchmark machine; 2 vCPU allows 4 to 16 GB
FARGATE_MIN_GB = 4
# The seed's Lambda: 155 s per image at 7 GB (7168 MB), $0.0000166667 per GB-second.
LAMBDA_GB_SECOND = 0.0000166667
SEED_LAMBDA_PER_1000 = 1000 * 155 * 7 * LAMBDA_GB_SECOND


def make_photos(count: int, seed: int = 0) -> list[bytes]:
    """Realistic 1600x1200 JPEGs: crops and flips of scikit-image's photos, and synthetic scenes."""
    rng = np.random.default_rng(seed)
    sources = [Image.open(p).convert("RGB") for p in sample_photos()]
    photos = []
    for index in range(count):
        if index % 4 == 3:
            data, _ = synthetic_scene(SIZE, seed=index)
            photos.append(data)
            continue
        source = sources[index % len(sources)]
        scale = rng.uniform(1.0, 1.3)
        width, height = source.size
        crop_w, crop_h = int(width / scale), int(height / scale)
        left = int(rng.integers(0, width - crop_w + 1))
        top = int(rng.integers(0, height - crop_h + 1))
        image = source.crop((left, top, left + crop_w, top + crop_h))
        image = ImageOps.fit(image, SIZE, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def alpha_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).getchannel("A"))


def seed_recipe(data: bytes, session: Any) -> tuple[np.ndarray, bytes, bytes]:
    """The seed's worker on one photo: rembg with alpha matting, the cut-out pasted on black or
    white by the subject's luma, PNG at the original size and a 300 px JPEG thumbnail. Returns
    the alpha and both files."""
    from rembg import remove

    cutout = remove(Image.open(io.BytesIO(data)), session=session, alpha_matting=True)
    assert isinstance(cutout, Image.Image)
    rgba = np.asarray(cutout.convert("RGBA"))
    alpha = rgba[..., 3]
    subject = rgba[..., :3][alpha > 0].astype(np.float64)
    luma = float((subject @ [0.299, 0.587, 0.114]).mean()) if subject.size else 0.0
    colour = (0, 0, 0, 255) if luma < 128 else (255, 255, 255, 255)
    flat = Image.alpha_composite(Image.new("RGBA", cutout.size, colour), cutout.convert("RGBA"))
    flat = flat.convert("RGB")
    main, preview = io.BytesIO(), io.BytesIO()
    flat.save(main, format="PNG")
    thumbnail = flat.copy()
    thumbnail.thumbnail((SEED_THUMBNAIL, SEED_THUMBNAIL))
    thumbnail.save(preview, format="JPEG", quality=SEED_THUMBNAIL_QUALITY)
    return alpha.copy(), main.getvalue(), preview.getvalue()


def run_baseline(photos: list[bytes], recipe: str = "default") -> dict[str, Any]:
    os.environ["U2NET_HOME"] = str(MODEL_HOME)
    from rembg import new_session, remove

    session = new_session("u2netp")
    remove(photos[0], session=session)  # warm-up, as the worker does
    alphas, times, outputs = [], [], []
    started, cpu_started = time.perf_counter(), own_cpu_seconds()
    for data in photos:
        begin = time.perf_counter()
        if recipe == "seed":
            alpha, main, _ = seed_recipe(data, session)
            alphas.append(alpha)
            outputs.append(np.asarray(Image.open(io.BytesIO(main)).convert("RGB")))
            times.append(time.perf_counter() - begin)
            continue
        result = remove(data, session=session)
        times.append(time.perf_counter() - begin)
        assert isinstance(result, bytes)
        alphas.append(alpha_of(result))
    elapsed = time.perf_counter() - started
    return {
        "images": len(photos),
        "seconds": elapsed,
        "images_per_second": len(photos) / elapsed,
        "cpu_seconds_per_image": (own_cpu_seconds() - cpu_started) / len(photos),
        "outputs": outputs,
        "per_image_mean": statistics.fmean(times),
        "per_image_p50": statistics.median(times),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "alphas": alphas,
    }


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def database_cpu(pool: Any) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend serving the bench database (worker and bench)."""
    query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    return {row["pid"]: cpu_seconds(row["pid"]) for row in await pool.fetch(query)}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_worker(
    stack: tuple[str, str],
    photos: list[bytes],
    jobs: int,
    latency_jobs: int,
    extra_env: dict[str, str],
    recipe: Recipe | None = None,
) -> dict[str, Any]:
    import aioboto3
    import asyncpg

    admin_url, endpoint = stack
    database_url, queues = await provision(
        admin_url, endpoint, database="image_worker_bench", queue="bench", bucket="bench"
    )
    session = aioboto3.Session()
    async with (
        session.client("sqs", endpoint_url=endpoint) as sqs,
        session.client("s3", endpoint_url=endpoint) as s3,
    ):
        for index, data in enumerate(photos):
            await s3.put_object(Bucket="bench", Key=f"src/{index}.jpg", Body=data)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
        client = JobClient(
            ClientSettings(database_url, queues.queue_url, "bench", "us-east-1", endpoint),
            pool,
            sqs,
        )
        port = 19100
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "SQS_QUEUE_URL": queues.queue_url,
            "AWS_ENDPOINT_URL": endpoint,
            "U2NET_HOME": str(MODEL_HOME),
            "METRICS_PORT": str(port),
            "METRICS_HOST": "127.0.0.1",
            "LOG_LEVEL": "warning",
            **extra_env,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run", env=env
        )
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_ready(url, process)
            ids = await insert_rows(pool, len(photos), jobs) if recipe is None else []
            worker_cpu, bench_cpu = cpu_seconds(process.pid), own_cpu_seconds()
            database_at_start = await database_cpu(pool)
            started = time.perf_counter()
            if recipe is None:
                await send_messages(sqs, queues.queue_url, ids)
            else:  # the producer's API, which stores the recipe on each row and sends
                ids = await create_with_recipe(client, len(photos), jobs, recipe)
            rss_at_100 = await drain(pool, jobs, process.pid)
            elapsed = time.perf_counter() - started
            database_end = await database_cpu(pool)
            cpu = {  # CPU seconds spent during the drain, per process
                "worker": cpu_seconds(process.pid) - worker_cpu,
                "moto and bench driver": own_cpu_seconds() - bench_cpu,
                "postgresql": sum(
                    seconds - database_at_start.get(pid, 0.0)
                    for pid, seconds in database_end.items()
                ),
            }
            rss_end = rss_mib(process.pid)
            peak = rss_mib(process.pid, "VmHWM")
            metrics = await scrape(url)
            latencies = [
                await one_job_latency(client, pool, sqs, queues.queue_url, len(photos), i, recipe)
                for i in range(latency_jobs)
            ]
            alphas, results = await fetch_results(pool, s3, ids[: len(photos)], recipe)
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()
            await pool.close()
    return {
        "images": jobs,
        "seconds": elapsed,
        "images_per_second": jobs / elapsed,
        "latency_p50": statistics.median(latencies),
        "latency_p95": float(np.percentile(latencies, 95)),
        **stage_figures(metrics),
        "cpu_seconds_per_job": {name: seconds / jobs for name, seconds in cpu.items()},
        "rss_at_100_mib": rss_at_100,
        "rss_end_mib": rss_end,
        "peak_rss_mib": peak,
        "alphas": alphas,
        "results": results,
    }


async def wait_ready(url: str, process: asyncio.subprocess.Process) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if process.returncode is not None:
                raise RuntimeError("worker exited during start")
            await asyncio.sleep(0.2)


async def drain(pool: Any, jobs: int, pid: int) -> float | None:
    """Wait until `jobs` rows are completed; the worker's RSS at job 100 (or the last)."""
    rss_at_100 = None
    while True:
        done = await pool.fetchval(
            "SELECT count(*) FROM image_processing_jobs WHERE status = 'completed'"
        )
        if rss_at_100 is None and done >= min(100, jobs):
            rss_at_100 = rss_mib(pid)
        if done >= jobs:
            return rss_at_100
        failed = await pool.fetchval(
            "SELECT count(*) FROM image_processing_jobs WHERE status = 'failed'"
        )
        if failed:
            raise RuntimeError(f"{failed} jobs failed")
        await asyncio.sleep(0.05)


async def one_job_latency(
    client: JobClient,
    pool: Any,
    sqs: Any,
    queue_url: str,
    photos: int,
    index: int,
    recipe: Recipe | None,
) -> float:
    """Seconds from sending one job to its completion, with the worker otherwise idle."""
    if recipe is None:
        (job_id,) = await insert_rows(pool, photos, 1, first=index)
        sent_at = time.perf_counter()
        await sqs.send_message(QueueUrl=queue_url, MessageBody=encode_message(job_id))
    else:
        sent_at = time.perf_counter()
        (job_id,) = await create_with_recipe(client, photos, 1, recipe, first=index)
    return await completed_after(pool, job_id, sent_at)


async def fetch_results(
    pool: Any, s3: Any, ids: list[uuid.UUID], recipe: Recipe | None
) -> tuple[list[np.ndarray], list[tuple[bytes, Any, Any]]]:
    """Each photo's result: its alpha (default run), or the bytes, outputs and background."""
    alphas, results = [], []
    for job_id in ids:
        row = await pool.fetchrow(
            "SELECT result_bucket, result_key, outputs, background_used"
            " FROM image_processing_jobs WHERE id = $1",
            job_id,
        )
        response = await s3.get_object(Bucket=row["result_bucket"], Key=row["result_key"])
        async with response["Body"] as body:
            data = await body.read()
        if recipe is None:
            alphas.append(alpha_of(data))
        else:
            results.append((data, row["outputs"], row["background_used"]))
    return alphas, results


def stage_figures(metrics: dict[str, float]) -> dict[str, Any]:
    """Each stage's share of the time and mean milliseconds, and the model run's mean."""
    stages = {
        key.split('"')[1]: value
        for key, value in metrics.items()
        if key.startswith("image_worker_stage_duration_seconds_sum")
    }
    total_stage = sum(stages.values()) or 1.0
    return {
        "stage_share": {stage: value / total_stage for stage, value in stages.items()},
        "stage_mean_ms": {
            stage: 1000 * value / max(1, metrics[f'{COUNT}{{stage="{stage}"}}'])
            for stage, value in stages.items()
        },
        "model_run_ms": 1000
        * metrics["image_worker_inference_seconds_sum"]
        / max(1, metrics["image_worker_inference_seconds_count"]),
    }


async def insert_rows(pool: Any, photos: int, jobs: int, first: int = 0) -> list[uuid.UUID]:
    """Rows inserted directly (the default run), for photos `first`, `first + 1`... cycled."""
    ids = [uuid.uuid4() for _ in range(jobs)]
    await pool.executemany(
        "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
        " VALUES ($1, 'bench', $2)",
        [(job_id, f"src/{(first + i) % photos}.jpg") for i, job_id in enumerate(ids)],
    )
    return ids


async def send_messages(sqs: Any, queue_url: str, ids: list[uuid.UUID]) -> None:
    sent = await call_in_batches(
        ids,
        entry=lambda index, job_id: {"Id": index, "MessageBody": encode_message(job_id)},
        key=lambda job_id: job_id,
        call=lambda entries: sqs.send_message_batch(QueueUrl=queue_url, Entries=entries),
        verb="send",
    )
    if sent.failed:
        reason = next(iter(sent.failed.values()))
        raise RuntimeError(f"{len(sent.failed)} messages not sent: {reason}")


async def create_with_recipe(
    client: JobClient, photos: int, jobs: int, recipe: Recipe, first: int = 0
) -> list[uuid.UUID]:
    """Jobs that carry `recipe`, created as an app would (rows and messages)."""
    keys = [f"src/{(first + i) % photos}.jpg" for i in range(jobs)]
    created = []
    for start in range(0, jobs, 500):
        chunk = keys[start : start + 500]
        created += await client.create_jobs([NewJob(key, "bench", recipe=recipe) for key in chunk])
    unsent = [job for job in created if job.status.value == "queue_failed"]
    if unsent:
        raise RuntimeError(f"{len(unsent)} jobs not sent: {unsent[0].error}")
    return [job.id for job in created]


async def completed_after(pool: Any, job_id: uuid.UUID, sent: float) -> float:
    """Seconds from `sent` until the job's row says completed (polled every 5 ms)."""
    query = "SELECT status FROM image_processing_jobs WHERE id = $1"
    while (await pool.fetchval(query, job_id)) != "completed":  # noqa: ASYNC110 - polling a row
        await asyncio.sleep(0.005)
    return time.perf_counter() - sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", "--photos", type=int, default=200, help="distinct photos (baseline loop)"
    )
    parser.add_argument("--jobs", type=int, help="jobs the worker drains (1000; seed: --images)")
    parser.add_argument("--latency-jobs", type=int, help="one at a time, after (20; seed: 3)")
    parser.add_argument("--recipe", choices=("default", "seed"), default="default")
    parser.add_argument("--env", action="append", default=[], help="worker setting KEY=VALUE")
    parser.add_argument("--skip-baseline-after", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)

    photos = make_photos(args.images)
    mean_kib = sum(map(len, photos)) / len(photos) / 1024
    print(f"{len(photos)} photos of {SIZE[0]}x{SIZE[1]}, {mean_kib:.0f} KiB mean", flush=True)
    if args.recipe == "seed":
        return run_seed(photos, args.jobs or len(photos), args.latency_jobs or 3, extra_env)
    args.jobs = args.jobs or 1000
    args.latency_jobs = 20 if args.latency_jobs is None else args.latency_jobs
    baseline = run_baseline(photos)
    print(f"baseline: {baseline['images_per_second']:.2f} images/s", flush=True)
    jobs = max(args.jobs, len(photos))
    with postgres_server() as admin_url, moto_server() as endpoint:
        worker = asyncio.run(
            run_worker((admin_url, endpoint), photos, jobs, args.latency_jobs, extra_env)
        )

    del baseline["outputs"], worker["results"]
    diffs = [
        int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
        for a, b in zip(baseline.pop("alphas"), worker.pop("alphas"), strict=True)
    ]
    ratio = worker["images_per_second"] / baseline["images_per_second"]
    memory_ratio = worker["peak_rss_mib"] / baseline["peak_rss_mib"]
    growth = (worker["rss_end_mib"] - worker["rss_at_100_mib"]) / worker["rss_at_100_mib"]
    rows = [
        ("baseline images/s (rembg.remove loop)", f"{baseline['images_per_second']:.2f}"),
        (f"worker images/s ({worker['images']} jobs)", f"{worker['images_per_second']:.2f}"),
        ("throughput ratio worker/baseline", f"{ratio:.2f}x"),
        ("baseline per-image time p50", f"{1000 * baseline['per_image_p50']:.0f} ms"),
        ("worker latency p50 / p95 (one job at a time)",
         f"{1000 * worker['latency_p50']:.0f} / {1000 * worker['latency_p95']:.0f} ms"),
        ("worker model run (ONNX Runtime) mean", f"{worker['model_run_ms']:.0f} ms"),
        ("baseline peak RSS", f"{baseline['peak_rss_mib']:.0f} MiB"),
        ("worker peak RSS", f"{worker['peak_rss_mib']:.0f} MiB"),
        ("peak RSS ratio worker/baseline", f"{memory_ratio:.2f}x"),
        (f"worker RSS job 100 -> job {worker['images']}",
         f"{worker['rss_at_100_mib']:.0f} -> {worker['rss_end_mib']:.0f} MiB"
         f" ({100 * growth:+.1f}%)"),
        ("alpha max abs diff vs baseline", f"{max(diffs)} over {len(diffs)} images"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print("stage shares: " + ", ".join(
        f"{stage} {100 * share:.0f}% ({worker['stage_mean_ms'][stage]:.0f} ms)"
        for stage, share in sorted(worker["stage_share"].items(), key=lambda kv: -kv[1])
    ))  # fmt: skip
    print("CPU per job during the drain: " + ", ".join(
        f"{name} {1000 * seconds:.0f} ms" for name, seconds in worker["cpu_seconds_per_job"].items()
    ))  # fmt: skip
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    summary = {"baseline": baseline, "worker": worker, "ratio": ratio, "env": extra_env}
    summary["peak_rss_ratio"] = memory_ratio
    summary["alpha_max_diff"] = max(diffs)
    (results / "throughput.json").write_text(json.dumps(summary, indent=2))
    return 0 if max(diffs) <= 1 else 1


def fargate_per_1000(cpu_seconds_per_image: float, peak_rss_mib: float) -> float:
    """Dollars for 1000 images on a Fargate task of FARGATE_VCPUS vCPUs kept busy, with the
    memory the peak RSS needs (whole GB, at least what that many vCPUs require)."""
    gigabytes = max(FARGATE_MIN_GB, math.ceil(peak_rss_mib / 1024))
    hours = 1000 * cpu_seconds_per_image / FARGATE_VCPUS / 3600
    return hours * (FARGATE_VCPUS * FARGATE_VCPU_HOUR + gigabytes * FARGATE_GB_HOUR)


def worker_alphas(photos: list[bytes]) -> list[np.ndarray]:
    """The alpha the worker's matting gives each photo: its own stages (decode, u2netp mask,
    `matte`) run here, since the seed recipe's output has no alpha channel to read back."""
    from worker import imaging
    from worker.inference import ModelRunner
    from worker.matting import matte
    from worker.settings import Settings

    env = {
        "DATABASE_URL": "postgresql://u@h/db",
        "SQS_QUEUE_URL": "http://127.0.0.1:1/q",
        "U2NET_HOME": str(MODEL_HOME),
        "INFERENCE_THREADS": "1",
    }
    runner = ModelRunner.load(Settings.from_env(env))
    alphas = []
    for data in photos:
        decoded = imaging.decode(data, max_bytes=1 << 30, max_pixels=1 << 30)
        mask = runner.mask_from_output(runner.run(runner.prepare(decoded.rgb)), decoded.rgb.size)
        rgb = np.asarray(decoded.rgb.convert("RGB"))
        alphas.append(matte(rgb, np.asarray(mask)).alpha)
    return alphas


def run_seed(photos: list[bytes], jobs: int, latency_jobs: int, extra_env: dict[str, str]) -> int:
    """The seed recipe: the loop against the worker, alpha error, output pixels and costs."""
    baseline = run_baseline(photos, recipe="seed")
    print(f"baseline (seed recipe): {baseline['images_per_second']:.3f} images/s", flush=True)
    jobs = max(jobs, len(photos))
    with postgres_server() as admin_url, moto_server() as endpoint:
        worker = asyncio.run(
            run_worker(
                (admin_url, endpoint), photos, jobs, latency_jobs, extra_env, recipe=SEED_RECIPE
            )
        )
    loop_alphas, loop_outputs = baseline.pop("alphas"), baseline.pop("outputs")
    results = worker.pop("results")
    del worker["alphas"]

    def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a.astype(np.int16) - b.astype(np.int16)).ravel()

    alpha_error = np.concatenate(
        [difference(a, b) for a, b in zip(worker_alphas(photos), loop_alphas, strict=True)]
    )
    applied = all(used is not None for _, _, used in results)
    output_error = np.concatenate([
        difference(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), loop)
        for (data, _, _), loop in zip(results, loop_outputs, strict=True)
    ])  # fmt: skip
    thumbnails = [
        max(item["width"], item["height"])
        for _, outputs, _ in results
        for item in (json.loads(outputs) if isinstance(outputs, str) else outputs or [])
        if item.get("content_type") == "image/jpeg"
    ]
    worker_cpu = worker["cpu_seconds_per_job"]["worker"]
    ratio = worker["images_per_second"] / baseline["images_per_second"]
    loop_cost = fargate_per_1000(baseline["cpu_seconds_per_image"], baseline["peak_rss_mib"])
    worker_cost = fargate_per_1000(worker_cpu, worker["peak_rss_mib"])
    rows = [
        ("loop images/s (remove(alpha_matting=True) + composite + thumbnail)",
         f"{baseline['images_per_second']:.3f} ({len(photos)} photos)"),
        (f"worker images/s ({worker['images']} jobs with the seed recipe)",
         f"{worker['images_per_second']:.3f}"),
        ("throughput ratio worker/loop", f"{ratio:.2f}x"),
        ("CPU per image: loop / worker process",
         f"{1000 * baseline['cpu_seconds_per_image']:.0f} / {1000 * worker_cpu:.0f} ms"),
        ("worker latency p50 (one job at a time)", f"{1000 * worker['latency_p50']:.0f} ms"),
        ("peak RSS: loop / worker",
         f"{baseline['peak_rss_mib']:.0f} / {worker['peak_rss_mib']:.0f} MiB"),
        ("alpha |worker - rembg| mean / p99, all pixels",
         f"{alpha_error.mean():.2f} / {np.percentile(alpha_error, 99):.0f} (/255)"),
        ("output RGB |worker - loop| mean / p99",
         f"{output_error.mean():.2f} / {np.percentile(output_error, 99):.0f} (/255)"),
        ("recipe applied by the worker (background_used on every row)", str(applied)),
        ("thumbnails' longer side", ", ".join(sorted({str(t) for t in thumbnails})) or "none"),
        (f"Fargate per 1000 images ({FARGATE_VCPUS} vCPU, CPU-bound): loop / worker",
         f"${loop_cost:.2f} / ${worker_cost:.2f}"),
        ("seed's Lambda per 1000 images (155 s at 7 GB)", f"${SEED_LAMBDA_PER_1000:.2f}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if not applied:
        print("the worker did not apply the recipe: its rows have no background_used (a worker"
              " without the recipe stage); the worker side measured the plain cut-out")  # fmt: skip
    print("CPU per job during the drain: " + ", ".join(
        f"{name} {1000 * seconds:.0f} ms" for name, seconds in worker["cpu_seconds_per_job"].items()
    ))  # fmt: skip
    results_dir = REPO / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    summary = {
        "baseline": baseline,
        "worker": worker,
        "ratio": ratio,
        "env": extra_env,
        "recipe_applied": applied,
        "alpha_error_mean": float(alpha_error.mean()),
        "alpha_error_p99": float(np.percentile(alpha_error, 99)),
        "output_error_mean": float(output_error.mean()),
        "fargate_per_1000": {"loop": loop_cost, "worker": worker_cost},
        "lambda_per_1000": SEED_LAMBDA_PER_1000,
    }
    (results_dir / "throughput_seed.json").write_text(json.dumps(summary, indent=2))
    return 0 if alpha_error.mean() <= 2 and np.percentile(alpha_error, 99) <= 16 else 1


if __name__ == "__main__":
    sys.exit(main())
