"""The server's shared objects as FastAPI dependencies: routes take ``StoreDep``, ``CallerDep``, ... as parameters.

``create_app`` puts one of each on ``app.state``; a dependency here reads it back for the request at hand, so two
apps in one process never share anything and routes are plain module-level functions.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from pipelines.context import JobContext
from pipelines.registry import APPS

from .auth import Auth, Caller
from .config import Settings
from .events import Changes
from .files import FileStore
from .jobs import Job, JobStore
from .webhooks import Webhooks
from .worker import WorkerPool


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _pool(request: Request) -> WorkerPool:
    return request.app.state.pool


def _changes(request: Request) -> Changes:
    return request.app.state.changes


def _auth(request: Request) -> Auth:
    return request.app.state.auth


def _files(request: Request) -> FileStore:
    return request.app.state.files


def _webhooks(request: Request) -> Webhooks:
    return request.app.state.webhooks


def _job_context(request: Request) -> JobContext:
    return request.app.state.job_context


def _caller(request: Request) -> Caller:
    """Who sent the request, as the request guard found it (``server/guard.py``) before the body was read."""
    return request.state.caller


def _base_url(request: Request, settings: Annotated[Settings, Depends(_settings)]) -> str:
    """The base of every URL handed out: ``--public-url``, else the URL the request came in on."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
PoolDep = Annotated[WorkerPool, Depends(_pool)]
ChangesDep = Annotated[Changes, Depends(_changes)]
AuthDep = Annotated[Auth, Depends(_auth)]
FilesDep = Annotated[FileStore, Depends(_files)]
WebhooksDep = Annotated[Webhooks, Depends(_webhooks)]
JobContextDep = Annotated[JobContext, Depends(_job_context)]
CallerDep = Annotated[Caller, Depends(_caller)]
BaseUrlDep = Annotated[str, Depends(_base_url)]


def _job(owner: str, alias: str, request_id: str, store: StoreDep, auth: AuthDep, caller: CallerDep) -> Job:
    """The job a request path names, if it exists under that app and the caller's key made it (or is an admin
    key); 404 otherwise, the same answer for "no such job" and "not yours"."""
    app = f"{owner}/{alias}"
    if app not in APPS:
        raise HTTPException(404, f"unknown app {app!r}; this server serves {', '.join(APPS)}")
    job = store.get(request_id)
    if job is None or job.app != app or not auth.can_see(caller, job.owner):
        raise HTTPException(404, f"Request {request_id} not found")
    return job


JobDep = Annotated[Job, Depends(_job)]
