"""The producer side: create background-removal jobs, inspect them, repair the queue."""

from api_client.admin import DlqRedrive, QueueDepth, QueueStats, Requeued
from api_client.client import JobClient, NewJob
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.settings import ClientSettings
from jobcore.jobs import Job, JobStatus

__all__ = [
    "ClientConfigError",
    "ClientSettings",
    "DlqRedrive",
    "Job",
    "JobClient",
    "JobNotFound",
    "JobStatus",
    "JobWaitTimeout",
    "NewJob",
    "QueueDepth",
    "QueueStats",
    "Requeued",
]
