"""worker/cuda_libs.py on this host (no CUDA here): the ELF reader and the loader-like walk that
the image test runs over ONNX Runtime's CUDA provider, and the preload's printed failures as log
events. tests/test_image.py runs the same check inside the GPU image."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import structlog

from worker import cuda_libs

LIBZ = next(
    path
    for directory in cuda_libs.DEFAULT_DIRECTORIES
    if (path := Path(directory) / "libz.so.1").is_file()
)


def test_the_dynamic_section_names_soname_and_needed() -> None:
    dynamic = cuda_libs.read_dynamic(LIBZ.resolve())
    assert dynamic.soname == "libz.so.1"
    assert "libc.so.6" in dynamic.needed


def test_the_walk_resolves_like_the_loader_and_names_what_resolves_nowhere() -> None:
    found = cuda_libs.walk(LIBZ.resolve(), loaded={}, cache=cuda_libs.ld_cache())
    assert found.missing == {}
    assert found.resolved["libc.so.6"].is_file()
    # The same library with nowhere to look: libc is missing, and named with who needs it.
    lost = cuda_libs.walk(LIBZ.resolve(), loaded={}, cache={}, default_directories=())
    assert lost.missing == {"libc.so.6": LIBZ.resolve().name}
    assert lost.unexpected() == lost.missing
    # A library already loaded by that soname counts as resolved (what preload_dlls relies on).
    loaded = cuda_libs.loaded_libraries()  # this very process: libc and the loader are mapped
    assert "libc.so.6" in loaded
    preloaded = cuda_libs.walk(LIBZ.resolve(), loaded=loaded, cache={}, default_directories=())
    assert preloaded.missing == {}


def test_the_driver_is_the_one_library_allowed_to_be_missing() -> None:
    walk = cuda_libs.Walk(missing={"libcuda.so.1": "libcudart.so.12", "libcufft.so.11": "x.so"})
    assert walk.unexpected() == {"libcufft.so.11": "x.so"}


def test_preload_failures_become_log_events() -> None:
    def preload_dlls() -> None:
        print("\033[33mFailed to load libcufft.so.11: cannot open shared object file\033[0m")

    fake = types.SimpleNamespace(preload_dlls=preload_dlls, __file__=sys.executable)
    with structlog.testing.capture_logs() as events:
        problems = cuda_libs.preload(fake)  # type: ignore[arg-type]
    assert problems == ["Failed to load libcufft.so.11: cannot open shared object file"]
    assert events == [
        {
            "event": "CUDA library preload failed",
            "detail": problems[0],
            "log_level": "warning",
        }
    ]


def test_the_refusal_reason_says_why_the_provider_is_not_there() -> None:
    import onnxruntime

    reason = cuda_libs.provider_load_error(onnxruntime)
    assert "libonnxruntime_providers_cuda.so" in reason  # this host has the CPU build
