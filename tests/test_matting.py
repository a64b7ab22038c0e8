"""worker.matting on a synthetic scene whose alpha is known: a subject with a soft edge, blended
over a textured backdrop, and a blurred mask as the model would give it. The result is compared
with the true alpha and with rembg's own matting of the same mask."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import binary_erosion

from worker.matting import matte, trimap

SIZE = (320, 240)


def soft_edge_scene(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8, true alpha float 0..1, model-like mask uint8)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    shape = Image.new("L", SIZE, 0)
    ImageDraw.Draw(shape).ellipse((80, 50, 240, 200), fill=255)
    alpha = np.asarray(shape.filter(ImageFilter.GaussianBlur(2)), dtype=np.float64) / 255.0
    ys, xs = np.mgrid[0:height, 0:width]
    backdrop = np.stack(
        [200 + 30 * np.sin(xs / 9.0), 190 + 20 * np.cos(ys / 7.0), 170 + 0 * xs], -1
    )
    subject = np.stack([40 + ys / 8.0, 90 + 0 * ys, 150 - xs / 10.0], -1)
    noise = rng.normal(0, 2.0, (height, width, 3))
    rgb = alpha[..., None] * subject + (1 - alpha[..., None]) * backdrop + noise
    mask = np.asarray(shape.filter(ImageFilter.GaussianBlur(6)))
    return np.clip(rgb, 0, 255).astype(np.uint8), alpha, mask


def test_trimap_is_rembgs() -> None:
    _, _, mask = soft_edge_scene()
    structure = np.ones((10, 10), dtype=np.uint8)
    foreground = binary_erosion(mask > 240, structure=structure)
    background = binary_erosion(mask < 10, structure=structure, border_value=1)
    expected = np.full(mask.shape, 128, dtype=np.uint8)
    expected[foreground] = 255
    expected[background] = 0
    assert (trimap(mask) == expected).all()
    assert (expected == 128).sum() > 5000  # a real band to solve


@pytest.mark.parametrize("size", [1, 2, 3, 7, 10])
def test_trimap_erodes_as_scipy_at_the_borders_and_for_any_size(size: int) -> None:
    rng = np.random.default_rng(size)
    levels = np.array([0, 5, 128, 245, 255], dtype=np.uint8)
    blocks = rng.choice(levels, (8, 8), p=[0.35, 0.05, 0.1, 0.05, 0.45])
    blobs = np.repeat(np.repeat(blocks, 9, axis=0), 9, axis=1)  # regions that survive erosion
    structure = np.ones((size, size), dtype=np.uint8)
    for mask in [blobs[:37, :23], blobs[:5, :41], blobs[3:4, :9], np.full((12, 15), 255)]:
        mask = mask.astype(np.uint8)
        expected = np.full(mask.shape, 128, dtype=np.uint8)
        expected[binary_erosion(mask > 240, structure=structure)] = 255
        expected[binary_erosion(mask < 10, structure=structure, border_value=1)] = 0
        assert (trimap(mask, size) == expected).all()
    assert (trimap(blobs, size) != 128).any()


def test_alpha_is_close_to_the_truth_and_to_rembgs_matting() -> None:
    rgb, truth, mask = soft_edge_scene()
    result = matte(rgb, mask)
    tri = trimap(mask)
    assert result.alpha.dtype == np.uint8
    assert result.alpha.shape == mask.shape
    assert result.foreground.dtype == np.uint8
    assert result.foreground.shape == rgb.shape
    assert (result.alpha[tri == 255] == 255).all()
    assert (result.alpha[tri == 0] == 0).all()

    band = tri == 128
    error = np.abs(result.alpha / 255.0 - truth)[band]
    plain = np.abs(mask / 255.0 - truth)[band]  # what the model's mask alone gives
    assert error.mean() < 0.03
    assert error.mean() < plain.mean() / 3

    rembg_bg = pytest.importorskip("rembg.bg")
    reference = np.asarray(
        rembg_bg.alpha_matting_cutout(Image.fromarray(rgb), Image.fromarray(mask), 240, 10, 10)
    )[..., 3]
    difference = np.abs(result.alpha.astype(np.int16) - reference)
    assert difference.mean() <= 2
    assert np.percentile(difference, 99) <= 16


def test_foreground_removes_the_backdrop_from_the_edge() -> None:
    rgb, truth, mask = soft_edge_scene()
    result = matte(rgb, mask)
    edge = (truth > 0.3) & (truth < 0.7) & (trimap(mask) == 128)
    # The subject is blue-ish and the backdrop warm: the observed edge mixes both, the estimated
    # foreground should be nearer the subject's colour than the image is.
    ys, xs = np.nonzero(edge)
    subject = np.stack([40 + ys / 8.0, 90 + 0 * ys, 150 - xs / 10.0], -1)
    observed = np.abs(rgb[edge].astype(np.float64) - subject).mean()
    estimated = np.abs(result.foreground[edge].astype(np.float64) - subject).mean()
    assert estimated < observed / 2
    sure = trimap(mask) != 128
    assert (result.foreground[sure] == rgb[sure]).all()
    whole = (result.alpha == 0) | (result.alpha == 255)
    assert (whole & ~sure).any()  # unknown pixels whose alpha came out whole
    assert (result.foreground[whole] == rgb[whole]).all()


def test_mask_without_an_unknown_band_is_returned_as_is() -> None:
    rgb = np.full((60, 80, 3), 120, dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=np.uint8)
    result = matte(rgb, mask)
    assert (result.alpha == 0).all()
    assert (result.foreground == rgb).all()


def test_mask_without_sure_pixels_is_the_alpha() -> None:
    rgb, _, _ = soft_edge_scene()
    mask = np.full(rgb.shape[:2], 128, dtype=np.uint8)
    mask[::7, ::5] = 90
    result = matte(rgb, mask)
    assert (result.alpha == mask).all()
    assert (result.foreground == rgb).all()


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="do not match"):
        matte(np.zeros((10, 10, 3), dtype=np.uint8), np.zeros((10, 11), dtype=np.uint8))
