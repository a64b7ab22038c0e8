"""Inputs for the hostile-input tests: odd but valid formats, and broken files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from tests.helpers import synthetic_scene

EXIF_ORIENTATION = 0x0112


def upright_scene() -> tuple[Image.Image, np.ndarray]:
    """A portrait scene (480x640) with an off-centre object, so rotations are detectable."""
    data, truth = synthetic_scene((480, 640), seed=7, box=(0.1, 0.1, 0.55, 0.5))
    return Image.open(io.BytesIO(data)).convert("RGB"), truth


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def exif_rotated_jpeg() -> tuple[bytes, np.ndarray]:
    """Pixels stored sideways with EXIF Orientation=6: viewers (and the worker) turn it upright."""
    upright, truth = upright_scene()
    stored = upright.rotate(90, expand=True)  # 640x480 on disk
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return encode(stored, "JPEG", quality=92, exif=exif.tobytes()), truth


def cmyk_jpeg() -> tuple[bytes, np.ndarray]:
    upright, truth = upright_scene()
    return encode(upright.convert("CMYK"), "JPEG", quality=92), truth


def png_16bit() -> tuple[bytes, np.ndarray]:
    upright, truth = upright_scene()
    wide = np.asarray(upright.convert("L")).astype(np.uint16) * 257
    sixteen = Image.fromarray(wide)
    assert sixteen.mode == "I;16"
    return encode(sixteen, "PNG"), truth


def animated_gif() -> tuple[bytes, np.ndarray]:
    upright, truth = upright_scene()
    noise = Image.effect_noise(upright.size, 80).convert("RGB")
    data = encode(upright, "GIF", save_all=True, append_images=[noise], duration=100, loop=0)
    return data, truth


def rgba_png_with_transparent_band() -> tuple[bytes, np.ndarray]:
    """An RGBA source whose top 40 rows are already transparent: they must stay so."""
    upright, truth = upright_scene()
    rgba = upright.convert("RGBA")
    alpha = np.full(upright.size[::-1], 255, dtype=np.uint8)
    alpha[:40, :] = 0
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG"), truth


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    data, _ = synthetic_scene((640, 480), seed=5)
    return data[: len(data) // 2]
