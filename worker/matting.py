"""Alpha matting: refine the model's mask at the subject's edge (hair, fur, soft edges).

The interface the recipe stage calls is `matte(rgb, mask) -> Matte`. This implementation is
rembg's own `alpha_matting_cutout`, step for step (trimap from the thresholded and eroded mask,
pymatting's closed-form alpha over the whole image, then its multilevel foreground estimate): the
reference that any faster matting is measured against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOREGROUND_THRESHOLD = 240
BACKGROUND_THRESHOLD = 10
ERODE_SIZE = 10


@dataclass(frozen=True, slots=True)
class Matte:
    alpha: np.ndarray  # uint8, H x W
    foreground: np.ndarray  # uint8, H x W x 3: the subject's colours without the background's


def trimap(mask: np.ndarray, erode_size: int = ERODE_SIZE) -> np.ndarray:
    """uint8 trimap: 255 sure subject, 0 sure background, 128 unknown (rembg's rule)."""
    from scipy.ndimage import binary_erosion

    structure = np.ones((erode_size, erode_size), dtype=np.uint8) if erode_size > 0 else None
    is_foreground = binary_erosion(mask > FOREGROUND_THRESHOLD, structure=structure)
    is_background = binary_erosion(mask < BACKGROUND_THRESHOLD, structure=structure, border_value=1)
    result = np.full(mask.shape, 128, dtype=np.uint8)
    result[is_foreground] = 255
    result[is_background] = 0
    return result


def matte(rgb: np.ndarray, mask: np.ndarray) -> Matte:
    """`rgb` uint8 H x W x 3, `mask` uint8 H x W (the model's mask at the image's size)."""
    from pymatting import estimate_alpha_cf, estimate_foreground_ml

    image = rgb / 255.0
    alpha = estimate_alpha_cf(image, trimap(mask) / 255.0)
    foreground = estimate_foreground_ml(image, alpha)
    return Matte(
        alpha=np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8),
        foreground=np.clip(foreground * 255 + 0.5, 0, 255).astype(np.uint8),
    )
