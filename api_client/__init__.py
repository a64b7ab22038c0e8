"""The producer side: create background-removal jobs, inspect them, repair the queue."""

from api_client.admin import DlqRedrive, QueueDepth, QueueStats, Requeued
from api_client.batch import JobBatch
from api_client.client import JobClient
from api_client.creation import ImageCopy, NewJob, PrimaryImageJob
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.settings import ClientSettings
from jobcore.job_create import IdempotencyConflict
from jobcore.jobs import Job, JobStatus

__all__ = [
    "ClientConfigError",
    "ClientSettings",
    "DlqRedrive",
    "IdempotencyConflict",
    "ImageCopy",
    "Job",
    "JobBatch",
    "JobClient",
    "JobNotFound",
    "JobStatus",
    "JobWaitTimeout",
    "NewJob",
    "PrimaryImageJob",
    "QueueDepth",
    "QueueStats",
    "Requeued",
]
