"""S3 bucket and key rules, checked where a job is created (the producer) and again before the
worker reads a source: a name S3 would refuse is a permanent failure, not an outage."""

from __future__ import annotations

import ipaddress
import re

MAX_KEY_BYTES = 1024
# General purpose buckets: 3-63 lowercase letters, digits, dots and hyphens, starting and ending
# with a letter or digit (AWS's naming rules; the legacy upper-case us-east-1 names are refused).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


class InvalidS3Location(ValueError):
    """A bucket name or key that S3 cannot hold."""


def bucket_problem(bucket: str) -> str | None:
    """Why `bucket` is not a valid S3 bucket name, or None."""
    shown = repr(bucket[:70]) + ("..." if len(bucket) > 70 else "")
    if not 3 <= len(bucket) <= 63:
        return f"bucket name {shown} must be 3-63 characters, has {len(bucket)}"
    if not _BUCKET.fullmatch(bucket):
        return (
            f"bucket name {shown} may hold only lowercase letters, digits, dots and hyphens,"
            " and must start and end with a letter or digit"
        )
    if ".." in bucket:
        return f"bucket name {shown} has two adjacent dots"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        pass
    else:
        return f"bucket name {shown} is formatted as an IP address"
    if bucket.startswith(_RESERVED_PREFIXES) or bucket.endswith(_RESERVED_SUFFIXES):
        return f"bucket name {shown} uses a prefix or suffix S3 reserves"
    return None


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid S3 object key (1-1024 bytes of UTF-8), or None."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "object key is not valid UTF-8 (it holds a lone surrogate)"
    if not 1 <= size <= MAX_KEY_BYTES:
        return f"object key must be 1-{MAX_KEY_BYTES} bytes of UTF-8, has {size}"
    return None


def check_location(bucket: str, key: str) -> None:
    """Raise InvalidS3Location naming every problem with `bucket` and `key`."""
    problems = [p for p in (bucket_problem(bucket), key_problem(key)) if p is not None]
    if problems:
        raise InvalidS3Location("; ".join(problems))
