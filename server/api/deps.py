"""The server's shared objects as FastAPI dependencies: routes take ``StoreDep``, ``CallerDep``, ... as parameters.

``create_app`` puts one of each on ``app.state``; a dependency here reads it back for the request at hand, so two
apps in one process never share anything and routes are plain module-level functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from pipelines.context import JobContext
from pipelines.registry import APP_TASKS, ENDPOINT_IDS

from ..config import Settings
from ..files.store import FileStore
from ..runtime.metrics import Metrics
from ..runtime.signing import WebhookSigner
from ..runtime.worker import Workers
from ..store.jobs import Job, JobStore
from .auth import Auth, Caller
from .events import Changes


def _state(name: str) -> Callable[[Request], Any]:
    """A dependency returning the app's shared object ``name`` (set on ``app.state`` by ``create_app``)."""

    def shared(request: Request) -> Any:
        return getattr(request.app.state, name)

    shared.__name__ = f"app_state_{name}"
    return shared


def _caller(request: Request) -> Caller:
    """Who sent the request, as the request guard found it (``server/api/guard.py``) before the body was read."""
    return request.state.caller


SettingsDep = Annotated[Settings, Depends(_state("settings"))]


def _base_url(request: Request, settings: SettingsDep) -> str:
    """The base of every URL handed out: ``--public-url``, else the URL the request came in on."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


StoreDep = Annotated[JobStore, Depends(_state("store"))]
PoolDep = Annotated[Workers, Depends(_state("pool"))]
ChangesDep = Annotated[Changes, Depends(_state("changes"))]
AuthDep = Annotated[Auth, Depends(_state("auth"))]
FilesDep = Annotated[FileStore, Depends(_state("files"))]
MetricsDep = Annotated[Metrics, Depends(_state("metrics"))]
JobContextDep = Annotated[JobContext, Depends(_state("job_context"))]
SignerDep = Annotated[WebhookSigner, Depends(_state("signer"))]
CallerDep = Annotated[Caller, Depends(_caller)]
BaseUrlDep = Annotated[str, Depends(_base_url)]


def _job(
    request: Request, owner: str, alias: str, request_id: str, store: StoreDep, auth: AuthDep, caller: CallerDep
) -> Job:
    """The job a request path names, if it exists under that app (and task, when the path names one) and the
    caller's key made it (or is an admin key); 404 otherwise, the same answer for "no such job" and "not yours".
    A plain function: FastAPI runs it off the event loop, as the store read blocks."""
    app, task = f"{owner}/{alias}", request.path_params.get("task")
    if app not in APP_TASKS or (task is not None and task not in APP_TASKS[app]):
        raise HTTPException(
            404, f"unknown endpoint {app}{'/' + task if task else ''}; this server serves " + ", ".join(ENDPOINT_IDS)
        )
    job = store.get(request_id)
    if job is None or job.app != app or (task is not None and job.task != task) or not auth.can_see(caller, job.owner):
        raise HTTPException(404, f"Request {request_id} not found")
    return job


JobDep = Annotated[Job, Depends(_job)]
