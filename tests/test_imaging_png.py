"""The worker's own PNG writer for RGBA cut-outs and RGB composites: Pillow (and so any reader)
decodes exactly the pixels written, at every size and level, with the source's ICC profile kept."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from worker.imaging import encode_png


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("size", [(1, 1), (7, 1), (1, 130), (333, 129), (64, 64)])
@pytest.mark.parametrize("level", [0, 1, 9])
@pytest.mark.parametrize("mode", ["RGBA", "RGB"])
def test_rgba_and_rgb_round_trip_exactly(size: tuple[int, int], level: int, mode: str) -> None:
    rng = np.random.default_rng(size[0] * 1000 + size[1] + level)
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    result = decoded(encode_png(Image.fromarray(pixels, mode), compress_level=level))
    assert result.format == "PNG"
    assert result.mode == mode
    assert np.array_equal(np.asarray(result), pixels)


def test_icc_profile_is_kept() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    image = Image.new("RGBA", (16, 8), (10, 20, 30, 40))
    image.info["icc_profile"] = profile
    assert decoded(encode_png(image, compress_level=1)).info["icc_profile"] == profile


def test_other_modes_go_through_pillow() -> None:
    gray = Image.fromarray(np.arange(200, dtype=np.uint8).reshape(10, 20), "L")
    result = decoded(encode_png(gray, compress_level=1))
    assert result.mode == "L"
    assert np.array_equal(np.asarray(result), np.asarray(gray))
