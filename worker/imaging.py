"""Decode and encode stages: bytes in, pixels out, and back. Pure CPU work, run off the loop.

Decoding applies EXIF orientation, takes the first frame of animations, converts every mode the
model cannot read (CMYK, palette, grayscale, 16-bit, alpha) to 8-bit RGB, and enforces byte and
pixel limits before any pixel is decompressed."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from worker.errors import permanent

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_FILTER_UP = 2
PNG_BAND_ROWS = 64

# The limits are ours (MAX_IMAGE_PIXELS); Pillow's own bomb check stays as a backstop.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True, slots=True)
class DecodedImage:
    rgb: Image.Image  # 8-bit RGB, upright
    alpha: Image.Image | None  # the source's own transparency, if it had any
    source_format: str


def decode(
    data: bytes, *, max_bytes: int, max_pixels: int, max_side: int | None = None
) -> DecodedImage:
    if not data:
        raise permanent("empty_object", "source object is empty (0 bytes)")
    if len(data) > max_bytes:
        raise permanent(
            "too_many_bytes", f"source is {len(data)} bytes, over MAX_IMAGE_BYTES={max_bytes}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise permanent(
            "not_an_image", f"source is not a supported image ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
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
        image.seek(0)  # first frame of an animation
        image.load()
        rgb, alpha = _to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise permanent("corrupt_image", f"source image cannot be decoded: {exc}") from None
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=source_format)


def _to_rgb(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        image = _to_8bit_gray(image)
        mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("L", "1") and "transparency" in image.info:
        image = image.convert("LA")
    mode = image.mode
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        # The colour under transparent pixels is arbitrary: show the model a white backdrop.
        backdrop = Image.new("RGB", rgba.size, (255, 255, 255))
        backdrop.paste(rgba, mask=alpha)
        return backdrop, alpha
    if mode != "RGB":
        image = image.convert("RGB")  # CMYK (Pillow undoes Adobe inversion), YCbCr, LAB, L, 1
    return image, None


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit grayscale to 8 bits over its real range; Pillow would clip."""
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        scale = 255.0 / (high - low) if high > low else 0.0
        scaled = (np.nan_to_num(pixels, nan=low) - low) * scale
    else:
        top = 65535.0 if pixels.max(initial=0) > 255 or "16" in image.mode else 255.0
        scaled = pixels.astype(np.float32) * (255.0 / top)
    return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")


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
    """The image as PNG. 8-bit RGBA (every cut-out) is written here: each row with PNG's Up
    filter (the row minus the row above, one numpy subtraction per band of rows), deflated by
    zlib at `compress_level`. Pillow's encoder tries every filter on every row; on the benchmark's
    photos this takes about half its CPU for a file of about the same size, with the same pixels
    (docs/performance.md). Other modes go through Pillow. `icc_profile` defaults to the image's
    own, as Pillow's encoder keeps it."""
    icc_profile = icc_profile or image.info.get("icc_profile")
    if image.mode != "RGBA":
        buffer = io.BytesIO()
        extra = {"icc_profile": icc_profile} if icc_profile else {}
        image.save(buffer, format="PNG", compress_level=compress_level, **extra)
        return buffer.getvalue()
    width, height = image.size
    compressor = zlib.compressobj(compress_level)
    deflated = bytearray()  # one growing buffer, not many small ones left on the heap
    band = np.empty((min(PNG_BAND_ROWS, height), width * 4 + 1), dtype=np.uint8)
    band[:, 0] = PNG_FILTER_UP
    above = np.zeros(width * 4, dtype=np.uint8)  # the row above the first is zeros
    for top in range(0, height, PNG_BAND_ROWS):
        bottom = min(top + PNG_BAND_ROWS, height)
        # Band by band: never a second copy of the whole image in memory.
        rows = np.frombuffer(image.crop((0, top, width, bottom)).tobytes(), dtype=np.uint8)
        rows = rows.reshape(bottom - top, width * 4)
        filtered = band[: bottom - top]
        filtered[:, 1:] = rows
        filtered[1:, 1:] -= rows[:-1]  # uint8 wraps: modulo 256, as PNG defines
        filtered[0, 1:] -= above
        above = rows[-1]
        deflated += compressor.compress(filtered.data)
    deflated += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
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
