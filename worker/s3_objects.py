"""S3 stages: download the source, upload the outputs. Errors are classified here, where the
S3 error codes are known."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from jobcore.s3_errors import (
    ACCESS_DENIED_CODES,
    INVALID_NAME_CODES,
    MISSING_BUCKET_CODES,
    MISSING_OBJECT_CODES,
    error_code,
)
from jobcore.s3_names import InvalidS3Location, check_location
from worker.errors import permanent, transient

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


def check_source(bucket: str, key: str, allowed_buckets: frozenset[str]) -> None:
    """A source S3 cannot hold, or one outside SOURCE_BUCKETS (when set), fails for good."""
    try:
        check_location(bucket, key)
    except InvalidS3Location as exc:
        raise permanent("invalid_location", f"source: {exc}") from None
    if allowed_buckets and bucket not in allowed_buckets:
        raise permanent(
            "bucket_not_allowed",
            f"source bucket {bucket!r} is not one of SOURCE_BUCKETS"
            f" ({', '.join(sorted(allowed_buckets))})",
        )


async def download(
    s3: S3Client,
    bucket: str,
    key: str,
    *,
    max_bytes: int,
    allowed_buckets: frozenset[str] = frozenset(),
) -> bytes:
    check_source(bucket, key, allowed_buckets)
    try:
        response = await s3.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            size = int(response.get("ContentLength") or 0)
            if size > max_bytes:
                raise permanent(
                    "too_many_bytes",
                    f"s3://{bucket}/{key} is {size} bytes, over MAX_IMAGE_BYTES={max_bytes}",
                )
            data: bytes = await body.read()
            return data
    except ClientError as exc:
        code = error_code(exc)
        if code in MISSING_OBJECT_CODES:
            raise permanent(
                "missing_object", f"source s3://{bucket}/{key} does not exist"
            ) from None
        if code in MISSING_BUCKET_CODES:
            raise permanent("missing_bucket", f"source bucket {bucket!r} does not exist") from None
        if code in ACCESS_DENIED_CODES:
            raise permanent(
                "access_denied",
                f"not permitted to read source s3://{bucket}/{key}: access denied"
                " (the worker's role or the bucket's policy does not allow it)",
            ) from None
        if code in INVALID_NAME_CODES:
            raise permanent("invalid_location", f"source s3://{bucket}/{key}: {code}") from None
        raise transient("s3_error", f"download s3://{bucket}/{key}: {code or exc}") from exc
    except ParamValidationError as exc:  # botocore's own checks: retrying cannot pass them
        raise permanent("invalid_location", f"source s3://{bucket}/{key}: {exc}") from None
    except BotoCoreError as exc:
        raise transient("s3_unreachable", f"download s3://{bucket}/{key}: {exc}") from exc


async def upload(
    s3: S3Client,
    bucket: str,
    key: str,
    data: bytes,
    *,
    job_id: str,
    content_type: str = "image/png",
) -> None:
    try:
        await s3.put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata={"job-id": job_id}
        )
    except ClientError as exc:
        code = error_code(exc)
        # A missing result bucket is a deployment fault the operator can fix: retry, then DLQ.
        raise transient("s3_error", f"upload s3://{bucket}/{key}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise transient("s3_unreachable", f"upload s3://{bucket}/{key}: {exc}") from exc
