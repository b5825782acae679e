"""The one mapping from an exception to how a request fails: its HTTP status, fal-shaped body and error type.

The worker uses it for a job that raised, the app's exception handlers for a request refused before it became a
job, and the result route answers with what the worker stored, so the same mistake reads the same wherever it
is caught. Bad input is fal's model-error shape, 422 ``{"detail": [{loc, msg, type}]}``. Everything else is fal's
request-error shape, ``{"detail": message, "error_type": type}`` with the type also in ``X-Fal-Error-Type``, using
the types of fal's table ("request errors"):

=========================  ======  =====================  =================================================
what happened              status  error_type             message starts with
=========================  ======  =====================  =================================================
device out of memory       500     runner_server_error    "out of memory on <device>: ..." and what to change
disk full                  500     runner_server_error    "out of disk space: ..."
anything else              500     internal_error         "internal error <error id>: ..."
server died twice mid-job  503     runner_disconnected    "the server stopped while this job was running"
cancelled by the caller    499     client_cancelled       "Request was cancelled"
not started in time        504     request_timeout        + ``X-Fal-Request-Timeout-Type: user``
bad timeout header         400     bad_request
=========================  ======  =====================  =================================================

An unexpected exception's text stays in the server's log, under a random error id that the client's message names:
it can hold paths, addresses, database or library internals that are nobody's business on the other end (the body
goes to the caller, its webhook receiver and the job's log lines).
"""

from __future__ import annotations

import errno
import logging
import secrets
import sqlite3

import torch
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from pipelines.errors import InputError

from ..store.jobs import Failure, request_failure
from .protocol import validation_detail

log = logging.getLogger(__name__)

ERROR_TYPE_HEADER = "x-fal-error-type"


class RequestFailed(Exception):
    """Raised by a route to answer with ``failure`` (the app's handler sends it through :func:`failure_response`)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def failure_of(exc: BaseException, device: torch.device | str = "the device") -> Failure:
    """How a request that raised ``exc`` fails (``device`` names where a job ran, for out-of-memory messages)."""
    if isinstance(exc, RequestFailed):
        return exc.failure
    if isinstance(exc, InputError):
        return Failure(422, {"detail": exc.detail()}, str(exc), exc.type)
    if isinstance(exc, (RequestValidationError, ValidationError)):
        # A stored input revalidated by a worker has field locs; a request's already start at body or query.
        errors = [
            e if isinstance(exc, RequestValidationError) else {**e, "loc": ("body", *e["loc"])} for e in exc.errors()
        ]
        detail = validation_detail(errors)
        return Failure(422, {"detail": detail}, f"invalid input: {detail}", detail[0]["type"] if detail else "")
    if isinstance(exc, torch.OutOfMemoryError):  # torch's text names other processes on the device: logged only
        log.error("out of memory on %s: %s", device, str(exc).strip())
        return request_failure(
            500,
            f"out of memory on {device}; try fewer frames, a lower resolution, or start the "
            "server with a lower --memory-mode (fp8, group_offload, model_offload)",
            "runner_server_error",
        )
    if _disk_full(exc):
        log.error("out of disk space: %s", exc)
        return request_failure(
            500,
            "out of disk space: the server ran out of disk space while running this job; nothing of it was kept",
            "runner_server_error",
        )
    error_id = secrets.token_hex(6)
    log.error("internal error %s", error_id, exc_info=exc)
    return request_failure(
        500,
        f"internal error {error_id}: the request failed on the server; its log has the details under this id",
        "internal_error",
    )


def failure_response(failure: Failure, headers: dict[str, str] | None = None) -> JSONResponse:
    """The HTTP answer of a failed request: its status, body and headers, with its error type in a header as fal
    sends it."""
    return JSONResponse(
        failure.body,
        status_code=failure.status_code,
        headers={**(headers or {}), **failure.headers, ERROR_TYPE_HEADER: failure.type},
    )


def _disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` or what caused it is a full disk (an OS write error, or SQLite's own report of it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "disk is full" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
