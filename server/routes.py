"""The fal protocol routes: sync run, queue submit, status (+ SSE stream), result and cancel, for every app and task.

Routes are thin: they validate with the schema, put jobs in the store, wake the workers and read the store back.
fal-client rebuilds status/result/cancel URLs without the task (``/queue/{owner}/{alias}/requests/{id}``) and
the SDKs sometimes add a trailing slash, so every route also answers with one.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from pipelines.context import JobContext
from pipelines.fetch import url_scheme
from pipelines.generate import check_inputs
from pipelines.registry import APPS, TASKS
from pipelines.schema import VaceInput, VaceOutput

from . import protocol
from .failures import failure_response
from .auth import API_KEY_HEADER, Auth, Caller
from .events import Changes
from .jobs import Job, JobStore
from .worker import WorkerPool

REQUEST_ID_HEADER = "x-fal-request-id"
SYNC_POLL_S = 5.0  # fallback re-read of a sync job; normally a worker's notification wakes the request first
STREAM_POLL_S = 1.0  # re-read of a streamed job (queue positions move without a notification)
STREAM_KEEPALIVE_S = 10.0
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": protocol.ErrorDetail, "description": "Missing or invalid API key"},
    404: {"model": protocol.ErrorDetail, "description": "Unknown app, task or request"},
    422: {"model": protocol.ErrorDetail, "description": "Invalid input (fal's validation error list)"},
}


def _request_id_headers(job: Job) -> dict[str, str]:
    return {REQUEST_ID_HEADER: job.id}


def result_response(job: Job) -> JSONResponse:
    """A finished job's answer: its output, or its own error status and body."""
    if job.failure is None:
        return JSONResponse(job.result, headers=_request_id_headers(job))
    return failure_response(job.failure, _request_id_headers(job))


def _wants_logs(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def fal_router(
    *,
    store: JobStore,
    pool: WorkerPool,
    changes: Changes,
    auth: Auth,
    public_url: str | None,
    on_finished: Callable[[str], None],
    ctx: JobContext,
) -> APIRouter:
    # The key is checked by the request guard before any body is read; declaring the scheme here documents it.
    router = APIRouter(dependencies=[Security(API_KEY_HEADER)], responses=_ERRORS)

    def add(path: str, endpoint: Callable[..., Any], method: str, **kwargs: Any) -> None:
        router.add_api_route(path, endpoint, methods=[method], **kwargs)
        router.add_api_route(path + "/", endpoint, methods=[method], include_in_schema=False, **kwargs)

    def base_url(request: Request) -> str:
        return (public_url or str(request.base_url)).rstrip("/")

    def enqueue(inp: VaceInput, request: Request, app: str, model: str, task: str, webhook: str | None) -> Job:
        check_inputs(inp, task, ctx, pool.models)  # refused at submission with a 422, never queued
        if not pool.has_weights(model):
            raise HTTPException(503, f"the weights of {model} (serving {app}) are not installed on this server; "
                                     f"run `vace weights download --models {model}`")
        caller: Caller = request.state.caller
        job = store.add(app=app, task=task, model=model, input=inp.model_dump(mode="json"),
                        base_url=base_url(request), webhook_url=webhook, owner=caller.key_id)
        pool.notify()
        return job

    def find(request: Request, owner: str, alias: str, request_id: str) -> Job:
        """The job, if it exists under this app and the caller's key made it (or is an admin key)."""
        app = f"{owner}/{alias}"
        if app not in APPS:
            raise HTTPException(404, f"unknown app {app!r}; this server serves {', '.join(APPS)}")
        job = store.get(request_id)
        if job is None or job.app != app or not auth.can_see(request.state.caller, job.owner):
            raise HTTPException(404, f"Request {request_id} not found")
        return job

    def add_endpoints(app: str, model: str, task: str) -> None:
        async def run(inp: VaceInput, request: Request) -> JSONResponse:
            job = await run_in_threadpool(enqueue, inp, request, app, model, task, None)
            with changes.watch(job.id) as watch:
                while True:
                    current = store.get(job.id)
                    if current is not None and current.status == "COMPLETED":
                        return result_response(current)
                    await watch.wait(SYNC_POLL_S)

        def submit(
            inp: VaceInput,
            request: Request,
            fal_webhook: str | None = Query(None, description="URL that receives the result when the job ends"),
        ) -> JSONResponse:
            if fal_webhook is not None and url_scheme(fal_webhook) not in ("http", "https"):
                raise RequestValidationError(
                    [{"loc": ("query", "fal_webhook"), "msg": "must be an http(s) URL", "type": "value_error"}])
            job = enqueue(inp, request, app, model, task, fal_webhook)
            body = protocol.submitted(job, store.queue_position(job))
            return JSONResponse(body.model_dump(), headers=_request_id_headers(job))

        add(f"/{app}/{task}", run, "POST", response_model=VaceOutput, operation_id=f"run_{model}_{task}",
            summary=f"Run {app}/{task} and wait for the output (like fal.run)")
        add(f"/queue/{app}/{task}", submit, "POST", response_model=protocol.QueueSubmitted,
            operation_id=f"submit_{model}_{task}", summary=f"Queue a {app}/{task} job (like queue.fal.run)")

    for app, model in APPS.items():
        for task in TASKS:
            add_endpoints(app, model, task)

    requests_path = "/queue/{owner}/{alias}/requests/{request_id}"

    def get_status(request: Request, owner: str, alias: str, request_id: str, logs: str | None = None) -> JSONResponse:
        job = find(request, owner, alias, request_id)
        position = store.queue_position(job) if job.status == "IN_QUEUE" else None
        body = protocol.status(job, store.logs(job.id) if _wants_logs(logs) else [], position)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if job.status == "COMPLETED" else 202,
                            headers=_request_id_headers(job))

    async def stream_status(request: Request, owner: str, alias: str, request_id: str,
                            logs: str | None = None) -> StreamingResponse:
        job = find(request, owner, alias, request_id)
        return StreamingResponse(
            _status_events(store, changes, job.id, _wants_logs(logs)), media_type="text/event-stream",
            headers={**_request_id_headers(job), "cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    def get_result(request: Request, owner: str, alias: str, request_id: str) -> JSONResponse:
        job = find(request, owner, alias, request_id)
        if job.status != "COMPLETED":
            return JSONResponse({"detail": "Request is still in progress"}, status_code=400,
                                headers=_request_id_headers(job))
        return result_response(job)

    def cancel(request: Request, owner: str, alias: str, request_id: str) -> JSONResponse:
        job = find(request, owner, alias, request_id)
        before = store.request_cancel(job.id)
        if before is None or before.status == "COMPLETED":
            body = {"status": "ALREADY_COMPLETED", "detail": f"Request {job.id} has already completed"}
            return JSONResponse(body, status_code=400, headers=_request_id_headers(job))
        changes.notify(job.id)
        if before.status == "IN_QUEUE":
            on_finished(job.id)
        return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202, headers=_request_id_headers(job))

    add(f"{requests_path}/status", get_status, "GET", response_model=protocol.QueueStatus,
        summary="Status of a queued request (202 while queued or running, 200 when completed)")
    add(f"{requests_path}/status/stream", stream_status, "GET",
        summary="Server-sent events: one status per change, closed after COMPLETED")
    add(requests_path, get_result, "GET", response_model=VaceOutput,
        summary="The output, or the request's own error status and body if it failed")
    add(f"{requests_path}/cancel", cancel, "PUT", status_code=202, response_model=protocol.CancelResult,
        summary="Cancel: a queued request never runs, a running one stops at its next denoising step")
    return router


async def _status_events(store: JobStore, changes: Changes, job_id: str, with_logs: bool) -> AsyncIterator[str]:
    """One ``data:`` event per change of status, queue position, control video or logs (only the new lines each
    time, as @fal-ai/client accumulates them); ends after COMPLETED."""
    sent_logs, last_key, last_sent = 0, None, time.monotonic()
    with changes.watch(job_id) as watch:
        while True:
            job = store.get(job_id)
            if job is None:
                return
            lines = store.logs(job_id) if with_logs else []
            position = store.queue_position(job) if job.status == "IN_QUEUE" else None
            key = (job.status, position, len(lines), job.control_video_url)
            if key != last_key:
                body = protocol.status(job, lines[sent_logs:], position)
                yield f"data: {json.dumps(body.model_dump(exclude_none=True))}\n\n"
                sent_logs, last_key, last_sent = len(lines), key, time.monotonic()
            elif time.monotonic() - last_sent > STREAM_KEEPALIVE_S:
                yield ": keepalive\n\n"
                last_sent = time.monotonic()
            if job.status == "COMPLETED":
                return
            await watch.wait(STREAM_POLL_S)
