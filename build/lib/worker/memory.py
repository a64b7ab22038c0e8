"""Process-wide allocator settings for glibc's malloc, applied once at start.

The worker is multi-threaded and moves large, short-lived buffers (a decoded 1600x1200 photo is
5.5 MiB, its RGBA cut-out 7.3 MiB). glibc gives each thread its own heap ("arena", up to 8 per
core) and, after the first such buffer is freed, raises its mmap threshold so later ones come
from those heaps, where freed memory is kept rather than returned. Two arenas and a fixed 1 MiB
mmap threshold (big buffers are mapped and unmapped) cut the worker's peak RSS by about 110 MiB
for about 5 ms of CPU per image (docs/performance.md). glibc's own MALLOC_ARENA_MAX and
MALLOC_MMAP_THRESHOLD_ variables, when set, win."""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
M_ARENA_MAX = -8
ARENAS = 2
MMAP_THRESHOLD_BYTES = 1 << 20


def tune_malloc() -> dict[str, int]:
    """Apply the settings glibc's environment does not already set; return what was applied
    (empty off glibc)."""
    if not sys.platform.startswith("linux"):
        return {}
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return {}
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    applied = {}
    wanted = {
        "MALLOC_ARENA_MAX": (M_ARENA_MAX, ARENAS),
        "MALLOC_MMAP_THRESHOLD_": (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
    }
    for variable, (parameter, value) in wanted.items():
        if variable not in os.environ and mallopt(parameter, value) == 1:
            applied[variable] = value
    return applied
