"""Decode and encode stages: bytes in, pixels out, and back. Pure CPU work, run off the loop.

Decoding applies EXIF orientation, takes the first frame of animations, converts every mode the
model cannot read (CMYK, palette, grayscale, 16-bit, alpha) to 8-bit RGB, and enforces byte and
pixel limits before any pixel is decompressed."""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import structlog
from PIL import Image, ImageChops, ImageCms, ImageOps, UnidentifiedImageError

from worker.errors import permanent

log = structlog.get_logger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTER_UP = 2
PNG_BAND_ROWS = 64
PNG_COLOUR_TYPES = {"RGB": 2, "RGBA": 6}  # 8 bits per channel, written by encode_png itself
# Rows converted at a time from 16-bit or float grey: a band of float32, never the whole image.
CONVERT_BAND_PIXELS = 1 << 20
SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True, slots=True)
class DecodedImage:
    rgb: Image.Image  # 8-bit RGB, upright
    alpha: Image.Image | None  # the source's own transparency, if it had any
    source_format: str
    # The source's ICC profile when it is valid and describes RGB pixels: it describes `rgb`.
    # None: `rgb` is sRGB (CMYK sources are converted to it with their profile).
    icc_profile: bytes | None = None


def decode(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int | None = None
) -> DecodedImage:
    if not data:
        raise permanent("empty_object", "source object is empty (0 bytes)")
    if len(data) > max_bytes:
        raise permanent(
            "too_many_bytes", f"source is {len(data)} bytes, over MAX_IMAGE_BYTES={max_bytes}"
        )
    # Pillow's own bomb check (in open, seek and load) enforces the worker's limit: the same
    # value in every call, so assigning the module-wide setting here is race-free.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise permanent(
            "not_an_image", f"source is not a supported image ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise permanent("too_many_pixels", f"over MAX_IMAGE_PIXELS={max_pixels}: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise permanent("corrupt_image", f"source image cannot be read: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise permanent(
            "too_many_pixels",
            f"image is {width}x{height} ({width * height} pixels),"
            f" over MAX_IMAGE_PIXELS={max_pixels}",
        )
    if max_side is not None and max(width, height) > max_side:  # from the header, as above
        raise permanent(
            "too_large",
            f"image is {width}x{height}, its longer side over MAX_IMAGE_SIDE={max_side}",
        )
    if width < 1 or height < 1:
        raise permanent("corrupt_image", f"image has no pixels ({width}x{height})")
    source_format = image.format or "unknown"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.seek(0)  # first frame of an animation
            image.load()
        profile = _valid_profile(image.info.get("icc_profile"))
        ImageOps.exif_transpose(image, in_place=True)  # the rotated copy replaces the source
        rgb, alpha, icc_profile = _to_rgb(image, profile)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise permanent("too_many_pixels", f"over MAX_IMAGE_PIXELS={max_pixels}: {exc}") from None
    except (OSError, ValueError, SyntaxError, ImageCms.PyCMSError) as exc:
        raise permanent("corrupt_image", f"source image cannot be decoded: {exc}") from None
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=source_format, icc_profile=icc_profile)


def _valid_profile(data: object) -> ImageCms.ImageCmsProfile | None:
    """The embedded ICC profile if littleCMS can read it; an invalid one is dropped."""
    if not isinstance(data, bytes) or not data:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(data))
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        log.info("invalid ICC profile dropped", size=len(data))
        return None


def _to_rgb(
    image: Image.Image, profile: ImageCms.ImageCmsProfile | None
) -> tuple[Image.Image, Image.Image | None, bytes | None]:
    """8-bit RGB pixels, the source's alpha, and the ICC profile that describes those pixels."""
    mode = image.mode
    embedded = image.info.get("icc_profile")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit_gray(image)
        mode = image.mode
    icc_profile = None
    if profile is not None and profile.profile.xcolor_space.strip() == "RGB" and mode in (
        "RGB", "RGBA", "P", "PA"
    ):  # fmt: skip
        icc_profile = embedded if isinstance(embedded, bytes) else profile.tobytes()
    if mode == "CMYK" and profile is not None and profile.profile.xcolor_space.strip() == "CMYK":
        # Its own profile turns CMYK ink into sRGB: Pillow's formula ignores the profile.
        converted = ImageCms.profileToProfile(image, profile, SRGB, outputMode="RGB")
        assert converted is not None  # None only when converting in place
        image, mode = converted, converted.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in image.info:
        image = image.convert("LA")
    mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image if mode == "RGBA" else image.convert("RGBA")
        del image
        alpha = rgba.getchannel("A")
        # The colour under transparent pixels is arbitrary: show the model a white backdrop.
        backdrop = Image.new("RGB", rgba.size, (255, 255, 255))
        backdrop.paste(rgba, mask=alpha)
        return _with_profile(backdrop, icc_profile), alpha, icc_profile
    if mode != "RGB":
        image = image.convert("RGB")  # CMYK (Pillow undoes Adobe inversion), YCbCr, LAB, L, 1
    return _with_profile(image, icc_profile), None, icc_profile


def _with_profile(image: Image.Image, icc_profile: bytes | None) -> Image.Image:
    """`image` carrying exactly `icc_profile` (convert copies the source's, whatever it was)."""
    image.info.pop("icc_profile", None)
    if icc_profile is not None:
        image.info["icc_profile"] = icc_profile
    return image


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit grayscale to 8 bits over its real range; Pillow would clip.
    Band by band: a float32 copy of the whole image would cost 4 bytes per pixel more."""
    width, height = image.size
    rows = max(1, CONVERT_BAND_PIXELS // width)
    bands = [(top, min(top + rows, height)) for top in range(0, height, rows)]

    def band(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom)))

    floating = image.mode == "F"
    if floating:
        low, high = math.inf, -math.inf
        for top, bottom in bands:
            pixels = band(top, bottom)
            if np.isnan(pixels).all():
                continue
            low = min(low, float(np.nanmin(pixels)))
            high = max(high, float(np.nanmax(pixels)))
        if not math.isfinite(low) or not math.isfinite(high):
            low, high = 0.0, 0.0
        scale = 255.0 / (high - low) if high > low else 0.0
    else:
        top_value = 255.0
        if "16" in image.mode or any(band(t, b).max(initial=0) > 255 for t, b in bands):
            top_value = 65535.0
        low, scale = 0.0, 255.0 / top_value
    gray = np.empty((height, width), dtype=np.uint8)
    for top, bottom in bands:
        pixels = band(top, bottom).astype(np.float32)
        if floating:
            np.nan_to_num(pixels, copy=False, nan=low, posinf=high, neginf=low)
        pixels -= low
        pixels *= scale
        pixels += 0.5
        np.clip(pixels, 0, 255, out=pixels)
        gray[top:bottom] = pixels
    return Image.fromarray(gray, mode="L")


def cut_out(decoded: DecodedImage, mask: Image.Image) -> Image.Image:
    """The source pixels with the mask as alpha (straight alpha, no colour darkening at edges).
    Pixels that were transparent in the source stay transparent. Consumes `decoded.rgb`: the
    alpha channel is added in place, saving a copy of the whole image."""
    alpha = mask if decoded.alpha is None else ImageChops.darker(mask, decoded.alpha)
    result = decoded.rgb
    result.putalpha(alpha)
    return result


def encode_png(
    image: Image.Image, *, compress_level: int, icc_profile: bytes | None = None
) -> bytes:
    """The image as PNG. 8-bit RGBA (a transparent cut-out) and RGB (one on a solid background)
    are written here: each row with PNG's Up filter (the row minus the row above, one numpy
    subtraction per band of rows), deflated by zlib at `compress_level`. Pillow's encoder tries
    every filter on every row; on the benchmark's photos this takes about half its CPU for a file
    of about the same size, with the same pixels (docs/performance.md). Other modes go through
    Pillow. `icc_profile` defaults to the image's own, as Pillow's encoder keeps it."""
    icc_profile = icc_profile or image.info.get("icc_profile")
    colour_type = PNG_COLOUR_TYPES.get(image.mode)
    if colour_type is None:
        buffer = io.BytesIO()
        extra = {"icc_profile": icc_profile} if icc_profile else {}
        image.save(buffer, format="PNG", compress_level=compress_level, **extra)
        return buffer.getvalue()
    width, height = image.size
    row_bytes = width * len(image.mode)
    compressor = zlib.compressobj(compress_level)
    deflated = bytearray()  # one growing buffer, not many small ones left on the heap
    band = np.empty((min(PNG_BAND_ROWS, height), row_bytes + 1), dtype=np.uint8)
    band[:, 0] = PNG_FILTER_UP
    above = np.zeros(row_bytes, dtype=np.uint8)  # the row above the first is zeros
    for top in range(0, height, PNG_BAND_ROWS):
        bottom = min(top + PNG_BAND_ROWS, height)
        # Band by band: never a second copy of the whole image in memory.
        rows = np.frombuffer(image.crop((0, top, width, bottom)).tobytes(), dtype=np.uint8)
        rows = rows.reshape(bottom - top, row_bytes)
        filtered = band[: bottom - top]
        filtered[:, 1:] = rows
        filtered[1:, 1:] -= rows[:-1]  # uint8 wraps: modulo 256, as PNG defines
        filtered[0, 1:] -= above
        above = rows[-1]
        deflated += compressor.compress(filtered.data)
    deflated += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)  # no interlace
    chunks = [_png_chunk(b"IHDR", header)]
    if icc_profile:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\0\0" + zlib.compress(icc_profile)))
    crc = zlib.crc32(deflated, zlib.crc32(b"IDAT"))
    idat: list[bytes | bytearray] = [
        struct.pack(">I", len(deflated)),
        b"IDAT",
        deflated,
        struct.pack(">I", crc),
    ]
    return b"".join([PNG_SIGNATURE, *chunks, *idat, _png_chunk(b"IEND", b"")])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)])
