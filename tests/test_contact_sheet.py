"""The before/after contact sheet (api_client.contact_sheet): its grid and its checkerboard where a
cut-out is transparent, and `image-jobs inject --wait --sheet FILE` writing one for real jobs run
by a real worker."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api_client.contact_sheet import (
    CHECKER,
    CHECKER_DARK,
    CHECKER_LIGHT,
    TILE,
    SheetRow,
    render_contact_sheet,
    sheet_size,
    tile_origin,
)
from devstack.stack import sample_photos
from tests.cli_runs import REPO, run
from tests.conftest import Aws, StartWorker
from tests.helpers import synthetic_scene

RED = (200, 20, 20)
PHOTO_GREEN = (40, 160, 60)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def half_transparent_cutout() -> bytes:
    """A TILE x TILE cut-out (placed unscaled): left half alpha 0, right half opaque red."""
    pixels = np.zeros((TILE, TILE, 4), np.uint8)
    pixels[:, TILE // 2 :] = (*RED, 255)
    return png(Image.fromarray(pixels, "RGBA"))


def test_the_sheet_puts_each_photo_beside_its_cutout_on_a_checkerboard() -> None:
    photo = png(Image.new("RGB", (TILE, TILE), PHOTO_GREEN))
    rows = [
        SheetRow(photo, half_transparent_cutout(), "a.png | u2netp | 0.42 s"),
        SheetRow(b"not an image", None, "b.jpg | failed: not an image"),
    ]
    sheet = render_contact_sheet(rows)
    assert sheet.mode == "RGB"
    assert sheet.size == sheet_size(2) == (2 * TILE + 36, 12 + 2 * (TILE + 28 + 12))

    photo_left, top = tile_origin(0, 0)
    cut_left, _ = tile_origin(0, 1)
    assert sheet.getpixel((photo_left + TILE // 2, top + TILE // 2)) == PHOTO_GREEN
    # Where the cut-out's alpha is 0 the checkerboard shows: squares alternate light and dark.
    assert sheet.getpixel((cut_left + 2, top + 2)) == CHECKER_LIGHT
    assert sheet.getpixel((cut_left + CHECKER + 2, top + 2)) == CHECKER_DARK
    assert sheet.getpixel((cut_left + 2, top + CHECKER + 2)) == CHECKER_DARK
    assert sheet.getpixel((cut_left + TILE - 4, top + 2)) == RED  # opaque: the cut-out itself

    # The failed row: no checkerboard (nothing to show), the caption in ink below the tiles.
    failed_left, failed_top = tile_origin(1, 1)
    cell = np.asarray(
        sheet.crop((failed_left + 2, failed_top + 2, failed_left + 40, failed_top + 40))
    )
    assert not (cell == CHECKER_DARK).all(axis=-1).any()
    caption = np.asarray(sheet.crop((photo_left, top + TILE, photo_left + TILE, top + TILE + 28)))
    assert (caption.sum(axis=-1) < 300).any(), "the caption is drawn"


@pytest.mark.slow
async def test_inject_wait_sheet_writes_the_sheet_of_the_injected_files(
    database_url: str, aws: Aws, start_worker: StartWorker, tmp_path: Path
) -> None:
    for seed in (1, 2):
        photo, _ = synthetic_scene((320, 240), seed=seed)
        (tmp_path / f"photo-{seed}.jpg").write_bytes(photo)
    await start_worker()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SQS_QUEUE_URL": aws.queue_url,
        "AWS_ENDPOINT_URL": aws.endpoint,
        "AWS_REGION": "us-east-1",
        "SOURCE_BUCKET": aws.bucket,
    }
    sheet_path = tmp_path / "out" / "sheet.png"
    without_wait = await run(env, "inject", "--sheet", str(sheet_path), str(tmp_path))
    assert without_wait.code == 2
    assert "--sheet needs --wait" in without_wait.stderr

    result = await run(env, "inject", "--wait", "--sheet", str(sheet_path), str(tmp_path))
    assert result.code == 0, result.stderr
    assert result.lines[-1] == f"contact sheet: {sheet_path}"
    with Image.open(sheet_path) as sheet:
        assert (sheet.format, sheet.size) == ("PNG", sheet_size(2))
        rgb = sheet.convert("RGB")
    for row in (0, 1):
        left, top = tile_origin(row, 1)
        corner = rgb.getpixel((left + 2, top + 2))  # the 320x240 cut-out is letterboxed: board
        assert corner == CHECKER_LIGHT


@pytest.mark.slow
async def test_make_dev_writes_the_contact_sheet_of_the_samples(tmp_path: Path) -> None:
    """`python -m devstack` (what `make dev` runs) on its embedded stack: every sample photo
    completes and out/contact-sheet.png has one row for each, its cut-out on the checkerboard."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "devstack", "--exit-after-samples", "--out", str(tmp_path),
        cwd=REPO, env={**os.environ, "METRICS_PORT": "0", "SWEEP_INTERVAL_SECONDS": "60"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = output.decode()
    assert process.returncode == 0, text
    samples = sample_photos()
    done = [line for line in text.splitlines() if line.startswith("completed  ")]
    assert len(done) == len(samples) == 5, text
    assert f"contact sheet: {tmp_path / 'contact-sheet.png'}" in text
    with Image.open(tmp_path / "contact-sheet.png") as sheet:
        assert (sheet.format, sheet.size) == ("PNG", sheet_size(len(samples)))
        rgb = sheet.convert("RGB")
    for row in range(len(samples)):
        left, top = tile_origin(row, 1)
        assert rgb.getpixel((left + 1, top + 1)) == CHECKER_LIGHT  # a corner: alpha 0 there
