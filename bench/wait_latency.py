"""Wait-latency benchmark: how long after a job's row changes to `completed` does
`wait_for_job` return? LISTEN (the NOTIFY trigger on the job table; both clients) against
today's polling (`get_job` every 0.5 s), over the same number of jobs, in one run, on a local
PostgreSQL. Each job's completion is an UPDATE (what the worker's complete writes) at a random
moment 0.2-1.0 s after its waiter started, 10 jobs at a time; latency is measured from just
before the UPDATE is sent to the moment the waiter returns. Prints p50/p95 of each and the
ratios polling / LISTEN.

    .venv/bin/python bench/wait_latency.py [--jobs 100] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from api_client import ClientSettings, Job, JobClient
from api_client.sync_client import SyncJobClient
from devstack.stack import drop_database, postgres_server, recreate_database
from worker.migrate import migrate_url

CONCURRENT = 10

Waiter = Callable[[uuid.UUID], Awaitable[Job]]


async def poll(client: JobClient, job_id: uuid.UUID, interval: float) -> Job:
    """The polling wait this project had before LISTEN."""
    while True:
        job = await client.get_job(job_id)
        if job is not None and job.status.finished:
            return job
        await asyncio.sleep(interval)


async def one(pool: asyncpg.Pool, wait: Waiter) -> float:
    job_id = uuid.uuid4()
    await pool.execute(
        """INSERT INTO image_processing_jobs (id, source_bucket, source_key, status)
           VALUES ($1, 'photos', 'sources/a.jpg', 'pending')""",
        job_id,
    )
    waiter = asyncio.ensure_future(wait(job_id))
    await asyncio.sleep(random.uniform(0.2, 1.0))
    changed = time.perf_counter()
    await pool.execute(
        """UPDATE image_processing_jobs
              SET status = 'completed', result_bucket = 'photos', result_key = 'cutouts/a.png',
                  completed_at = now(), updated_at = now()
            WHERE id = $1""",
        job_id,
    )
    job = await waiter
    returned = time.perf_counter()
    assert job.status.finished
    return returned - changed


async def measure(pool: asyncpg.Pool, wait: Waiter, jobs: int) -> list[float]:
    latencies: list[float] = []
    for start in range(0, jobs, CONCURRENT):
        batch = min(CONCURRENT, jobs - start)
        latencies += await asyncio.gather(*(one(pool, wait) for _ in range(batch)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(admin_url: str, jobs: int, interval: float) -> None:
    # A thread per concurrent sync waiter (the default executor has fewer on a small machine).
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(CONCURRENT * 2))
    name = f"iw_bench_wait_{uuid.uuid4().hex[:8]}"
    url = await recreate_database(admin_url, name)
    await migrate_url(url)
    settings = ClientSettings(url, "http://127.0.0.1:9/000000000000/unused", None,
                              "us-east-1", "http://127.0.0.1:9")  # fmt: skip
    try:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=CONCURRENT + 2)
        async with JobClient.connect(settings) as client:
            with SyncJobClient.connect(settings) as sync_client:
                results = {
                    f"polling (get_job every {interval:g}s)": await measure(
                        pool, lambda i: poll(client, i, interval), jobs
                    ),
                    "LISTEN, JobClient.wait_for_job": await measure(
                        pool, lambda i: client.wait_for_job(i, timeout=30), jobs
                    ),
                    "LISTEN, SyncJobClient.wait_for_job": await measure(
                        pool,
                        lambda i: asyncio.to_thread(sync_client.wait_for_job, i, timeout=30),
                        jobs,
                    ),
                }
        await pool.close()
    finally:
        await drop_database(admin_url, name)
    print(f"wait latency after the row's change, {jobs} jobs each ({CONCURRENT} at a time)")
    print(f"{'':<38}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}")
    for label, values in results.items():
        p50, p95, mean = percentile(values, 0.5), percentile(values, 0.95), statistics.mean(values)
        print(f"{label:<38}{p50 * 1000:>9.1f}{p95 * 1000:>9.1f}{mean * 1000:>9.1f}")
    baseline = next(iter(results.values()))
    for label, values in list(results.items())[1:]:
        print(f"polling / {label}: p50 {percentile(baseline, 0.5) / percentile(values, 0.5):.1f}x,"
              f" p95 {percentile(baseline, 0.95) / percentile(values, 0.95):.1f}x")  # fmt: skip


def main(jobs: int, interval: float) -> None:
    with postgres_server() as admin_url:
        asyncio.run(run(admin_url, jobs, interval))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.5, help="polling interval, seconds")
    options = parser.parse_args()
    main(options.jobs, options.interval)
