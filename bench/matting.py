"""Matting benchmark: the worker's `matte()` against rembg's own `alpha_matting_cutout` on the
benchmark photos (bench/throughput.py's, 1600x1200) with their u2netp masks, in one run. Prints
CPU ms per image of both, the peak RSS each adds, and how far the worker's alpha is from rembg's
(mean and 99th percentile of |difference| over all pixels, in 1/255), beside the same figures
for the model's mask alone (no matting).

    .venv/bin/python -m bench.matting [--photos 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.throughput import MODEL_HOME, make_photos
from worker import imaging
from worker.inference import ModelRunner
from worker.matting import matte, trimap
from worker.settings import Settings

REPO = Path(__file__).resolve().parents[1]

BASE = {"DATABASE_URL": "postgresql://u@h/db", "SQS_QUEUE_URL": "http://127.0.0.1:1/q"}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def masks_of(photos: list[bytes]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rgb, mask) of each photo, the mask being the worker's u2netp mask (rembg's, pixel for
    pixel) at the photo's size."""
    env = {**BASE, "U2NET_HOME": str(MODEL_HOME), "INFERENCE_THREADS": "1"}
    runner = ModelRunner.load(Settings.from_env(env))
    pairs = []
    for data in photos:
        decoded = imaging.decode(data, max_bytes=1 << 30, max_pixels=1 << 30)
        output = runner.run(runner.prepare(decoded.rgb))
        mask = runner.mask_from_output(output, decoded.rgb.size)
        pairs.append((np.asarray(decoded.rgb.convert("RGB")), np.asarray(mask)))
    return pairs


def figures(differences: list[np.ndarray]) -> dict[str, float]:
    pooled = np.concatenate([d.ravel() for d in differences])
    per_photo_p99 = [float(np.percentile(d, 99)) for d in differences]
    return {
        "mean": float(pooled.mean()),
        "p99": float(np.percentile(pooled, 99)),
        "worst_photo_mean": max(float(d.mean()) for d in differences),
        "worst_photo_p99": max(per_photo_p99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=16)
    args = parser.parse_args()
    pairs = masks_of(make_photos(args.photos))
    unknown = [float((trimap(mask) == 128).mean()) for _, mask in pairs]
    print(f"{len(pairs)} photos, unknown band {100 * statistics.fmean(unknown):.1f} % of pixels"
          f" (max {100 * max(unknown):.1f} %)", flush=True)  # fmt: skip

    before = peak_mib()
    fast_alphas, fast_cpu = [], []
    for rgb, mask in pairs:
        started = cpu()
        fast_alphas.append(matte(rgb, mask).alpha)
        fast_cpu.append(cpu() - started)
    fast_peak = peak_mib()
    assert "pymatting" not in sys.modules, "matte() must not import pymatting"

    from rembg.bg import alpha_matting_cutout

    reference_alphas, reference_cpu = [], []
    for index, (rgb, mask) in enumerate(pairs):
        started = cpu()
        cutout = alpha_matting_cutout(Image.fromarray(rgb), Image.fromarray(mask), 240, 10, 10)
        reference_cpu.append(cpu() - started)
        reference_alphas.append(np.asarray(cutout)[..., 3])
        print(f"  rembg photo {index}: {reference_cpu[-1]:.1f} s CPU", flush=True)
    reference_peak = peak_mib()

    def diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.abs(a.astype(np.int16) - b.astype(np.int16))

    worker = figures([diff(a, r) for a, r in zip(fast_alphas, reference_alphas, strict=True)])
    plain = figures([diff(m, r) for (_, m), r in zip(pairs, reference_alphas, strict=True)])
    result: dict[str, Any] = {
        "photos": len(pairs),
        "unknown_fraction_mean": statistics.fmean(unknown),
        "matte_cpu_ms": {
            "mean": 1000 * statistics.fmean(fast_cpu),
            "p50": 1000 * statistics.median(fast_cpu),
            "max": 1000 * max(fast_cpu),
        },
        "rembg_cpu_ms": {
            "mean": 1000 * statistics.fmean(reference_cpu),
            "p50": 1000 * statistics.median(reference_cpu),
            "max": 1000 * max(reference_cpu),
        },
        "peak_rss_mib": {"before": before, "after_matte": fast_peak, "after_rembg": reference_peak},
        "alpha_error_worker_vs_rembg": worker,
        "alpha_error_mask_alone_vs_rembg": plain,
    }
    rows = [
        ("matte() CPU per image mean / p50 / max",
         "{mean:.0f} / {p50:.0f} / {max:.0f} ms".format(**result["matte_cpu_ms"])),
        ("rembg alpha_matting_cutout CPU mean / p50 / max",
         "{mean:.0f} / {p50:.0f} / {max:.0f} ms".format(**result["rembg_cpu_ms"])),
        ("CPU ratio rembg / matte()",
         f"{statistics.fmean(reference_cpu) / statistics.fmean(fast_cpu):.1f}x"),
        ("peak RSS: masks done / + matte() / + rembg",
         f"{before:.0f} / {fast_peak:.0f} / {reference_peak:.0f} MiB"),
        ("alpha |matte - rembg| mean / p99 (all pixels)",
         f"{worker['mean']:.2f} / {worker['p99']:.0f} (/255); targets <= 2 / <= 16"),
        ("  worst photo mean / p99",
         f"{worker['worst_photo_mean']:.2f} / {worker['worst_photo_p99']:.0f} (/255)"),
        ("alpha |mask alone - rembg| mean / p99",
         f"{plain['mean']:.2f} / {plain['p99']:.0f} (/255)"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "matting.json").write_text(json.dumps(result, indent=2))
    return 0 if worker["mean"] <= 2 and worker["p99"] <= 16 else 1


if __name__ == "__main__":
    sys.exit(main())
