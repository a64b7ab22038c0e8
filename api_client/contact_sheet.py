"""A before/after contact sheet: each photo beside its cut-out, the cut-out on a checkerboard so
that transparency shows, captioned with the job's model and time. Rendered with Pillow only (the
`sheet` extra; no model runtime): `image-jobs inject --wait --sheet FILE` and `make dev` write one.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageOps

from jobcore.jobs import Job, JobStatus

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

    from api_client.client import JobClient

TILE = 256  # pixels: the longer side of every photo and cut-out on the sheet
MARGIN = 12
CAPTION_HEIGHT = 28
CHECKER = 16  # pixels per checkerboard square
CHECKER_LIGHT = (204, 204, 204)
CHECKER_DARK = (153, 153, 153)
PAPER = (255, 255, 255)
INK = (32, 32, 32)
FAILED_INK = (176, 32, 32)
MAX_SHEET_ROWS = 200  # bounds the sheet's size: 200 rows are ~60 MB of RGB


@dataclass(frozen=True, slots=True)
class SheetRow:
    """One line of the sheet: the photo, its cut-out (None when the job did not complete) and
    the caption under them."""

    photo: bytes
    cutout: bytes | None
    caption: str


def caption_for(label: str, job: Job) -> str:
    """`label · model · seconds` for a completed job, `label · status: error` otherwise."""
    if job.status is JobStatus.COMPLETED:
        seconds = (
            (job.completed_at - job.started_at).total_seconds()
            if job.completed_at and job.started_at
            else None
        )
        took = f"{seconds:.2f} s" if seconds is not None else "time unknown"
        return f"{label} | {job.model or 'model unknown'} | {took}"
    reason = " ".join((job.error or "").split())[:80]
    return f"{label} | {job.status}: {reason}" if reason else f"{label} | {job.status}"


def checkerboard(size: tuple[int, int], square: int = CHECKER) -> Image.Image:
    board = Image.new("RGB", size, CHECKER_LIGHT)
    draw = ImageDraw.Draw(board)
    for top in range(0, size[1], square):
        for left in range(0, size[0], square):
            if (left // square + top // square) % 2:
                draw.rectangle((left, top, left + square - 1, top + square - 1), CHECKER_DARK)
    return board


def _fit(data: bytes) -> Image.Image:
    """The image, EXIF-rotated and scaled to fit a TILE x TILE box, as RGBA."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGBA")
    image.thumbnail((TILE, TILE), Image.Resampling.LANCZOS)
    return image


def tile_origin(row: int, column: int) -> tuple[int, int]:
    """The top-left pixel of a tile's TILE x TILE cell (column 0: photo, 1: cut-out)."""
    return MARGIN + column * (TILE + MARGIN), MARGIN + row * (TILE + CAPTION_HEIGHT + MARGIN)


def sheet_size(rows: int) -> tuple[int, int]:
    return 2 * TILE + 3 * MARGIN, MARGIN + rows * (TILE + CAPTION_HEIGHT + MARGIN)


def render_contact_sheet(rows: Sequence[SheetRow]) -> Image.Image:
    """The sheet as an RGB image: one row per entry, photo left, cut-out right (each centred in
    its TILE x TILE cell; the cut-out's cell is a checkerboard), caption below."""
    if not rows:
        raise ValueError("a contact sheet needs at least one row")
    if len(rows) > MAX_SHEET_ROWS:
        raise ValueError(f"at most {MAX_SHEET_ROWS} rows on one sheet, got {len(rows)}")
    sheet = Image.new("RGB", sheet_size(len(rows)), PAPER)
    draw = ImageDraw.Draw(sheet)
    for index, row in enumerate(rows):
        photo_left, top = tile_origin(index, 0)
        cut_left, _ = tile_origin(index, 1)
        try:
            photo = _fit(row.photo)
        except (OSError, ValueError, Image.DecompressionBombError):  # not an image Pillow reads
            draw.text((photo_left + MARGIN, top + TILE // 2), "not an image", fill=FAILED_INK)
        else:
            sheet.paste(photo, _centred(photo_left, top, photo.size), photo)
        if row.cutout is None:
            draw.rectangle((cut_left, top, cut_left + TILE - 1, top + TILE - 1), outline=FAILED_INK)
            draw.text((cut_left + MARGIN, top + TILE // 2), "no cut-out", fill=FAILED_INK)
        else:
            sheet.paste(checkerboard((TILE, TILE)), (cut_left, top))
            cutout = _fit(row.cutout)
            sheet.paste(cutout, _centred(cut_left, top, cutout.size), cutout)
        ink = INK if row.cutout is not None else FAILED_INK
        draw.text((photo_left, top + TILE + 6), row.caption, fill=ink)
    return sheet


def _centred(left: int, top: int, size: tuple[int, int]) -> tuple[int, int]:
    return left + (TILE - size[0]) // 2, top + (TILE - size[1]) // 2


def write_contact_sheet(rows: Sequence[SheetRow], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    render_contact_sheet(rows).save(path, format="PNG", optimize=True)
    return path


async def write_job_sheet(
    client: JobClient, entries: Sequence[tuple[str, uuid.UUID, bytes | None]], path: Path
) -> Path | None:
    """The sheet of finished jobs, `(label, job id, photo bytes or None to read the source)`
    each, in the given order; a job still open or gone is left off. None (nothing written)
    when no job has finished."""
    rows = []
    for label, job_id, photo in entries:
        job = await client.get_job(job_id)
        if job is not None and job.status.finished:
            rows.append(await sheet_row(client.require_s3(), label, job, photo))
    return write_contact_sheet(rows, path) if rows else None


async def read_object(s3: S3Client, bucket: str, key: str) -> bytes:
    response = await s3.get_object(Bucket=bucket, Key=key)
    async with response["Body"] as body:
        data: bytes = await body.read()
    return data


async def sheet_row(s3: S3Client, label: str, job: Job, photo: bytes | None = None) -> SheetRow:
    """A row for a finished job: the photo (given, or read from its source object) and, when it
    completed, its cut-out read from the result object."""
    if photo is None:
        photo = await read_object(s3, job.source_bucket, job.source_key)
    cutout = None
    if job.status is JobStatus.COMPLETED and job.result_bucket and job.result_key:
        cutout = await read_object(s3, job.result_bucket, job.result_key)
    return SheetRow(photo, cutout, caption_for(label, job))
