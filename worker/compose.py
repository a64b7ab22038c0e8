"""The recipe's stages after the model: quality gate, matting, background, trim, size, encoding
and thumbnails. Pure CPU work, run off the loop.

Choices (README "Recipes"):
- the subject is the pixels at alpha >= SUBJECT_ALPHA: its box is what the gate measures and what
  trim keeps (rembg's min-max stretch leaves a faint haze of low alpha over the background);
- a u2net-family mask is empty when the model's peak confidence is under EMPTY_PEAK (the stretch
  turns a map of near-zeros into a full-range mask); any mask is empty with no subject pixel;
- `auto` background: black when the subject's mean luma (0.299 R + 0.587 G + 0.114 B, weighted by
  alpha) is under 128, else white; for a hard mask this is the seed's mean over alpha > 0;
- PNG: RGBA through the fast writer when transparent, else RGB; WebP lossy at quality 90 with a
  lossless alpha; JPEG at quality 90; thumbnails JPEG at quality 85, on the recipe's background
  (white when transparent), never upscaled. Every output carries the source's ICC profile when
  the decoder kept one (the pixels are the source's own, so the profile still describes them)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageChops

from jobcore.recipe import Recipe
from worker import imaging, matting

SUBJECT_ALPHA = 32
EMPTY_PEAK = 0.2
LUMA_SPLIT = 128
JPEG_QUALITY = 90
WEBP_QUALITY = 90
THUMBNAIL_QUALITY = 85
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
_SUBJECT_TABLE = [0] * SUBJECT_ALPHA + [255] * (256 - SUBJECT_ALPHA)

MAIN_OUTPUT = "image"  # the result's name in `outputs`; thumbnails are "thumb-<N>"

FORMATS = {  # recipe format -> (Pillow format, content type, key extension)
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
    "jpeg": ("JPEG", "image/jpeg", "jpg"),
}


@dataclass(frozen=True, slots=True)
class Box:
    """Pixel box, right and bottom exclusive (Pillow's convention)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def padded(self, padding: int, size: tuple[int, int]) -> Box:
        return Box(
            max(0, self.left - padding),
            max(0, self.top - padding),
            min(size[0], self.right + padding),
            min(size[1], self.bottom + padding),
        )

    def describe(self) -> str:
        return f"{self.width}x{self.height} px at ({self.left}, {self.top})"


class NoSubject(Exception):
    """The quality gate ended the attempt; `reason` is the row's sentence."""

    def __init__(self, reason: str, box: Box | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.box = box


@dataclass(frozen=True, slots=True)
class Rendered:
    name: str  # "image" (the main result), or "thumb-<N>"
    data: bytes
    content_type: str
    extension: str
    width: int
    height: int

    def key(self, job_prefix: str) -> str:
        """`<prefix><job_id>.<ext>` for the result, `<prefix><job_id>/thumb-<N>.jpg` for a
        thumbnail: deterministic, so a retry overwrites."""
        if self.name == MAIN_OUTPUT:
            return f"{job_prefix}.{self.extension}"
        return f"{job_prefix}/{self.name}.{self.extension}"

    def record(self, bucket: str, key: str) -> dict[str, Any]:
        """Its entry in the row's `outputs`."""
        return {
            "name": self.name,
            "bucket": bucket,
            "key": key,
            "content_type": self.content_type,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
        }


@dataclass(frozen=True, slots=True)
class Composed:
    outputs: list[Rendered]  # the result first, then the thumbnails
    background_used: dict[str, Any] = field(default_factory=dict)


def subject_box(alpha: Image.Image) -> Box | None:
    bbox = alpha.point(_SUBJECT_TABLE).getbbox()
    return Box(*bbox) if bbox else None


def check_subject(
    mask: Image.Image, peak: float | None, min_subject_px: int | None, model: str
) -> None:
    """The quality gate. Raises NoSubject for an empty mask, or a subject box narrower or lower
    than `min_subject_px`. A u2net-family mask with no size gate costs one max over the map."""
    if peak is not None and peak < EMPTY_PEAK:
        raise NoSubject(
            f"the mask is empty: {model}'s peak confidence {peak:.3f} is under {EMPTY_PEAK}", None
        )
    if peak is not None and min_subject_px is None:
        return
    box = subject_box(mask)
    if box is None:
        raise NoSubject(f"the mask is empty: no pixel of {model}'s mask at alpha >= "
                        f"{SUBJECT_ALPHA}", None)  # fmt: skip
    if min_subject_px is not None and min(box.width, box.height) < min_subject_px:
        raise NoSubject(
            f"the subject's box is {box.describe()}, under min_subject_px={min_subject_px}"
            f" ({model})",
            box,
        )


def compose(
    decoded: imaging.DecodedImage, mask: Image.Image, recipe: Recipe, *, png_compress_level: int
) -> Composed:
    """The result and thumbnails. A transparent result is built in `decoded.rgb` itself (alpha
    added in place: no copy of the whole image on the default recipe's path)."""
    icc_profile = decoded.icc_profile  # validated by the decoder: it describes these RGB pixels
    rgb, alpha = decoded.rgb, mask
    if recipe.matting:
        rgb, alpha = _matte(rgb, mask)
    if decoded.alpha is not None:  # pixels transparent in the source stay transparent
        alpha = ImageChops.darker(alpha, decoded.alpha)
    colour, background_used = _background(recipe.background, rgb, alpha)
    if recipe.trim and (box := subject_box(alpha)) is not None:
        crop = box.padded(recipe.padding, rgb.size)
        corners = (crop.left, crop.top, crop.right, crop.bottom)
        rgb, alpha = rgb.crop(corners), alpha.crop(corners)
    if colour is None:
        rgb.putalpha(alpha)
        image = rgb
    else:
        image = Image.new("RGB", rgb.size, colour)
        image.paste(rgb, mask=alpha)  # rgb * alpha + colour * (1 - alpha)
    if recipe.max_size is not None:
        image = _fit(image, recipe.max_size)
    outputs = [
        _encode(image, MAIN_OUTPUT, recipe.format, icc_profile, png_compress_level),
        *(_thumbnail(image, side, colour, icc_profile) for side in recipe.thumbnails),
    ]
    return Composed(outputs, background_used)


def _matte(rgb: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    """Matting's alpha, and its foreground colours: the source's own pixels except where the
    alpha is partial (in the band the background's colour bleeds into the source's pixels)."""
    result = matting.matte(np.asarray(rgb), np.asarray(mask))
    return Image.fromarray(result.foreground, mode="RGB"), Image.fromarray(result.alpha, mode="L")


def _background(
    background: str, rgb: Image.Image, alpha: Image.Image
) -> tuple[tuple[int, int, int] | None, dict[str, Any]]:
    if background == "transparent":
        return None, {"mode": "transparent"}
    if background == "auto":
        luma = subject_luma(rgb, alpha)
        colour = BLACK if luma < LUMA_SPLIT else WHITE
        return colour, {"mode": "auto", "colour": _hex(colour), "luma": round(luma, 2)}
    value = int(background[1:], 16)
    colour = (value >> 16, (value >> 8) & 0xFF, value & 0xFF)
    return colour, {"mode": "colour", "colour": _hex(colour)}


def subject_luma(rgb: Image.Image, alpha: Image.Image) -> float:
    """Mean luma of the subject, each pixel weighted by its alpha (Pillow's L conversion is
    ITU-R 601: 0.299 R + 0.587 G + 0.114 B)."""
    weights = np.asarray(alpha, dtype=np.float64).ravel()
    total = float(weights.sum())
    if total == 0:
        return 0.0
    luma = np.asarray(rgb.convert("L"), dtype=np.float64).ravel()
    return float(np.dot(luma, weights) / total)


def _fit(image: Image.Image, longest: int) -> Image.Image:
    """Bound the longer side (LANCZOS), never upscale. Alpha is premultiplied while resampling,
    so transparent pixels' colours do not bleed into the edge."""
    width, height = image.size
    if max(width, height) <= longest:
        return image
    scale = longest / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if image.mode == "RGBA":
        resized = image.convert("RGBa").resize(size, Image.Resampling.LANCZOS)
        return resized.convert("RGBA")
    return image.resize(size, Image.Resampling.LANCZOS)


def _thumbnail(
    image: Image.Image, side: int, colour: tuple[int, int, int] | None, icc_profile: bytes | None
) -> Rendered:
    small = _fit(image, side)
    if small.mode == "RGBA":
        flat = Image.new("RGB", small.size, colour or WHITE)
        flat.paste(small, mask=small.getchannel("A"))
        small = flat
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY, **_icc(icc_profile))
    return Rendered(f"thumb-{side}", buffer.getvalue(), "image/jpeg", "jpg", *small.size)


def _encode(
    image: Image.Image, name: str, fmt: str, icc_profile: bytes | None, png_compress_level: int
) -> Rendered:
    pillow_format, content_type, extension = FORMATS[fmt]
    if fmt == "png" and image.mode == "RGBA":
        data = imaging.encode_png(image, compress_level=png_compress_level, icc_profile=icc_profile)
    else:
        buffer = io.BytesIO()
        options: dict[str, Any] = {**_icc(icc_profile)}
        if fmt == "png":
            options["compress_level"] = png_compress_level
        elif fmt == "webp":
            options.update(quality=WEBP_QUALITY, alpha_quality=100, method=4)
        else:
            options["quality"] = JPEG_QUALITY
        image.save(buffer, format=pillow_format, **options)
        data = buffer.getvalue()
    return Rendered(name, data, content_type, extension, *image.size)


def _icc(profile: bytes | None) -> dict[str, bytes]:
    return {"icc_profile": profile} if profile else {}


def _hex(colour: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def output_keys(recipe: Recipe, job_prefix: str) -> list[str]:
    """Every key a job with this recipe writes (the result, then its thumbnails): what a cancel
    must delete when the worker that uploaded them died before recording them."""
    extension = FORMATS[recipe.format][2]
    return [f"{job_prefix}.{extension}"] + [
        f"{job_prefix}/thumb-{side}.jpg" for side in recipe.thumbnails
    ]
