"""The producer side: create background-removal jobs, hear back when they finish, cancel and
purge them, repair the queue. `JobClient` (asyncio) here; `SyncJobClient` in
`api_client.sync_client` (the `sync` extra). Logs go to the stdlib logger `image_worker.producer`
(no handler of its own: the app's logging configuration decides where they go)."""

import logging

from api_client.admin import DlqRedrive, QueueDepth, QueueStats, Requeued
from api_client.batch import JobBatch
from api_client.client import JobClient
from api_client.creation import ImageCopy, NewJob, PrimaryImageJob
from api_client.errors import ClientConfigError, JobNotFound, JobWaitTimeout
from api_client.health import HealthReport, WorkerCounts
from api_client.lifecycle import DeleteResult
from api_client.settings import ClientSettings
from jobcore.cancel_queries import CancelOutcome, CancelResult
from jobcore.checks import CheckResult
from jobcore.job_create import IdempotencyConflict
from jobcore.jobs import Job, JobStatus
from jobcore.recipe import Recipe, RecipeError

logging.getLogger("image_worker").addHandler(logging.NullHandler())

__all__ = [
    "CancelOutcome",
    "CancelResult",
    "CheckResult",
    "ClientConfigError",
    "ClientSettings",
    "DeleteResult",
    "DlqRedrive",
    "HealthReport",
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
    "Recipe",
    "RecipeError",
    "Requeued",
    "WorkerCounts",
]
