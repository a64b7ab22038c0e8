"""The decode stage against hostile pixels and profiles: Pillow's bomb check enforces
MAX_IMAGE_PIXELS, ICC profiles are validated and converted or dropped so that the profile a
DecodedImage carries describes its RGB pixels, and grey conversions work in bands."""

from __future__ import annotations

import io
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageCms

from tests import images
from tests.icc import cmyk_profile_to_grey
from worker import imaging
from worker.errors import JobFailed

LIMITS = {"max_bytes": 50 * 1024 * 1024, "max_pixels": 64_000_000}
SRGB_BYTES = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png_icc(data: bytes) -> bytes | None:
    with Image.open(io.BytesIO(data)) as image:
        profile = image.info.get("icc_profile")
        return profile if isinstance(profile, bytes) else None


def _cut_out_png(decoded: imaging.DecodedImage) -> bytes:
    mask = Image.new("L", decoded.rgb.size, 255)
    return imaging.encode_png(imaging.cut_out(decoded, mask), compress_level=1)


def test_a_random_profile_is_dropped() -> None:
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    data = images.encode(image, "PNG", icc_profile=os.urandom(1 << 20))
    decoded = imaging.decode(data, **LIMITS)
    assert decoded.icc_profile is None
    assert "icc_profile" not in decoded.rgb.info
    assert _png_icc(_cut_out_png(decoded)) is None


def test_a_cmyk_source_is_converted_with_its_profile_and_does_not_keep_it() -> None:
    image = Image.new("CMYK", (64, 48), (0, 0, 0, 0))  # no ink: white by Pillow's formula
    data = images.encode(image, "JPEG", icc_profile=cmyk_profile_to_grey())
    decoded = imaging.decode(data, **LIMITS)
    red, green, blue = decoded.rgb.getpixel((10, 10))  # type: ignore[misc]
    assert red == green == blue < 128  # the profile's grey, not Pillow's white
    assert decoded.icc_profile is None
    assert "icc_profile" not in decoded.rgb.info
    png = _cut_out_png(decoded)
    assert _png_icc(png) is None


def test_a_cmyk_source_without_a_profile_uses_pillows_formula() -> None:
    image = Image.new("CMYK", (64, 48), (0, 0, 0, 0))
    decoded = imaging.decode(images.encode(image, "JPEG"), **LIMITS)
    assert decoded.rgb.getpixel((10, 10)) == (255, 255, 255)
    assert decoded.icc_profile is None


def test_an_rgb_profile_on_rgb_pixels_is_kept() -> None:
    image = Image.new("RGBA", (64, 48), (10, 200, 30, 128))
    decoded = imaging.decode(images.encode(image, "PNG", icc_profile=SRGB_BYTES), **LIMITS)
    assert decoded.icc_profile == SRGB_BYTES
    assert _png_icc(_cut_out_png(decoded)) == SRGB_BYTES


def test_a_cmyk_profile_on_rgb_pixels_is_dropped() -> None:
    image = Image.new("RGB", (64, 48), (10, 200, 30))
    data = images.encode(image, "PNG", icc_profile=cmyk_profile_to_grey())
    decoded = imaging.decode(data, **LIMITS)
    assert decoded.icc_profile is None
    assert decoded.rgb.getpixel((5, 5)) == (10, 200, 30)
    assert _png_icc(_cut_out_png(decoded)) is None


def test_pillows_bomb_check_enforces_the_pixel_limit() -> None:
    data = images.png_header_claiming(9000, 9000)  # 81 MP, Pillow warns; over 2x it errors
    with pytest.raises(JobFailed) as refused:
        imaging.decode(data, **LIMITS)
    assert refused.value.failure.code == "too_many_pixels"
    assert "MAX_IMAGE_PIXELS=64000000" in refused.value.failure.reason
    assert LIMITS["max_pixels"] == Image.MAX_IMAGE_PIXELS
    huge = images.png_header_claiming(20000, 20000)
    with pytest.raises(JobFailed, match="MAX_IMAGE_PIXELS"):
        imaging.decode(huge, **LIMITS)


def _reference_gray(pixels: np.ndarray) -> np.ndarray:
    low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
    scaled = (np.nan_to_num(pixels, nan=low) - low) * (255.0 / (high - low))
    return np.asarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))


def test_float_grey_is_scaled_in_bands_like_the_whole_image() -> None:
    rng = np.random.default_rng(3)
    height = 2 * imaging.CONVERT_BAND_PIXELS // 1000 + 7  # three bands of 1000-pixel rows
    pixels = rng.normal(-3.0, 40.0, size=(height, 1000)).astype(np.float32)
    pixels[5, 5] = np.nan
    gray = np.asarray(imaging._to_8bit_gray(Image.fromarray(pixels, mode="F")))
    assert np.abs(gray.astype(int) - _reference_gray(pixels).astype(int)).max() <= 1
    assert gray.min() == 0
    assert gray.max() == 255


def test_16_bit_grey_is_scaled_in_bands() -> None:
    data, _ = images.png_16bit()
    decoded = imaging.decode(data, **LIMITS)
    with Image.open(io.BytesIO(data)) as source:
        expected = (np.asarray(source).astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert np.array_equal(np.asarray(decoded.rgb)[..., 0], expected)


def test_float_grey_conversion_allocates_bands_not_whole_float_copies() -> None:
    side = 4096  # 16.8 MP: a float32 copy of it is 64 MiB
    row = np.linspace(-2.5, 7.0, side, dtype=np.float32)
    image = Image.fromarray(np.tile(row, (side, 1)), mode="F")
    tracemalloc.start()
    try:
        gray = imaging._to_8bit_gray(image)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert gray.size == (side, side)
    # The 8-bit result (1 byte per pixel) and a few bands: half of one float32 copy (4 bytes
    # per pixel); the whole-image conversion made three.
    assert peak < side * side * 2
