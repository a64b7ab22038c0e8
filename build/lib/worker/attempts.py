"""Which model an attempt runs, and what the quality gate's verdict means for the next attempt.

An attempt runs the recipe's fallback model on the last attempt (or from `fallback_from_attempt`),
and also right after an attempt the gate ended: such an attempt is released as a transient failure
whose reason starts with `no_subject:`, and the row keeps that reason as its `error` until the
next claim reads it. A gate failure on the fallback model (or with none set) fails the job."""

from __future__ import annotations

from jobcore.jobs import Job
from jobcore.recipe import Recipe
from worker.errors import JobFailed, permanent, transient

NO_SUBJECT = "no_subject"


def model_for(job: Job, recipe: Recipe, receive_count: int, max_attempts: int) -> str:
    """`job` as claimed: its `error` is the previous attempt's reason."""
    model = recipe.model_for_attempt(receive_count, max_attempts)
    if recipe.fallback_model is not None and (job.error or "").startswith(f"{NO_SUBJECT}:"):
        return recipe.fallback_model
    return model


def uses_fallback(recipe: Recipe, model: str) -> bool:
    return recipe.fallback_model is not None and model == recipe.fallback_model


def gate_failure(recipe: Recipe, model: str, reason: str) -> JobFailed:
    """Transient when the fallback model has yet to try, else permanent."""
    if recipe.fallback_model is not None and not uses_fallback(recipe, model):
        return transient(
            NO_SUBJECT,
            f"{NO_SUBJECT}: {reason}; the next attempt runs the fallback model "
            f"{recipe.fallback_model!r}",
        )
    return permanent(NO_SUBJECT, f"{NO_SUBJECT}: {reason}")
