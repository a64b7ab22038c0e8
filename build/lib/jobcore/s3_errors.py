"""S3 error codes, read the same way by the worker (a missing source is a permanent failure) and
the producer (a missing object is refused before a job is made)."""

from __future__ import annotations

from botocore.exceptions import ClientError

# GetObject answers NoSuchKey; HeadObject has no body, so botocore reports its 404 as "404".
MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
MISSING_BUCKET_CODES = frozenset({"NoSuchBucket"})
# The caller's role may not read it (HeadObject's 403 has no body: "403"). With s3:ListBucket
# granted a missing key answers 404, so a 403 means "not permitted", not "missing". Expired or
# unknown credentials answer other codes (ExpiredToken, InvalidAccessKeyId) and stay transient.
ACCESS_DENIED_CODES = frozenset({"AccessDenied", "403", "Forbidden"})
INVALID_NAME_CODES = frozenset({"InvalidBucketName", "KeyTooLongError"})


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_missing(exc: ClientError) -> bool:
    """The object or its bucket does not exist."""
    return error_code(exc) in MISSING_OBJECT_CODES | MISSING_BUCKET_CODES
