"""The fal protocol routes: sync run, queue submit, status (+ SSE stream), result and cancel, for every endpoint.

Routes are thin: they validate with the schema, put jobs in the store and read the store back; the store
announces what changed (it wakes the workers, and the streams and sync requests waiting here).
The run and submit routes are registered once per endpoint (below ``ENDPOINTS``: the base endpoint ``/{app}`` and
``/{app}/{task}`` for pose, depth, inpainting, outpainting and reframe), each taking its own request model
(``pipelines.registry.input_model``), so ``/openapi.json`` lists each one with its own body schema, the way the
playground and fal's own per-endpoint documents show them. fal-client rebuilds status/result/cancel
URLs without the task (``/queue/{owner}/{alias}/requests/{id}``), fal's per-endpoint OpenAPI documents name them
with it (``/queue/{owner}/{alias}/{task}/requests/{id}``): both are served. The SDKs sometimes add a trailing slash,
so every route also answers with one. A running job's live preview is ``.../requests/{id}/preview``.

fal-client's queue headers are honoured: ``X-Fal-Queue-Priority: low|normal`` (low jobs run after every queued
normal one), ``X-Fal-Request-Timeout: S`` (a job not started within S seconds ends with fal's 504
``request_timeout`` and ``X-Fal-Request-Timeout-Type: user``, on the queue and the sync route alike) and
``X-Fal-Runner-Hint`` (shown in the job's logs; a worker that ran a job with the same hint lately takes it first,
see ``JobStore.claim``). Status, stream and result reads run off the event loop: store reads block (a SQLite
read, or a round trip to PostgreSQL).
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from pipelines.checks import check_inputs
from pipelines.context import JobContext
from pipelines.registry import APP_TASKS, APPS, EndpointTask, endpoint_id, input_model
from pipelines.schema import OUTPUT_MODELS, EndpointInput, VaceOutput

from ..fal import protocol
from ..fal.failures import RequestFailed, failure_response
from ..files.store import file_headers
from ..runtime.webhooks import check_webhook_url
from ..runtime.worker import Workers
from ..store.jobs import Job, JobStore, LogLine, Priority, request_failure
from .auth import API_KEY_HEADER, Caller
from .deps import BaseUrlDep, CallerDep, ChangesDep, FilesDep, JobContextDep, JobDep, PoolDep, StoreDep
from .request_id import REQUEST_ID_HEADER

SYNC_POLL_S = 5.0  # fallback re-read of a sync job; normally the store's announcement wakes the request first
STREAM_POLL_S = 1.0  # re-read of a streamed job (queue positions move without a notification)
MAX_PREVIEW_BYTES = 16 * 1024**2  # a preview is a few hundred KB; the bound is on a corrupt or foreign file
REQUESTS = ("/queue/{owner}/{alias}/requests/{request_id}", "/queue/{owner}/{alias}/{task}/requests/{request_id}")
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": protocol.ErrorDetail, "description": "Missing or invalid API key"},
    404: {"model": protocol.ErrorDetail, "description": "Unknown app, task or request"},
    422: {"model": protocol.ErrorDetail, "description": "Invalid input (fal's validation error list)"},
}


@dataclass(frozen=True)
class Endpoint:
    app: str
    model: str
    task: EndpointTask  # "" for the base endpoint

    @property
    def id(self) -> str:
        return endpoint_id(self.app, self.task)


ENDPOINTS = [Endpoint(app, model, task) for app, model in APPS.items() for task in APP_TASKS[app]]
_BY_PATH = {f"{prefix}/{e.id}": e for e in ENDPOINTS for prefix in ("", "/queue")}


def _endpoint(request: Request) -> Endpoint:
    """The endpoint whose run or submit route took the request."""
    return _BY_PATH[request.scope["route"].path.rstrip("/")]


EndpointDep = Annotated[Endpoint, Depends(_endpoint)]


@dataclass(frozen=True)
class QueueOptions:
    """What fal-client's queue headers ask of a job."""

    priority: Priority = "normal"
    start_timeout_s: float | None = None
    runner_hint: str | None = None


def _bad_request(message: str) -> RequestFailed:
    """A queue header fal-client would never send: fal's 400 ``bad_request``."""
    return RequestFailed(request_failure(400, message, "bad_request"))


def _queue_options(
    priority: Annotated[str | None, Header(alias="x-fal-queue-priority", description="low or normal")] = None,
    timeout: Annotated[
        str | None, Header(alias="x-fal-request-timeout", description="seconds the job may wait to start")
    ] = None,
    hint: Annotated[
        str | None, Header(alias="x-fal-runner-hint", description="routing hint, kept with the job")
    ] = None,
) -> QueueOptions:
    if priority is not None and priority.strip().lower() not in ("low", "normal"):
        raise _bad_request(f"X-Fal-Queue-Priority must be low or normal, got {priority[:40]!r}")
    start_timeout = None
    if timeout is not None:
        try:
            start_timeout = float(timeout)
        except ValueError:
            start_timeout = float("nan")
        if not 0 < start_timeout < 10**9:
            raise _bad_request(f"X-Fal-Request-Timeout must be a positive number of seconds, got {timeout[:40]!r}")
    level: Priority = "low" if (priority or "").strip().lower() == "low" else "normal"
    return QueueOptions(priority=level, start_timeout_s=start_timeout, runner_hint=hint[:200] if hint else None)


QueueOptionsDep = Annotated[QueueOptions, Depends(_queue_options)]

# The key is checked by the request guard before any body is read; declaring the scheme here documents it.
router = APIRouter(dependencies=[Security(API_KEY_HEADER)], responses=_ERRORS)


def _request_id_headers(job: Job) -> dict[str, str]:
    return {REQUEST_ID_HEADER: job.id}


def _wants_logs(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def result_response(job: Job) -> JSONResponse:
    """A finished job's answer: its output, or its own error status and body."""
    if job.failure is None:
        return JSONResponse(job.result, headers=_request_id_headers(job))
    return failure_response(job.failure, _request_id_headers(job))


def _enqueue(
    inp: EndpointInput,
    endpoint: Endpoint,
    options: QueueOptions,
    webhook: str | None,
    *,
    store: JobStore,
    pool: Workers,
    ctx: JobContext,
    caller: Caller,
    base_url: str,
) -> Job:
    """Check a request (and its webhook) and queue it; every refusal comes before anything is stored."""
    # Refused at submission with a 422, never queued.
    check_inputs(inp, endpoint.task, ctx, pool.models, model=endpoint.model)
    if webhook is not None:
        check_webhook_url(webhook, ctx)
    if not pool.has_weights(endpoint.model):
        raise HTTPException(
            503,
            f"the weights of {endpoint.model} (serving {endpoint.app}) are not installed on "
            f"this server; run `vace weights download --models {endpoint.model}`",
        )
    job = store.add(
        app=endpoint.app,
        task=endpoint.task,
        model=endpoint.model,
        input=inp.model_dump(mode="json"),
        base_url=base_url,
        webhook_url=webhook,
        owner=caller.key_id,
        priority=options.priority,
        start_timeout_s=options.start_timeout_s,
        runner_hint=options.runner_hint,
    )
    if options.runner_hint:
        store.log(job.id, f"runner hint: {options.runner_hint}")
    return job


async def run(
    inp: EndpointInput,
    endpoint: EndpointDep,
    options: QueueOptionsDep,
    store: StoreDep,
    pool: PoolDep,
    changes: ChangesDep,
    ctx: JobContextDep,
    caller: CallerDep,
    base_url: BaseUrlDep,
) -> JSONResponse:
    """Run a job and wait for its output (like ``fal.run``)."""
    job = await run_in_threadpool(
        _enqueue, inp, endpoint, options, None, store=store, pool=pool, ctx=ctx, caller=caller, base_url=base_url
    )
    with changes.watch(job.id) as watch:
        while True:
            current = await run_in_threadpool(store.get, job.id)
            if current is not None and current.status == "COMPLETED":
                return result_response(current)
            await watch.wait(SYNC_POLL_S)


def submit(
    inp: EndpointInput,
    endpoint: EndpointDep,
    options: QueueOptionsDep,
    store: StoreDep,
    pool: PoolDep,
    ctx: JobContextDep,
    caller: CallerDep,
    base_url: BaseUrlDep,
    fal_webhook: str | None = Query(
        None, description="URL that receives the result when the job ends (public addresses only, as for media)"
    ),
) -> JSONResponse:
    """Queue a job (like ``queue.fal.run``)."""
    job = _enqueue(
        inp, endpoint, options, fal_webhook, store=store, pool=pool, ctx=ctx, caller=caller, base_url=base_url
    )
    body = protocol.submitted(job, store.queue_position(job))
    return JSONResponse(body.model_dump(), headers=_request_id_headers(job))


def _both(
    method: Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]], *paths: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A route decorator for each of ``paths`` and its ``path/`` form (left out of the schema)."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        for path in paths:
            method(path + "/", include_in_schema=False, **kwargs)(fn)
            method(path, **kwargs)(fn)
        return fn

    return register


def _with_body(route: Callable[..., Any], model: type[EndpointInput]) -> Callable[..., Any]:
    """``route`` with ``model`` as the type of its ``inp`` parameter, which FastAPI validates the body with and
    documents in ``/openapi.json``: one route function serves every endpoint, each with its own request model."""
    signature = inspect.signature(route, eval_str=True)
    params = [p.replace(annotation=model) if p.name == "inp" else p for p in signature.parameters.values()]

    async def call_async(*args: Any, **kwargs: Any) -> Any:
        return await route(*args, **kwargs)

    def call(*args: Any, **kwargs: Any) -> Any:
        return route(*args, **kwargs)

    endpoint: Callable[..., Any] = call_async if inspect.iscoroutinefunction(route) else call
    # A function type declares no __signature__, yet inspect (and so FastAPI) reads the one set here.
    endpoint.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    endpoint.__doc__ = route.__doc__
    return endpoint


def _register_endpoints() -> None:
    """The run and submit routes of every endpoint, each with its own path, request model and operation id."""
    for e in ENDPOINTS:
        model, op = input_model(e.app, e.task), f"{e.model}_{e.task or 'base'}"
        _both(
            router.post,
            f"/{e.id}",
            response_model=OUTPUT_MODELS.get(e.id, VaceOutput),
            operation_id=f"run_{op}",
            summary=f"Run {e.id} and wait for the output",
        )(_with_body(run, model))
        _both(
            router.post,
            f"/queue/{e.id}",
            response_model=protocol.QueueSubmitted,
            operation_id=f"submit_{op}",
            summary=f"Queue a {e.id} job",
        )(_with_body(submit, model))


_register_endpoints()


@_both(
    router.get,
    *(f"{r}/status" for r in REQUESTS),
    response_model=protocol.QueueStatus,
    summary="Status of a queued request (202 while queued or running, 200 when completed)",
)
def get_status(job: JobDep, store: StoreDep, logs: str | None = None) -> JSONResponse:
    position = store.queue_position(job) if job.status == "IN_QUEUE" else None
    body = protocol.status(job, store.logs(job.id) if _wants_logs(logs) else [], position)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=200 if job.status == "COMPLETED" else 202,
        headers=_request_id_headers(job),
    )


@_both(
    router.get,
    *(f"{r}/status/stream" for r in REQUESTS),
    response_class=EventSourceResponse,
    summary="Server-sent events: one status per change, closed after COMPLETED",
)
async def stream_status(
    job: JobDep, store: StoreDep, changes: ChangesDep, logs: str | None = None
) -> AsyncIterator[ServerSentEvent]:
    """One event per change of status, queue position, control video, live preview or logs (only the new lines each
    time, as
    @fal-ai/client accumulates them); ends after COMPLETED. FastAPI sends keep-alive comments while idle, and
    ``x-fal-request-id`` comes from :class:`~server.api.request_id.RequestIdHeader` (a generator sets no headers)."""
    with_logs, sent_logs, last_key = _wants_logs(logs), 0, None
    with changes.watch(job.id) as watch:
        while True:
            snapshot = await run_in_threadpool(_snapshot, store, job.id, with_logs)
            if snapshot is None:
                return
            current, lines, position = snapshot
            key = (current.status, position, len(lines), current.control_video_url, current.preview_key)
            if key != last_key:
                yield ServerSentEvent(
                    data=protocol.status(current, lines[sent_logs:], position).model_dump(exclude_none=True)
                )
                sent_logs, last_key = len(lines), key
            if current.status == "COMPLETED":
                return
            await watch.wait(STREAM_POLL_S)


def _snapshot(store: JobStore, job_id: str, with_logs: bool) -> tuple[Job, list[LogLine], int | None] | None:
    """A job, its log lines (when asked for) and its queue position, read together."""
    job = store.get(job_id)
    if job is None:
        return None
    position = store.queue_position(job) if job.status == "IN_QUEUE" else None
    return job, store.logs(job_id) if with_logs else [], position


@_both(
    router.get,
    *(f"{r}/preview" for r in REQUESTS),
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}, "description": "An animated WebP"}},
    summary="The live preview of a running request (404 until it has one, and once it has ended)",
)
def get_preview(job: JobDep, files: FilesDep) -> Response:
    """The newest preview of the job's denoising (the status body's ``preview_url``), read from the file store here
    rather than redirected to it, so the preview is answered under the key that may see the job and nothing else."""
    data = None
    if job.preview_key is not None:
        with tempfile.TemporaryDirectory(prefix="vace-preview-") as tmp:
            path = files.fetch(files.url(job.preview_key, job.base_url), Path(tmp), MAX_PREVIEW_BYTES)
            with contextlib.suppress(FileNotFoundError):  # replaced just now, or the job ended
                data = path.read_bytes() if path is not None else None
    if data is None:
        raise HTTPException(404, f"Request {job.id} has no preview (yet, or any more)")
    headers = {**file_headers("preview.webp"), **_request_id_headers(job), "cache-control": "no-store"}
    return Response(data, media_type="image/webp", headers=headers)


@_both(
    router.get,
    *REQUESTS,
    response_model=VaceOutput,
    summary="The output, or the request's own error status and body if it failed",
)
def get_result(job: JobDep) -> JSONResponse:
    if job.status != "COMPLETED":
        return JSONResponse(
            {"detail": "Request is still in progress"}, status_code=400, headers=_request_id_headers(job)
        )
    return result_response(job)


@_both(
    router.put,
    *(f"{r}/cancel" for r in REQUESTS),
    status_code=202,
    response_model=protocol.CancelResult,
    summary="Cancel: a queued request never runs, a running one stops at its next denoising step",
)
def cancel(job: JobDep, store: StoreDep) -> JSONResponse:
    before = store.request_cancel(job.id)
    if before is None or before.status == "COMPLETED":
        body = {"status": "ALREADY_COMPLETED", "detail": f"Request {job.id} has already completed"}
        return JSONResponse(body, status_code=400, headers=_request_id_headers(job))
    return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=_request_id_headers(job))
