"""The admin page: server-rendered HTML (Jinja2, no front-end build). GET /admin shows health,
queue depth, jobs by status and the latest jobs with the photo beside its cut-out (presigned
URLs), and has buttons (POST forms) for the repairs in `operations`. Each POST redirects back to
the page (303) with a one-line notice, so a reload never repeats it. Put it behind your admin
auth."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from api_client import ClientConfigError, Job, JobClient, JobStatus
from examples.fastapi_app import operations
from examples.fastapi_app.errors import SERVICE_ERRORS, unavailable
from examples.fastapi_app.operations import OPEN, Outcome

log = structlog.get_logger(__name__)

LATEST_JOBS = 20
URL_SECONDS = 600  # presigned image URLs on the page live this long
HEALTH_TIMEOUT_SECONDS = 3.0
NOTICES_KEPT = 200

templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
router = APIRouter(prefix="/admin")


def job_client(request: Request) -> JobClient:
    jobs: JobClient = request.state.jobs
    return jobs


Jobs = Annotated[JobClient, Depends(job_client)]


class Notices:
    """One-line notices for the page after a redirect, by a random token (never text taken from
    the URL); the newest NOTICES_KEPT are kept."""

    def __init__(self) -> None:
        self._notices: OrderedDict[str, Outcome] = OrderedDict()

    def add(self, outcome: Outcome) -> str:
        token = secrets.token_urlsafe(12)
        self._notices[token] = outcome
        while len(self._notices) > NOTICES_KEPT:
            self._notices.popitem(last=False)
        return token

    def get(self, token: str | None) -> Outcome | None:
        return self._notices.get(token) if token else None


notices = Notices()


@dataclass(frozen=True, slots=True)
class JobRow:
    job: Job
    source_url: str | None
    cutout_url: str | None
    recipe: str
    open: bool


@router.get("", response_class=HTMLResponse)
async def admin_page(jobs: Jobs, notice: str | None = None) -> HTMLResponse:
    try:
        health, stats, latest = await asyncio.gather(
            jobs.check_health(timeout=HEALTH_TIMEOUT_SECONDS),
            jobs.stats(),
            jobs.list_jobs(limit=LATEST_JOBS),
        )
        rows = [await job_row(jobs, job) for job in latest]
    except SERVICE_ERRORS as exc:
        log.error("admin page: a service failed", exc_info=exc)
        return HTMLResponse(unavailable_page(), status_code=503)
    page = templates.get_template("admin.html").render(
        health=health, stats=stats, rows=rows, notice=notices.get(notice)
    )
    return HTMLResponse(page)


async def job_row(jobs: JobClient, job: Job) -> JobRow:
    s3 = jobs.require_s3()
    source_url: str = await s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": job.source_bucket, "Key": job.source_key},
        ExpiresIn=URL_SECONDS,
    )
    cutout_url = None
    if job.status is JobStatus.COMPLETED:
        try:
            cutout_url = await jobs.result_url(job, output="image", expires_in=URL_SECONDS)
        except ClientConfigError as exc:  # a row that records no "image" output: no picture
            log.warning("no cut-out to show", job_id=str(job.id), error=str(exc))
    recipe = recipe_summary(job)
    return JobRow(job, source_url, cutout_url, recipe, job.status in OPEN)


def recipe_summary(job: Job) -> str:
    """The recipe's fields that differ from the defaults, as JSON; "default recipe" when none
    do."""
    recipe = job.recipe
    if recipe is None:
        return "default recipe"
    defaults = type(recipe)().to_json()
    changed = {k: v for k, v in recipe.to_json().items() if v != defaults.get(k)}
    return json.dumps(changed) if changed else "default recipe"


def unavailable_page() -> str:
    return (
        "<!doctype html><title>image-worker admin</title><h1>image-worker admin</h1>"
        f"<p id='notice'>{unavailable().message}</p>"
    )


async def _job_action(jobs: JobClient, job_id: str, action: operations.Action) -> RedirectResponse:
    wanted = operations.parse_job_id(job_id)
    if wanted is None:
        outcome = operations.not_a_job_id(job_id)
    else:
        try:
            outcome = await action(jobs, wanted)
        except SERVICE_ERRORS as exc:
            log.error("admin action failed", job_id=job_id, exc_info=exc)
            outcome = unavailable()
    return _back(outcome)


def _back(outcome: Outcome) -> RedirectResponse:
    return RedirectResponse(f"/admin?notice={notices.add(outcome)}", status_code=303)


@router.post("/actions/jobs/{job_id}/retry")
async def retry_job(job_id: str, jobs: Jobs) -> RedirectResponse:
    return await _job_action(jobs, job_id, operations.retry)


@router.post("/actions/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, jobs: Jobs) -> RedirectResponse:
    return await _job_action(jobs, job_id, operations.cancel)


@router.post("/actions/jobs/{job_id}/remove-background")
async def remove_background_again(job_id: str, jobs: Jobs) -> RedirectResponse:
    return await _job_action(jobs, job_id, operations.remove_background_again)


@router.post("/actions/retry-failed")
async def retry_all_failed(jobs: Jobs) -> RedirectResponse:
    return _back(await _guarded(operations.retry_all_failed(jobs)))


@router.post("/actions/sweep")
async def sweep(jobs: Jobs) -> RedirectResponse:
    return _back(await _guarded(operations.sweep(jobs)))


async def _guarded(work: Awaitable[Outcome]) -> Outcome:
    try:
        return await work
    except SERVICE_ERRORS as exc:
        log.error("admin repair failed", exc_info=exc)
        return unavailable()
