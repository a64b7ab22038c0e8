"""Memory admission: a job's memory need is estimated from its image header (width x height x
mode, read without decoding a pixel) and the job waits until that much of MEMORY_BUDGET_MB is
free, so that several large images at once queue instead of running the task out of memory.

A job larger than the whole budget still runs, alone (nothing else admitted while it runs).
Waiting is bounded by the job's deadline: the pipeline's JOB_TIMEOUT_SECONDS covers it. Waiters
are served first come, first served, so a large job is not starved by a stream of small ones."""

from __future__ import annotations

import asyncio
import collections
import io
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog
from PIL import Image

log = structlog.get_logger(__name__)

MIB = 1 << 20
# Bytes per pixel of each mode as Pillow holds it decoded.
MODE_BYTES = {
    "1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3,
    "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4, "I": 4, "F": 4,
    "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
}  # fmt: skip
# What a job holds per pixel beside its decoded source, at its peak: the 8-bit RGB copy the model
# reads, the alpha of a transparent source, then the RGBA cut-out, its mask and the encoded
# output. Measured at 64 MP through the worker: 2.0 (RGB JPEG) to 5.1 (float TIFF) bytes per
# pixel above the source's own (docs/performance.md, "Memory at 64 MP"); 6 keeps a margin.
WORKING_BYTES_PER_PIXEL = 6
# Kept free for what admission does not count: the model's own run, buffers of the S3 clients,
# the allocator's slack.
HEADROOM_BYTES = 256 * MIB
# Without a cgroup limit (a developer's machine): this share of physical memory.
UNLIMITED_SHARE = 0.5
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V1_UNLIMITED = 1 << 60  # v1 reports "no limit" as a huge page-aligned number


@dataclass(frozen=True, slots=True)
class Header:
    width: int
    height: int
    mode: str


def read_header(data: bytes) -> Header | None:
    """Size and mode from the header alone; None when Pillow cannot read one (the decode stage
    then fails the job with its reason)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return Header(image.width, image.height, image.mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def estimate_bytes(data: bytes) -> int:
    """Memory one job needs for `data`: its compressed bytes plus the decoded source and the
    working copies, from the header. An unreadable header costs only its bytes."""
    header = read_header(data)
    if header is None:
        return len(data)
    pixels = header.width * header.height
    return len(data) + pixels * (MODE_BYTES.get(header.mode, 4) + WORKING_BYTES_PER_PIXEL)


def cgroup_limit_bytes(
    root: Path = CGROUP_ROOT, membership: Path = Path("/proc/self/cgroup")
) -> int | None:
    """This process's memory limit from its cgroup (v2 memory.max, else v1
    memory.limit_in_bytes), or None when there is none."""
    candidates = [root / "memory.max"]
    try:
        for line in membership.read_text().splitlines():
            _, controllers, group = line.split(":", 2)
            if controllers == "":
                candidates.insert(0, root / group.lstrip("/") / "memory.max")
            elif "memory" in controllers.split(","):
                candidates.append(root / "memory" / group.lstrip("/") / "memory.limit_in_bytes")
    except (OSError, ValueError):
        pass
    candidates.append(root / "memory" / "memory.limit_in_bytes")
    for path in candidates:
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        if raw.isdigit():
            limit = int(raw)
            return None if limit >= CGROUP_V1_UNLIMITED else limit
    return None


def resident_bytes() -> int:
    """This process's resident memory now (the loaded models, the runtime, the libraries)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def default_budget_bytes() -> int:
    """The cgroup limit (or a share of physical memory when unlimited), less what the process
    already holds (called once the models are loaded) and a headroom."""
    limit = cgroup_limit_bytes()
    if limit is None:
        limit = int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * UNLIMITED_SHARE)
    return max(MIB, limit - resident_bytes() - HEADROOM_BYTES)


class MemoryAdmission:
    """`budget`: bytes that jobs may hold at once; None for no limit (admission off)."""

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.reserved = 0
        self.running = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @asynccontextmanager
    async def reserve(self, need: int) -> AsyncIterator[None]:
        """Hold `need` bytes of the budget for the block; wait (cancellably) until they fit."""
        if self.budget is not None and (self._waiters or not self._fits(need)):
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (need, future)
            self._waiters.append(entry)
            log.info(
                "waiting for memory",
                need_mib=need // MIB,
                reserved_mib=self.reserved // MIB,
                budget_mib=self.budget // MIB,
            )
            try:
                await future
            except asyncio.CancelledError:
                if entry in self._waiters:
                    self._waiters.remove(entry)
                elif not future.cancelled():  # admitted just as it was cancelled: give it back
                    self._release(need)
                self._wake()
                raise
        else:
            self._take(need)
        try:
            yield
        finally:
            self._release(need)

    def _fits(self, need: int) -> bool:
        assert self.budget is not None
        # One job larger than the whole budget runs alone.
        return self.running == 0 or self.reserved + need <= self.budget

    def _take(self, need: int) -> None:
        self.reserved += need
        self.running += 1

    def _release(self, need: int) -> None:
        self.reserved -= need
        self.running -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            need, future = self._waiters.popleft()
            if future.done():
                continue
            self._take(need)
            future.set_result(None)
