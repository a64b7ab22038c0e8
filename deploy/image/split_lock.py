"""Split a hashed lock file in two: the CUDA/cuDNN wheels (`nvidia-*`) and everything else.

    python deploy/image/split_lock.py FULL.lock CUDA.lock REST.lock

The GPU image installs the two in separate layers, the CUDA wheels first (2.7 GB, changed only
when the ONNX Runtime/CUDA line moves), so that a code or dependency change does not rebuild or
re-push them. `make lock` compiles the full lock and calls this; the full lock is not kept.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CUDA_PACKAGE = re.compile(r"nvidia-[a-z0-9-]+")
ENTRY = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==")


def entries(text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """The header comment lines and (name, block) for every pinned package, in order."""
    header: list[str] = []
    blocks: list[tuple[str, str]] = []
    for line in text.splitlines(keepends=True):
        match = ENTRY.match(line)
        if match is not None:
            blocks.append((match.group(1).lower(), line))
        elif blocks:
            name, block = blocks[-1]
            blocks[-1] = (name, block + line)
        else:
            header.append(line)
    return header, blocks


def split(text: str) -> tuple[str, str]:
    header, blocks = entries(text)
    cuda = [block for name, block in blocks if CUDA_PACKAGE.fullmatch(name)]
    rest = [block for name, block in blocks if not CUDA_PACKAGE.fullmatch(name)]
    if not cuda:
        raise SystemExit("no nvidia-* package in the lock: is it the GPU lock?")
    note = "# Split by deploy/image/split_lock.py: {}.\n"
    return (
        "".join([*header, note.format("the CUDA/cuDNN wheels, installed first"), *cuda]),
        "".join([*header, note.format("all but the CUDA/cuDNN wheels"), *rest]),
    )


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    full, cuda_path, rest_path = (Path(arg) for arg in argv)
    cuda, rest = split(full.read_text())
    cuda_path.write_text(cuda)
    rest_path.write_text(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
