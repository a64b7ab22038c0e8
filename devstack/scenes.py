"""Synthetic photos with a known subject, for the local stack, the tests and the benchmarks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synthetic_scene(
    size: tuple[int, int] = (640, 480),
    *,
    seed: int = 0,
    box: tuple[float, float, float, float] = (0.3, 0.2, 0.7, 0.85),
) -> tuple[bytes, np.ndarray]:
    """A product-photo-like scene: one solid, shaded object on a plain light backdrop.
    Returns JPEG bytes and the true foreground mask (bool, H x W)."""
    rng = np.random.default_rng(seed)
    width, height = size
    backdrop = Image.new("RGB", size, (236, 234, 228))
    truth = Image.new("L", size, 0)
    corners = (int(width * box[0]), int(height * box[1]), int(width * box[2]), int(height * box[3]))
    ImageDraw.Draw(truth).rounded_rectangle(corners, radius=min(width, height) // 12, fill=255)
    colour = tuple(int(c) for c in rng.integers(30, 140, size=3))
    shaded = Image.new("RGB", size, colour)
    gradient = Image.linear_gradient("L").resize(size).filter(ImageFilter.GaussianBlur(4))
    shaded = Image.composite(shaded, Image.eval(shaded, lambda v: min(255, v + 60)), gradient)
    backdrop.paste(shaded, mask=truth)
    buffer = io.BytesIO()
    backdrop.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue(), np.asarray(truth) > 127
