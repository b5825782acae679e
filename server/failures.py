"""The one mapping from an exception to how a request fails: its HTTP status, fal-shaped body and error type.

The worker uses it for a job that raised, the app's exception handlers for a request refused before it became a
job, and the result route answers with what the worker stored, so the same mistake reads the same wherever it
is caught: bad input is fal's 422 ``{"detail": [{loc, msg, type}]}``, running out of device memory or disk is
named as such with what to change, anything else is an internal error with the exception's own message.
"""

from __future__ import annotations

import errno
import sqlite3

import torch
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from pipelines.errors import InputError

from .jobs import Failure
from .protocol import validation_detail

ERROR_TYPE_HEADER = "x-fal-error-type"


def failure_of(exc: BaseException, device: torch.device | str = "the device") -> Failure:
    """How a request that raised ``exc`` fails (``device`` names where a job ran, for out-of-memory messages)."""
    if isinstance(exc, InputError):
        return Failure(422, {"detail": exc.detail()}, str(exc), exc.type)
    if isinstance(exc, (RequestValidationError, ValidationError)):
        # A stored input revalidated by a worker has field locs; a request's already start at body or query.
        errors = [e if isinstance(exc, RequestValidationError) else {**e, "loc": ("body", *e["loc"])}
                  for e in exc.errors()]
        detail = validation_detail(errors)
        return Failure(422, {"detail": detail}, f"invalid input: {detail}", detail[0]["type"] if detail else "")
    if isinstance(exc, torch.OutOfMemoryError):
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        message = (f"{device} ran out of memory ({first_line}); try fewer frames, a lower resolution, or start the "
                   "server with a lower --memory-mode (fp8, group_offload, model_offload)")
        return Failure(500, {"detail": message}, message, "out_of_memory")
    if _disk_full(exc):
        message = f"the server ran out of disk space while running this job ({exc}); nothing of it was kept"
        return Failure(507, {"detail": message}, message, "insufficient_storage")
    message = f"{type(exc).__name__}: {exc}"
    return Failure(500, {"detail": message}, message, "internal_error")


def failure_response(failure: Failure, headers: dict[str, str] | None = None) -> JSONResponse:
    """The HTTP answer of a failed request: its status and body, with its error type in a header as fal sends."""
    return JSONResponse(failure.body, status_code=failure.status_code,
                        headers={**(headers or {}), ERROR_TYPE_HEADER: failure.type})


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
