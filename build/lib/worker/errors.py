"""Failures as data: every error that ends a job attempt is classified permanent or transient."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureKind(enum.StrEnum):
    PERMANENT = "permanent"  # retrying cannot help: fail the row, delete the message
    TRANSIENT = "transient"  # an outage or hiccup: return the message after a backoff


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    code: str  # short, fixed vocabulary: used as a metric label
    reason: str  # readable sentence stored on the job row

    @property
    def permanent(self) -> bool:
        return self.kind is FailureKind.PERMANENT


class JobFailed(Exception):
    """Raised by a pipeline stage with its classification attached."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def permanent(code: str, reason: str) -> JobFailed:
    return JobFailed(Failure(FailureKind.PERMANENT, code, reason))


def transient(code: str, reason: str) -> JobFailed:
    return JobFailed(Failure(FailureKind.TRANSIENT, code, reason))


def classify(exc: BaseException, *, stage: str) -> Failure:
    """Map any exception escaping a stage to a failure. Unknown errors count as transient:
    retrying an unexpected error is safe because attempts are bounded by MAX_ATTEMPTS."""
    if isinstance(exc, JobFailed):
        return exc.failure
    if isinstance(exc, TimeoutError):
        return Failure(FailureKind.TRANSIENT, "timeout", f"{stage}: timed out")
    text = str(exc) or type(exc).__name__
    return Failure(
        FailureKind.TRANSIENT, f"{stage}_error", f"{stage}: {type(exc).__name__}: {text}"[:500]
    )
