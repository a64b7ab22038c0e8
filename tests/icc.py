"""ICC profiles made by the tests: no profile files ship with this system, and littleCMS (through
Pillow) creates only RGB/Lab ones."""

from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def cmyk_profile_to_grey(lightness: int = 128) -> bytes:
    """A valid ICC v2 CMYK output profile whose A2B0 table maps every ink mix to one neutral
    grey (8-bit L*), so a conversion that used it is unmistakable: Pillow's own CMYK formula
    turns no ink into white."""
    description = b"test CMYK to grey\0"
    tags = {
        b"desc": b"desc\0\0\0\0" + struct.pack(">I", len(description)) + description
        + struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67,
        b"wtpt": b"XYZ \0\0\0\0" + b"".join(_s15(v) for v in D50),
        b"cprt": b"text\0\0\0\0" + b"public domain\0",
        b"A2B0": b"mft1\0\0\0\0" + struct.pack(">BBBB", 4, 3, 2, 0)
        + b"".join(_s15(1.0 if row == col else 0.0) for row in range(3) for col in range(3))
        + bytes(range(256)) * 4  # input curves: identity
        + bytes([lightness, 128, 128]) * 2**4  # every grid point: L*=lightness, a*=b*=0
        + bytes(range(256)) * 3,  # output curves: identity
    }  # fmt: skip
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, body = [], b""
    for signature, data in tags.items():
        entries.append(struct.pack(">4sII", signature, offset + len(body), len(data)))
        body += _pad(data)
    size = 128 + table_size + len(body)
    header = (
        struct.pack(">I4sI4s4s4s", size, b"\0\0\0\0", 0x02100000, b"prtr", b"CMYK", b"Lab ")
        + b"\0" * 12  # date
        + b"acsp" + b"\0" * 24  # platform, flags, manufacturer, model, attributes
        + struct.pack(">I", 0)  # perceptual intent
        + b"".join(_s15(v) for v in D50)
        + b"\0" * 48  # creator, id, reserved
    )  # fmt: skip
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + body
