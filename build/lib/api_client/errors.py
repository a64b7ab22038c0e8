"""What the producer raises: bad settings or arguments, an unknown job, a wait that ran out."""

from __future__ import annotations

import uuid

from jobcore.jobs import Job


class ClientConfigError(ValueError):
    """Settings or arguments that cannot work (a missing variable, no source bucket)."""


class JobNotFound(LookupError):
    def __init__(self, job_id: uuid.UUID) -> None:
        super().__init__(f"no job {job_id}")
        self.job_id = job_id


class JobWaitTimeout(TimeoutError):
    """The job did not finish in time; `job` is its last seen state."""

    def __init__(self, job: Job, timeout: float) -> None:
        super().__init__(f"job {job.id} still {job.status.value} after {timeout:g}s")
        self.job = job
