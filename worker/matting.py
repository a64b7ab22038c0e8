"""Alpha matting: refine the model's mask at the subject's edge (hair, fur, soft edges).

The interface the recipe stage calls is `matte(rgb, mask) -> Matte`. The trimap is rembg's, pixel
for pixel (mask > 240 sure subject, < 10 sure background, both eroded with a 10 x 10 square), and
the alpha is the same closed-form matting (Levin et al., pymatting's Laplacian: 3 x 3 windows,
epsilon 1e-7) that rembg's `alpha_matting_cutout` solves, but:

- only the unknown pixels are solved: the system is assembled with numpy over the windows that
  touch them (the sure pixels never enter it and keep exactly 255 and 0);
- it is solved at `scale` times lower resolution (block means of the image; a coarse pixel is
  sure only when its whole block is) by a direct sparse solve; the scale grows when the coarse
  system would have more than `MAX_COARSE_UNKNOWNS` unknowns, which bounds time and memory;
- the coarse alpha comes back to full resolution through a guided filter whose guide is the
  image itself (its coefficients at the coarse size, bilinear at the fine unknown pixels);
- the foreground colours are a blur-fusion estimate (Forte and Pitie 2021) whose blurred
  foreground and background come from the coarse grid, only where the alpha is partial; they are
  the image's own colours wherever the alpha is 0 or 255.

numpy and scipy only: no pymatting (numba) at import or at run time. What it costs and how close
it comes to rembg's own matting is in docs/performance.md (`bench/matting.py`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FOREGROUND_THRESHOLD = 240
BACKGROUND_THRESHOLD = 10
ERODE_SIZE = 10
SCALE = 4
EPSILON = 1e-7  # pymatting's default, which rembg uses
CHUNK_PIXELS = 1 << 16
CHUNK_WINDOWS = 1 << 13
MAX_COARSE_UNKNOWNS = 25_000  # bounds the direct solve's time and memory: the scale grows
GUIDE_RADIUS = 1
GUIDE_EPSILON = 1e-4
FUSION_RADII = (90, 6)  # blur-fusion's two box radii at full size (the paper's)

# The 3 x 3 window's pixels as (dy, dx), row by row, and the 5 x 5 stencil a pair of them spans.
_WINDOW = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
_STENCIL = (_WINDOW[None, :, 0] - _WINDOW[:, None, 0] + 2) * 5 + (
    _WINDOW[None, :, 1] - _WINDOW[:, None, 1] + 2
)


@dataclass(frozen=True, slots=True)
class Matte:
    alpha: np.ndarray  # uint8, H x W
    # uint8, H x W x 3: the subject's colours without the background's where the alpha is
    # partial, the image's own elsewhere
    foreground: np.ndarray


def trimap(mask: np.ndarray, erode_size: int = ERODE_SIZE) -> np.ndarray:
    """uint8 trimap: 255 sure subject, 0 sure background, 128 unknown (rembg's rule, pixel for
    pixel: scipy's binary erosion with a square, with the same origin and borders)."""
    foreground = (mask > FOREGROUND_THRESHOLD).view(np.uint8)
    background = (mask < BACKGROUND_THRESHOLD).view(np.uint8)
    if erode_size > 0:
        foreground = _erode(foreground, erode_size, outside=0)
        background = _erode(background, erode_size, outside=1)
    result = np.full(mask.shape, 128, dtype=np.uint8)
    result[foreground.view(bool)] = 255
    result[background.view(bool)] = 0
    return result


def _erode(binary: np.ndarray, size: int, outside: int) -> np.ndarray:
    """Minimum over a size x size square (for an even size, one more pixel before the centre than
    after, as scipy.ndimage places it), `outside` beyond the borders: running minima by doubling
    windows along each axis, a few passes over bytes (scipy.ndimage would cost its import, about
    60 ms of CPU, and more per call)."""
    before = size // 2
    padded = np.pad(binary, ((before, size - 1 - before),) * 2, constant_values=outside)
    return _running_min(_running_min(padded, size).T, size).T


def _running_min(values: np.ndarray, size: int) -> np.ndarray:
    """Minimum of `size` consecutive rows: row i of the result covers rows i .. i + size - 1."""
    window = 1
    while window * 2 <= size:
        values = np.minimum(values[:-window], values[window:])
        window *= 2
    rest = size - window
    if rest:
        values = np.minimum(values[:-rest], values[rest:])
    return values


def matte(
    rgb: np.ndarray, mask: np.ndarray, *, scale: int = SCALE, erode_size: int = ERODE_SIZE
) -> Matte:
    """`rgb` uint8 H x W x 3, `mask` uint8 H x W (the model's mask at the image's size)."""
    if rgb.shape[:2] != mask.shape or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image {rgb.shape} and mask {mask.shape} do not match")
    tri = trimap(mask, erode_size)
    unknown_y, unknown_x = np.nonzero(tri == 128)
    alpha = np.where(tri == 255, np.uint8(255), np.uint8(0))
    foreground = rgb.copy()
    if unknown_y.size == 0:
        return Matte(alpha=alpha, foreground=foreground)
    # Work on the unknown pixels' box, widened by a few coarse pixels and aligned to the blocks.
    margin = 4 * scale
    top = max(0, (int(unknown_y.min()) - margin) // scale * scale)
    left = max(0, (int(unknown_x.min()) - margin) // scale * scale)
    bottom = min(tri.shape[0], int(unknown_y.max()) + 1 + margin)
    right = min(tri.shape[1], int(unknown_x.max()) + 1 + margin)
    while True:
        coarse_rgb, coarse_tri = _downscale(
            rgb[top:bottom, left:right], tri[top:bottom, left:right], scale
        )
        if np.count_nonzero(coarse_tri == 128) <= MAX_COARSE_UNKNOWNS:
            break
        scale += 1
    if not (coarse_tri != 128).any():
        # Nothing sure to propagate from (a mask that is grey everywhere): the system is
        # singular, and rembg falls back to the mask as alpha too.
        return Matte(alpha=mask.copy(), foreground=foreground)
    coarse_alpha = _closed_form_alpha(coarse_rgb, coarse_tri)
    # The guided filter in float32 moves no alpha by more than 1/255 (its variances are over 3 x 3
    # windows); blur fusion stays in float64: it divides by box means of alpha close to 0 or 1.
    slope, offset = _guided_filter(
        coarse_rgb.astype(np.float32), coarse_alpha.astype(np.float32), GUIDE_RADIUS, GUIDE_EPSILON
    )
    blurred_fg, blurred_bg = _blur_fusion(coarse_rgb, coarse_alpha, scale)
    # float32 grids (a few 1/255 steps need far less): half the memory traffic of the sampling.
    coefficients = np.concatenate([slope, offset[..., None]], axis=2)
    colours = np.concatenate([blurred_fg, blurred_bg], axis=2).astype(np.float32)
    # The full-size pixels in chunks: a few MiB of temporaries whatever the band's size.
    for start in range(0, unknown_y.size, CHUNK_PIXELS):
        ys, xs = unknown_y[start : start + CHUNK_PIXELS], unknown_x[start : start + CHUNK_PIXELS]
        guide = rgb[ys, xs].astype(np.float32) / np.float32(255.0)
        sampler = _Bilinear(coefficients.shape[:2], ys - top, xs - left, scale)
        sampled = sampler(coefficients)
        fine = np.einsum("nc,nc->n", sampled[:, :3], guide) + sampled[:, 3]
        np.clip(fine, 0.0, 1.0, out=fine)
        # rembg casts (truncates) rather than rounds: the same here keeps the two comparable.
        values = (fine * np.float32(255.0)).astype(np.uint8)
        alpha[ys, xs] = values
        # Colours only where the alpha is partial: elsewhere they stay the image's own.
        partial = np.flatnonzero((values > 0) & (values < 255))
        fg_at, bg_at = np.split(sampler(colours, partial), 2, axis=1)
        weight = fine[partial, None]
        estimate = fg_at + weight * (guide[partial] - weight * fg_at - (1.0 - weight) * bg_at)
        estimate *= np.float32(255.0)
        estimate += np.float32(0.5)
        foreground[ys[partial], xs[partial]] = np.clip(estimate, 0, 255).astype(np.uint8)
    return Matte(alpha=alpha, foreground=foreground)


def _downscale(rgb: np.ndarray, tri: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Block means of the image (float64, 0..1) and the blocks' trimap: sure only when the whole
    block is sure of the same thing."""
    height, width = tri.shape
    rows, cols = -(-height // scale), -(-width // scale)
    pad = ((0, rows * scale - height), (0, cols * scale - width))
    image = np.pad(rgb, (*pad, (0, 0)), mode="edge")
    blocks = np.pad(tri, pad, mode="edge")
    # Sums of strided slices: several times faster than a mean over the axes of a 5-D view.
    sums = np.zeros((rows, cols * scale, 3), dtype=np.float32)  # exact: sums < 2^24
    for row in range(scale):
        sums += image[row::scale]
    coarse_rgb = np.add.reduceat(sums, np.arange(0, cols * scale, scale), axis=1, dtype=np.float64)
    coarse_rgb /= 255.0 * scale * scale
    low, high = blocks[::scale].copy(), blocks[::scale].copy()
    for row in range(1, scale):
        np.minimum(low, blocks[row::scale], out=low)
        np.maximum(high, blocks[row::scale], out=high)
    low = np.minimum.reduceat(low, np.arange(0, cols * scale, scale), axis=1)
    high = np.maximum.reduceat(high, np.arange(0, cols * scale, scale), axis=1)
    coarse_tri = np.full((rows, cols), 128, dtype=np.uint8)
    coarse_tri[low == 255] = 255
    coarse_tri[high == 0] = 0
    return coarse_rgb, coarse_tri


def _closed_form_alpha(image: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Closed-form alpha (float64, 0..1) of the unknown pixels of `tri` given the sure ones:
    L_U x = -R f, pymatting's Laplacian restricted to the unknown rows, solved by
    sparse LU (SuperLU; the system is small at the coarse size)."""
    import scipy.sparse
    import scipy.sparse.linalg

    height, width = tri.shape
    known = (tri != 128).ravel()
    is_fg = (tri == 255).ravel().astype(np.float64)
    unknown = np.flatnonzero(~known)
    count = unknown.size
    index = np.full(height * width, -1, dtype=np.int64)
    index[unknown] = np.arange(count)

    rhs = np.zeros(count)
    stencil: np.ndarray = np.zeros(count * 25)
    centres = _window_centres(~known.reshape(height, width))
    window = (_WINDOW[:, 0] * width + _WINDOW[:, 1])[None, :]
    for start in range(0, centres.size, CHUNK_WINDOWS):  # bounded temporaries
        pixels = centres[start : start + CHUNK_WINDOWS, None] + window
        weights = _window_weights(image.reshape(-1, 3)[pixels])  # K x 9 x 9
        rows = index[pixels]
        is_row = rows >= 0
        pull = np.einsum("kij,kj->ki", weights, is_fg[pixels] * known[pixels])
        rhs -= np.bincount(rows[is_row], weights=pull[is_row], minlength=count)
        both = is_row[:, :, None] & is_row[:, None, :]
        keys = rows[:, :, None] * 25 + _STENCIL[None]
        stencil += np.bincount(keys[both], weights=weights[both], minlength=count * 25)
    stencil = stencil.reshape(count, 25)
    offsets = np.array([dy * width + dx for dy in range(-2, 3) for dx in range(-2, 3)])
    neighbour = unknown[:, None] + offsets[None, :]
    inside = (neighbour >= 0) & (neighbour < height * width)
    columns = np.where(inside, index[np.clip(neighbour, 0, height * width - 1)], -1)
    keep = (columns >= 0) & (stencil != 0)
    row_of = np.broadcast_to(np.arange(count)[:, None], keep.shape)
    laplacian = scipy.sparse.csr_matrix(
        (stencil[keep], (row_of[keep], columns[keep])), shape=(count, count)
    )
    # Symmetric positive definite: a symmetric ordering without pivoting (3x faster than the
    # default LU on these systems).
    factor = scipy.sparse.linalg.splu(
        laplacian.tocsc(),
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )
    solution = factor.solve(rhs)
    alpha = is_fg.copy()
    alpha[unknown] = solution
    result: np.ndarray = np.clip(alpha, 0.0, 1.0).reshape(height, width)
    return result


def _window_centres(unknown: np.ndarray) -> np.ndarray:
    """Flat indices of the 3 x 3 windows inside the image that hold an unknown pixel."""
    touched = np.pad(unknown, 1)
    touched = touched[:-2] | touched[1:-1] | touched[2:]
    touched = touched[:, :-2] | touched[:, 1:-1] | touched[:, 2:]
    touched[[0, -1], :] = False
    touched[:, [0, -1]] = False
    return np.flatnonzero(touched)


def _window_weights(colours: np.ndarray) -> np.ndarray:
    """Each window's 9 x 9 block of the matting Laplacian from its 9 colours (K x 9 x 3)."""
    centred = colours - colours.mean(axis=1, keepdims=True)
    cov = np.einsum("kic,kid->kcd", centred, centred) / 9.0
    cov[:, [0, 1, 2], [0, 1, 2]] += EPSILON / 9.0  # pymatting divides epsilon by the window too
    inverse = np.linalg.inv(cov)
    projected = np.einsum("kic,kcd->kid", centred, inverse)
    weights = np.einsum("kid,kjd->kij", projected, centred)
    weights += 1.0
    weights /= -9.0
    weights[:, [*range(9)], [*range(9)]] += 1.0
    result: np.ndarray = weights
    return result


def _box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window cut at the borders: two 1-D running sums."""
    result = values.copy()
    for axis in (0, 1):
        length = result.shape[axis]
        table = np.zeros((length + 1, *np.delete(result.shape, axis)), dtype=result.dtype)
        np.cumsum(np.moveaxis(result, axis, 0), axis=0, out=table[1:])
        ends = np.minimum(np.arange(length) + radius + 1, length)
        starts = np.maximum(np.arange(length) - radius, 0)
        counts = (ends - starts).astype(result.dtype).reshape(-1, *[1] * (table.ndim - 1))
        sums = (table[ends] - table[starts]) / counts
        result = np.moveaxis(sums, 0, axis)
    return result


def _guided_filter(
    guide: np.ndarray, source: np.ndarray, radius: int, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """He et al.'s colour guided filter: the averaged linear coefficients (H x W x 3 and H x W)
    such that output = slope . guide + offset."""
    mean_guide = _box_mean(guide, radius)
    mean_source = _box_mean(source, radius)
    covariance = _box_mean(guide * source[..., None], radius) - mean_guide * mean_source[..., None]
    outer = np.einsum("hwc,hwd->hwcd", guide, guide).reshape(*guide.shape[:2], 9)
    variance = _box_mean(outer, radius).reshape(*guide.shape[:2], 3, 3)
    variance -= np.einsum("hwc,hwd->hwcd", mean_guide, mean_guide)
    variance[..., [0, 1, 2], [0, 1, 2]] += epsilon
    slope = np.linalg.solve(variance, covariance[..., None])[..., 0]
    offset = mean_source - np.einsum("hwc,hwc->hw", slope, mean_guide)
    return _box_mean(slope, radius), _box_mean(offset, radius)


def _blur_fusion(image: np.ndarray, alpha: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Blur-fusion's smooth foreground and background colours (two passes), on the coarse grid."""
    foreground = background = image
    weight = alpha[..., None]
    for full_radius in FUSION_RADII:
        radius = max(1, full_radius // scale)
        mean_alpha = _box_mean(weight, radius)
        blurred_fg = _box_mean(foreground * weight, radius) / (mean_alpha + 1e-5)
        blurred_bg = _box_mean(background * (1.0 - weight), radius) / (1.0 - mean_alpha + 1e-5)
        foreground = blurred_fg + weight * (
            image - weight * blurred_fg - (1.0 - weight) * blurred_bg
        )
        np.clip(foreground, 0.0, 1.0, out=foreground)
        background = blurred_bg
    return blurred_fg, blurred_bg


class _Bilinear:
    """Samples grids of the coarse size at full-size pixels (ys, xs), pixel centres aligned: the
    corners and weights are computed once for the grids sampled at the same pixels."""

    def __init__(self, shape: tuple[int, ...], ys: np.ndarray, xs: np.ndarray, scale: int):
        height, width = shape
        fy = np.clip((ys + 0.5) / scale - 0.5, 0, height - 1).astype(np.float32)
        fx = np.clip((xs + 0.5) / scale - 0.5, 0, width - 1).astype(np.float32)
        y0, x0 = fy.astype(np.int64), fx.astype(np.int64)
        y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
        wy, wx = (fy - y0)[:, None], (fx - x0)[:, None]
        self.corners = (y0 * width + x0, y0 * width + x1, y1 * width + x0, y1 * width + x1)
        self.weights = ((1 - wy) * (1 - wx), (1 - wy) * wx, wy * (1 - wx), wy * wx)

    def __call__(self, grid: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
        """`grid` H x W x C at the pixels (or at `subset` of them): N x C."""
        flat = grid.reshape(-1, grid.shape[2])
        result: np.ndarray | None = None
        for corner, weight in zip(self.corners, self.weights, strict=True):
            if subset is not None:
                corner, weight = corner[subset], weight[subset]
            term = flat[corner] * weight
            result = term if result is None else np.add(result, term, out=result)
        assert result is not None
        return result
