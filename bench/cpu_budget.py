"""Per-stage CPU budget: CPU seconds per image for each stage of the worker, measured in
isolation on the benchmark's photos, against the plain `rembg.remove` loop; and the bound that
the machine's cores put on throughput. CPU time, unlike wall time, barely moves when other work
shares the cores.

    .venv/bin/python -m bench.cpu_budget [--images 30] [--run bench/results/throughput.json]

With the results of a bench/throughput.py run (read by default when present), the CPU seconds
per job it measured (worker, moto and bench driver, PostgreSQL) are set beside the stages: the
difference is what runs outside the stages (S3, SQS and PostgreSQL clients, asyncio, metrics in
the worker; the moto and PostgreSQL servers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.throughput import MODEL_HOME, make_photos
from worker import imaging
from worker.inference import ModelRunner
from worker.matting import matte
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]

BASE = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "http://127.0.0.1:1/q"}


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_image(items: list[Any], stage: Callable[[Any], Any]) -> tuple[float, list[Any]]:
    """Median process CPU seconds of `stage` over `items` (process-wide: counts ONNX Runtime's
    intra-op threads), and its results."""
    seconds, results = [], []
    for item in items:
        started = process_cpu()
        results.append(stage(item))
        seconds.append(process_cpu() - started)
    return statistics.median(seconds), results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--run", type=Path, default=REPO / "bench" / "results" / "throughput.json")
    args = parser.parse_args()
    photos = make_photos(args.images)
    env = {**BASE, "U2NET_HOME": str(MODEL_HOME)}
    solo = ModelRunner.load(Settings.from_env({**env, "INFERENCE_THREADS": "1"}))
    single = ModelRunner.load(
        Settings.from_env({**env, "INFERENCE_THREADS": "1", "ORT_INTRA_OP_THREADS": "1"})
    )
    limits = {"max_bytes": 1 << 30, "max_pixels": 1 << 30}
    level = Settings.from_env(env).png_compress_level

    budget: dict[str, float] = {}
    budget["decode"], decoded = per_image(photos, lambda data: imaging.decode(data, **limits))
    budget["preprocess"], inputs = per_image(decoded, lambda d: solo.prepare(d.rgb))
    model_1, outputs = per_image(inputs, single.run)
    model_n, _ = per_image(inputs, solo.run)
    budget["model (1 intra-op thread)"] = model_1
    sized = list(zip(outputs, decoded, strict=True))
    budget["postprocess (mask)"], masks = per_image(
        sized, lambda o: solo.mask_from_output(o[0], o[1].rgb.size)
    )
    pairs = list(zip(decoded, masks, strict=True))
    budget["cut-out"], cutouts = per_image(pairs, lambda p: imaging.cut_out(p[0], p[1]))
    budget["PNG encode"], _ = per_image(
        cutouts, lambda image: imaging.encode_png(image, compress_level=level)
    )
    stages = sum(budget.values())
    # A recipe with matting=True adds this stage (bench/matting.py compares it with rembg's).
    matting_cpu, _ = per_image(
        pairs, lambda p: matte(np.asarray(p[0].rgb.convert("RGB")), np.asarray(p[1]))
    )

    os.environ["U2NET_HOME"] = str(MODEL_HOME)
    from rembg import new_session, remove

    session = new_session("u2netp")
    remove(photos[0], session=session)
    started_wall = time.perf_counter()
    baseline_cpu, _ = per_image(photos, lambda data: remove(data, session=session))
    baseline_wall = (time.perf_counter() - started_wall) / len(photos)

    cores = os.cpu_count() or 1
    width = 44
    print(f"{len(photos)} photos, CPU seconds per image (median), {cores} cores")
    for name, seconds in budget.items():
        print(f"  {name:<{width}} {1000 * seconds:6.0f} ms")
    print(f"  {'stages total':<{width}} {1000 * stages:6.0f} ms")
    print(f"  {'(model with all cores, for latency)':<{width}} {1000 * model_n:6.0f} ms")
    print(f"  {'(matting, recipe matting=True; not above)':<{width}} {1000 * matting_cpu:6.0f} ms"
          f" = +{100 * matting_cpu / stages:.0f} % of the stages")  # fmt: skip
    total = stages
    if args.run.is_file():
        measured = json.loads(args.run.read_text())["worker"]["cpu_seconds_per_job"]
        total = sum(measured.values())
        print(f"measured per job in {args.run.name}: " + ", ".join(
            f"{name} {1000 * seconds:.0f} ms" for name, seconds in measured.items()
        ))  # fmt: skip
        rest = 1000 * (total - stages)
        print(f"  {'outside the stages (clients, servers)':<{width}} {rest:6.0f} ms")
        print(f"  {'total':<{width}} {1000 * total:6.0f} ms")
    print(f"baseline rembg.remove: {1000 * baseline_cpu:.0f} ms CPU, {1000 * baseline_wall:.0f} ms"
          f" wall per image ({1 / baseline_wall:.2f} images/s)")  # fmt: skip
    bound = cores / total
    print(
        f"bound on {cores} cores: {bound:.2f} images/s = {bound * baseline_wall:.2f}x the baseline"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
