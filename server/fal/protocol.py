"""The fal queue protocol's response bodies, as pydantic models (they document ``/openapi.json``) and builders.

The shapes follow what the fal clients read: every status body carries ``logs`` (fal-client indexes it without a
default), ``IN_QUEUE`` carries ``queue_position``, ``COMPLETED`` carries ``metrics`` and, for a failed job,
``error`` and ``error_type``. All URLs are absolute, under the base URL the job was submitted on. Two extensions:
``control_video_url``, the control video a ``preprocess=true`` job made, from the moment it exists, and
``preview_url`` with ``preview_step``, the live preview of a job while it denoises (the clients ignore fields they do
not know; the output schema stays fal's).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel

from ..store.jobs import LEVELS, Job, LogLine


class LogEntry(BaseModel):
    message: str
    level: Literal["STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"]
    source: str = "USER"
    timestamp: str


class QueueSubmitted(BaseModel):
    """Answer to ``POST /queue/{app}/{task}``."""

    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    gateway_request_id: str
    """The same as ``request_id`` here: fal differs only when its gateway retried a request on another runner."""
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int


class QueueStatus(BaseModel):
    """Answer to ``GET /queue/{app}/requests/{id}/status`` and each event of its ``/stream``."""

    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    logs: list[LogEntry]
    queue_position: int | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    error_type: str | None = None
    control_video_url: str | None = None
    """Extension: the pose/depth control video that ``preprocess=true`` made from the input, once it exists."""
    preview_url: str | None = None
    """Extension: while the job denoises, where its live preview is (``GET .../requests/{id}/preview``, an animated
    WebP of the current prediction of the video, with the same key as the result); gone when the job ends."""
    preview_step: int | None = None
    """Extension: the denoising step the live preview shows (a new preview is a new step)."""


class CancelResult(BaseModel):
    """Answer to ``PUT /queue/{app}/requests/{id}/cancel``: 202 ``CANCELLATION_REQUESTED``, or a 400 error whose
    body keeps fal's ``status`` and, like every error body, has a ``detail`` (fal-client raises with it)."""

    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]
    detail: str | None = None


class ErrorDetail(BaseModel):
    """Every error body: a message, or for validation errors fal's list of ``{loc, msg, type, ctx?}``."""

    detail: str | list[dict[str, Any]]


def validation_detail(errors: Any) -> list[dict[str, Any]]:
    """fal's 422 items from pydantic errors: ``loc``, ``msg``, ``type`` and ``ctx`` when present; the offending
    input is not echoed (it can be a megabyte-long data URI)."""
    detail = []
    for error in errors:
        item = {"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]}
        if error.get("ctx"):
            item["ctx"] = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in error["ctx"].items()}
        detail.append(item)
    return detail


def job_urls(job: Job) -> dict[str, str]:
    base = f"{job.base_url}/queue/{job.app}/requests/{job.id}"
    return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}


def preview_url(job: Job) -> str:
    return f"{job_urls(job)['response_url']}/preview"


def log_entries(lines: list[LogLine]) -> list[LogEntry]:
    return [
        LogEntry(
            message=line.message,
            level=_fal_level(line.level),
            timestamp=datetime.fromtimestamp(line.timestamp, UTC).isoformat(),
        )
        for line in lines
    ]


def _fal_level(level: str) -> str:
    """One of fal's levels (lines stored by older versions say WARNING)."""
    return "WARN" if level == "WARNING" else level if level in LEVELS else "INFO"


def submitted(job: Job, queue_position: int) -> QueueSubmitted:
    return QueueSubmitted(request_id=job.id, gateway_request_id=job.id, queue_position=queue_position, **job_urls(job))


def status(job: Job, logs: list[LogLine], queue_position: int | None) -> QueueStatus:
    """The status body of ``job``; ``logs`` are the lines to include (all, only new ones, or none)."""
    body = QueueStatus(
        status=job.status,
        request_id=job.id,
        logs=log_entries(logs),
        control_video_url=job.control_video_url,
        **job_urls(job),
    )
    if job.preview_key is not None:
        body.preview_url, body.preview_step = preview_url(job), job.preview_step
    if job.status == "IN_QUEUE":
        body.queue_position = queue_position
    elif job.status == "COMPLETED":
        started, finished = job.started_at, job.finished_at
        body.metrics = {"inference_time": finished - started} if started is not None and finished is not None else {}
        if job.failure is not None:
            body.error = job.failure.message
            body.error_type = job.failure.type
    return body
