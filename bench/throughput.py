"""Throughput benchmark: a plain `rembg.remove` loop (the baseline) against the real worker
daemon draining the same images as jobs through moto SQS/S3 and PostgreSQL, in one run on one
machine. Prints images/s and their ratio, light-load latency, per-stage time shares, both sides'
peak RSS and their ratio, RSS growth, CPU seconds per job of the worker, moto and PostgreSQL, and
checks that every worker alpha mask equals the baseline's (max abs difference <= 1).

    .venv/bin/python bench/throughput.py [--images 200] [--jobs 1000] [--env KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devstack.stack import moto_server, postgres_server, provision, sample_photos  # noqa: E402
from jobcore.jobs import encode_message  # noqa: E402
from jobcore.sqs import call_in_batches  # noqa: E402
from tests.helpers import scrape, synthetic_scene  # noqa: E402

SIZE = (1600, 1200)
COUNT = "image_worker_stage_duration_seconds_count"
MODEL_HOME = Path(os.environ.get("U2NET_HOME", str(REPO / ".models")))


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


def run_baseline(photos: list[bytes]) -> dict[str, Any]:
    os.environ["U2NET_HOME"] = str(MODEL_HOME)
    from rembg import new_session, remove

    session = new_session("u2netp")
    remove(photos[0], session=session)  # warm-up, as the worker does
    alphas, times = [], []
    started = time.perf_counter()
    for data in photos:
        begin = time.perf_counter()
        result = remove(data, session=session)
        times.append(time.perf_counter() - begin)
        assert isinstance(result, bytes)
        alphas.append(alpha_of(result))
    elapsed = time.perf_counter() - started
    return {
        "images": len(photos),
        "seconds": elapsed,
        "images_per_second": len(photos) / elapsed,
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
) -> dict[str, Any]:
    import aioboto3
    import aiohttp
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
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"{url}/readyz") as response:
                            if response.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if process.returncode is not None:
                        raise RuntimeError("worker exited during start")
                    await asyncio.sleep(0.2)

            ids = [uuid.uuid4() for _ in range(jobs)]
            await pool.executemany(
                "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
                " VALUES ($1, 'bench', $2)",
                [(job_id, f"src/{i % len(photos)}.jpg") for i, job_id in enumerate(ids)],
            )
            rss_at_100 = None
            worker_cpu, bench_cpu = cpu_seconds(process.pid), own_cpu_seconds()
            database_at_start = await database_cpu(pool)
            started = time.perf_counter()
            sent = await call_in_batches(
                ids,
                entry=lambda index, job_id: {"Id": index, "MessageBody": encode_message(job_id)},
                key=lambda job_id: job_id,
                call=lambda entries: sqs.send_message_batch(
                    QueueUrl=queues.queue_url, Entries=entries
                ),
                verb="send",
            )
            if sent.failed:
                reason = next(iter(sent.failed.values()))
                raise RuntimeError(f"{len(sent.failed)} messages not sent: {reason}")
            while True:
                done = await pool.fetchval(
                    "SELECT count(*) FROM image_processing_jobs WHERE status = 'completed'"
                )
                if rss_at_100 is None and done >= min(100, jobs):
                    rss_at_100 = rss_mib(process.pid)
                if done >= jobs:
                    break
                failed = await pool.fetchval(
                    "SELECT count(*) FROM image_processing_jobs WHERE status = 'failed'"
                )
                if failed:
                    raise RuntimeError(f"{failed} jobs failed")
                await asyncio.sleep(0.05)
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

            latencies = []
            for index in range(latency_jobs):
                job_id = uuid.uuid4()
                await pool.execute(
                    "INSERT INTO image_processing_jobs (id, source_bucket, source_key)"
                    " VALUES ($1, 'bench', $2)",
                    job_id,
                    f"src/{index % len(photos)}.jpg",
                )
                sent = time.perf_counter()
                body = encode_message(job_id)
                await sqs.send_message(QueueUrl=queues.queue_url, MessageBody=body)
                latencies.append(await completed_after(pool, job_id, sent))

            alphas = []
            for job_id in ids[: len(photos)]:
                response = await s3.get_object(Bucket="bench", Key=f"cutouts/{job_id}.png")
                async with response["Body"] as body:
                    alphas.append(alpha_of(await body.read()))
        finally:
            if process.returncode is None:
                process.terminate()
                await process.wait()
            await pool.close()

    stages = {
        key.split('"')[1]: value
        for key, value in metrics.items()
        if key.startswith("image_worker_stage_duration_seconds_sum")
    }
    total_stage = sum(stages.values()) or 1.0
    return {
        "images": jobs,
        "seconds": elapsed,
        "images_per_second": jobs / elapsed,
        "latency_p50": statistics.median(latencies),
        "latency_p95": float(np.percentile(latencies, 95)),
        "stage_share": {stage: value / total_stage for stage, value in stages.items()},
        "stage_mean_ms": {
            stage: 1000 * value / max(1, metrics[f'{COUNT}{{stage="{stage}"}}'])
            for stage, value in stages.items()
        },
        "model_run_ms": 1000
        * metrics["image_worker_inference_seconds_sum"]
        / max(1, metrics["image_worker_inference_seconds_count"]),
        "cpu_seconds_per_job": {name: seconds / jobs for name, seconds in cpu.items()},
        "rss_at_100_mib": rss_at_100,
        "rss_end_mib": rss_end,
        "peak_rss_mib": peak,
        "alphas": alphas,
    }


async def completed_after(pool: Any, job_id: uuid.UUID, sent: float) -> float:
    """Seconds from `sent` until the job's row says completed (polled every 5 ms)."""
    query = "SELECT status FROM image_processing_jobs WHERE id = $1"
    while (await pool.fetchval(query, job_id)) != "completed":  # noqa: ASYNC110 - polling a row
        await asyncio.sleep(0.005)
    return time.perf_counter() - sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="distinct photos (baseline loop)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs the worker drains")
    parser.add_argument("--latency-jobs", type=int, default=20)
    parser.add_argument("--env", action="append", default=[], help="worker setting KEY=VALUE")
    parser.add_argument("--skip-baseline-after", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)

    photos = make_photos(args.images)
    mean_kib = sum(map(len, photos)) / len(photos) / 1024
    print(f"{len(photos)} photos of {SIZE[0]}x{SIZE[1]}, {mean_kib:.0f} KiB mean", flush=True)
    baseline = run_baseline(photos)
    print(f"baseline: {baseline['images_per_second']:.2f} images/s", flush=True)
    jobs = max(args.jobs, len(photos))
    with postgres_server() as admin_url, moto_server() as endpoint:
        worker = asyncio.run(
            run_worker((admin_url, endpoint), photos, jobs, args.latency_jobs, extra_env)
        )

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


if __name__ == "__main__":
    sys.exit(main())
