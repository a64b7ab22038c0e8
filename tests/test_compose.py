"""The recipe's pixel stages on their own: matting colours, luma, sizes, the gate's rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from jobcore.recipe import Recipe
from worker import matting
from worker.compose import Box, NoSubject, check_subject, compose, subject_luma
from worker.imaging import DecodedImage


def photo(size: tuple[int, int] = (96, 72)) -> tuple[Image.Image, Image.Image]:
    """A dark disc on a light backdrop with a soft-edged mask."""
    image = Image.new("RGB", size, (230, 225, 215))
    mask = Image.new("L", size, 0)
    box = (size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4)
    ImageDraw.Draw(image).ellipse(box, fill=(50, 40, 30))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return image, mask.filter(ImageFilter.GaussianBlur(2))


def decoded(image: Image.Image) -> DecodedImage:
    return DecodedImage(rgb=image.copy(), alpha=None, source_format="PNG")


def test_matting_takes_the_mattes_alpha_and_its_foreground_in_the_partial_band() -> None:
    image, mask = photo()
    expected = matting.matte(np.asarray(image), np.asarray(mask))
    result = compose(decoded(image), mask, Recipe(matting=True), png_compress_level=1)
    out = np.asarray(Image.open(io.BytesIO(result.outputs[0].data)))
    assert np.array_equal(out[..., 3], expected.alpha)
    band = (expected.alpha > 0) & (expected.alpha < 255)
    assert band.any()
    assert np.array_equal(out[..., :3][band], expected.foreground[band])
    solid = expected.alpha == 255
    assert np.array_equal(out[..., :3][solid], np.asarray(image)[solid])


def test_luma_is_alpha_weighted_and_equals_the_seeds_mean_for_a_hard_mask() -> None:
    image, soft = photo()
    hard = soft.point(lambda v: 255 if v >= 128 else 0)
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert subject_luma(image, hard) == pytest.approx(pixels[np.asarray(hard) > 0].mean())
    # A faint haze over the backdrop barely moves the weighted mean; the seed's would jump.
    haze = Image.fromarray(np.maximum(np.asarray(hard), 3).astype(np.uint8))
    assert subject_luma(image, haze) < 80
    assert pixels[np.asarray(haze) > 0].mean() > 128


def test_max_size_never_upscales_and_keeps_the_aspect() -> None:
    image, mask = photo((400, 300))
    small = compose(decoded(image), mask, Recipe(max_size=100, thumbnails=(50, 1000)),
                    png_compress_level=1)  # fmt: skip
    assert [(o.name, o.width, o.height) for o in small.outputs] == [
        ("image", 100, 75),
        ("thumb-50", 50, 38),
        ("thumb-1000", 100, 75),  # from the bounded result, never upscaled
    ]
    same = compose(decoded(image), mask, Recipe(max_size=1000), png_compress_level=1)
    assert (same.outputs[0].width, same.outputs[0].height) == (400, 300)


def test_padding_is_clamped_to_the_image() -> None:
    assert Box(5, 10, 50, 60).padded(20, (64, 64)) == Box(0, 0, 64, 64)
    assert Box(30, 30, 40, 40).padded(5, (64, 64)) == Box(25, 25, 45, 45)


def test_gate_rules() -> None:
    _, mask = photo()
    check_subject(mask, 0.99, None, "u2netp")
    with pytest.raises(NoSubject, match=r"peak confidence 0\.010 is under 0\.2"):
        check_subject(mask, 0.01, None, "u2netp")
    with pytest.raises(NoSubject, match="no pixel of isnet's mask at alpha >= 32"):
        check_subject(Image.new("L", (64, 48), 20), None, None, "isnet")
    with pytest.raises(
        NoSubject, match=r"box is \d+x\d+ px at \(\d+, \d+\), under min_subject_px=60"
    ):
        check_subject(mask, 0.99, 60, "u2netp")
    check_subject(mask, 0.99, 30, "u2netp")
