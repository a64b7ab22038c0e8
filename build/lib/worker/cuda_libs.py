"""CUDA and cuDNN from pip wheels: preloading them with their failures in the log, why the CUDA
provider did not load, and a check that every library it needs resolves without a GPU.

The GPU image carries CUDA and cuDNN as `nvidia-*` wheels, found only after
`onnxruntime.preload_dlls()`; only the driver (`libcuda.so.1`) comes from the host. The check
walks the NEEDED entries of `libonnxruntime_providers_cuda.so` recursively, the way the dynamic
loader resolves them (a library already loaded by that soname, then RPATH, LD_LIBRARY_PATH,
RUNPATH, the ld.so cache and the default directories), and names each one that resolves nowhere:

    python -m worker.cuda_libs      # in the image: exit 0 when only libcuda.so.1 is missing
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import structlog

log = structlog.get_logger(__name__)

PROVIDER_LIBRARY = "libonnxruntime_providers_cuda.so"
# The driver, mounted from the host by the NVIDIA container runtime; never in the image.
FROM_THE_HOST = frozenset({"libcuda.so.1"})
DEFAULT_DIRECTORIES = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64",
                       "/lib", "/usr/lib")  # fmt: skip
ANSI = re.compile(r"\x1b\[[0-9;]*m")

DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 14, 15, 29
PT_LOAD, PT_DYNAMIC = 1, 2


# ---------------------------------------------------------------------------------------------
# Preloading (the worker's start)
# ---------------------------------------------------------------------------------------------
def preload(ort: ModuleType) -> list[str]:
    """`ort.preload_dlls()`, whose failures ONNX Runtime prints to stdout: each one is logged as
    a JSON event instead, and returned."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ort.preload_dlls()
    problems = [ANSI.sub("", line).strip() for line in printed.getvalue().splitlines()]
    problems = [line for line in problems if line]
    for problem in problems:
        log.warning("CUDA library preload failed", detail=problem)
    return problems


def provider_load_error(ort: ModuleType) -> str:
    """Why ONNX Runtime's CUDA provider is not in use, as the loader and the CUDA runtime say it
    (ONNX Runtime prints its own reason only to stderr, outside the JSON log): the provider
    library's dlopen, then the driver's, then cudaGetDeviceCount."""
    library = Path(str(ort.__file__)).parent / "capi" / PROVIDER_LIBRARY
    if not library.exists():
        return f"this onnxruntime has no {PROVIDER_LIBRARY} (the CPU build?)"
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"{PROVIDER_LIBRARY} does not load: {exc}"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return (
            f"no NVIDIA driver in the container ({exc}; the host's NVIDIA container runtime "
            "mounts libcuda.so.1 for a task given a GPU)"
        )
    try:
        cudart = ctypes.CDLL("libcudart.so.12")
    except OSError as exc:
        return f"the CUDA runtime does not load: {exc}"
    count = ctypes.c_int(0)
    code = cudart.cudaGetDeviceCount(ctypes.byref(count))
    if code != 0:
        cudart.cudaGetErrorString.restype = ctypes.c_char_p
        message = cudart.cudaGetErrorString(code).decode(errors="replace")
        return f"CUDA: {message} (cudaGetDeviceCount error {code})"
    return f"the CUDA libraries load and see {count.value} GPU(s), yet ONNX Runtime chose the CPU"


# ---------------------------------------------------------------------------------------------
# ELF dynamic section (x86-64, little endian)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dynamic:
    soname: str | None
    needed: list[str]
    rpath: list[str]
    runpath: list[str]


def read_dynamic(path: Path) -> Dynamic:
    """DT_SONAME, DT_NEEDED, DT_RPATH and DT_RUNPATH of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads: list[tuple[int, int, int]] = []  # vaddr, offset, filesz
    dynamic: tuple[int, int] | None = None
    for index in range(phnum):
        kind, _flags, offset, vaddr, _paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + index * phentsize
        )
        if kind == PT_LOAD:
            loads.append((vaddr, offset, filesz))
        elif kind == PT_DYNAMIC:
            dynamic = (offset, filesz)
    if dynamic is None:
        return Dynamic(None, [], [], [])
    entries: list[tuple[int, int]] = []
    offset, size = dynamic
    for position in range(offset, offset + size, 16):
        tag, value = struct.unpack_from("<qQ", data, position)
        if tag == 0:
            break
        entries.append((tag, value))
    strtab_address = next(value for tag, value in entries if tag == DT_STRTAB)
    strtab = next(
        offset + strtab_address - vaddr
        for vaddr, offset, filesz in loads
        if vaddr <= strtab_address < vaddr + filesz
    )

    def string(index: int) -> str:
        start = strtab + index
        return data[start : data.index(b"\0", start)].decode()

    def paths(kind: int) -> list[str]:
        return [p for tag, value in entries if tag == kind for p in string(value).split(":") if p]

    sonames = [string(value) for tag, value in entries if tag == DT_SONAME]
    return Dynamic(
        soname=sonames[0] if sonames else None,
        needed=[string(value) for tag, value in entries if tag == DT_NEEDED],
        rpath=paths(DT_RPATH),
        runpath=paths(DT_RUNPATH),
    )


# ---------------------------------------------------------------------------------------------
# Resolution, as ld.so does it
# ---------------------------------------------------------------------------------------------
def loaded_libraries() -> dict[str, Path]:
    """soname (or file name) -> path of every shared library mapped into this process."""
    found: dict[str, Path] = {}
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or ".so" not in parts[5]:
            continue
        path = Path(parts[5].strip())
        if path.name in found or not path.is_file():
            continue
        found[path.name] = path
        with contextlib.suppress(ValueError, OSError, StopIteration, struct.error):
            soname = read_dynamic(path).soname
            if soname:
                found.setdefault(soname, path)
    return found


def ld_cache() -> dict[str, Path]:
    """The ld.so cache (`ldconfig -p`): soname -> path, x86-64 entries."""
    ldconfig = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if Path(p).exists()), None)
    if ldconfig is None:
        return {}
    listed = subprocess.run(  # noqa: S603 - the system ldconfig, fixed arguments
        [ldconfig, "-p"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    cache: dict[str, Path] = {}
    for match in re.finditer(r"^\s+(\S+) \(([^)]*)\) => (\S+)$", listed, flags=re.MULTILINE):
        if "x86-64" in match.group(2):
            cache.setdefault(match.group(1), Path(match.group(3)))
    return cache


@dataclass
class Walk:
    """Every library the root needs, transitively: where each resolved, and which did not."""

    resolved: dict[str, Path] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # soname -> the library needing it

    def unexpected(self) -> dict[str, str]:
        return {name: by for name, by in self.missing.items() if name not in FROM_THE_HOST}


def walk(
    root: Path,
    *,
    loaded: dict[str, Path],
    cache: dict[str, Path],
    library_path: str = "",
    default_directories: tuple[str, ...] = DEFAULT_DIRECTORIES,
) -> Walk:
    result = Walk()
    pending = [root]
    seen: set[Path] = set()
    while pending:
        library = pending.pop()
        if library in seen:
            continue
        seen.add(library)
        dynamic = read_dynamic(library)
        origin = str(library.parent)

        def expand(directories: list[str], origin: str = origin) -> list[str]:
            return [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin) for d in directories]

        search = [
            *(expand(dynamic.rpath) if not dynamic.runpath else []),
            *[d for d in library_path.split(":") if d],
            *expand(dynamic.runpath),
        ]
        for name in dynamic.needed:
            path = loaded.get(name)
            if path is None and "/" in name:
                path = Path(name) if Path(name).is_file() else None
            if path is None:
                path = next((Path(d) / name for d in search if (Path(d) / name).is_file()), None)
            if path is None:
                path = cache.get(name)
            if path is None:
                path = next(
                    (Path(d) / name for d in default_directories if (Path(d) / name).is_file()),
                    None,
                )
            if path is None:
                result.missing.setdefault(name, library.name)
                continue
            result.resolved.setdefault(name, path)
            pending.append(path.resolve())
    return result


def main() -> int:
    import onnxruntime as ort

    problems = preload(ort)
    library = Path(str(ort.__file__)).parent / "capi" / PROVIDER_LIBRARY
    if not library.exists():
        print(json.dumps({"error": f"{library} does not exist"}))
        return 1
    result = walk(
        library,
        loaded=loaded_libraries(),
        cache=ld_cache(),
        library_path=os.environ.get("LD_LIBRARY_PATH", ""),
    )
    unexpected = result.unexpected()
    print(
        json.dumps(
            {
                "library": str(library),
                "resolved": {name: str(path) for name, path in sorted(result.resolved.items())},
                "missing": result.missing,
                "unexpected_missing": unexpected,
                "preload_problems": problems,
            }
        )
    )
    return 1 if unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
