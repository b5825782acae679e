"""The FastAPI app of ``vace serve``: builds the store, files, workers, webhooks, retention, auth and metrics, puts
them on ``app.state`` (routes reach them through ``server/api/deps.py``), includes the fal routes (``routes.py``), the
upload routes (``uploads.py``), the service routes and playground (``service.py``) and the playground's
conditioning preview (``preview.py``), guards every request (``guard.py``) and shapes errors like fal's; ``serve()``
runs it in uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.context import JobContext
from pipelines.errors import InputError
from pipelines.registry import APP_TASKS, ENDPOINT_IDS

from .api import preview, routes, service, uploads
from .api.auth import Auth
from .api.connections import raise_open_file_limit, uvicorn_config
from .api.events import Changes
from .api.guard import Body, HostPolicy, RequestGuard
from .api.node_secrets import load_secrets
from .api.request_id import RequestIdHeader
from .api.tls import certificate_names, client_hostport, ensure_certificate, fal_client_env
from .backends import job_context, open_files, open_store, resolve_devices
from .config import Settings
from .fal.failures import RequestFailed, failure_of, failure_response
from .files.store import FileStore, private_dir
from .runtime.metrics import Metrics
from .runtime.retention import Retention
from .runtime.signing import WebhookSigner
from .runtime.upkeep import Upkeep
from .runtime.webhooks import Webhooks
from .runtime.worker import Intermediates, WorkerPool, Workers, clear_work_dir
from .store.jobs import Change, JobStore

if TYPE_CHECKING:  # see Node._workers
    from pipelines.loading import ModelManager
    from pipelines.worker_group import WorkerGroup

log = logging.getLogger(__name__)

PARTS_BODY_BYTES = 1024**2  # a multipart upload's ``complete`` body: 10,000 parts with ETags fit well under it


@dataclass
class Node:
    """What one process of the server holds, HTTP aside: the store, files, workers, webhooks, queue upkeep and
    retention. An API node (``--no-workers``) and a worker node (``vace worker``) hold the same things and start
    the same services, workers aside, but for the webhook signing key: only a node that answers HTTP has it
    (``server/api/node_secrets.py``), so only such a node delivers webhooks.

    The node is the sink of the store's announcements (``server/store/jobs.py``), wired once at start: a job that
    became claimable wakes this node's idle workers, any change wakes the status streams and sync requests waiting
    on the job, and an ended job's webhook is scheduled.
    """

    config: Settings
    store: JobStore
    files: FileStore
    ctx: JobContext
    changes: Changes
    metrics: Metrics
    webhooks: Webhooks | None
    """Delivers the webhooks of jobs that end; None on a worker node, whose jobs' webhooks the API nodes deliver
    (the store wakes them when one falls due)."""
    pool: Workers
    upkeep: Upkeep
    retention: Retention

    @classmethod
    def build(cls, config: Settings, signer: WebhookSigner | None) -> Node:
        """``signer``: the webhook signing key of a node that answers HTTP; None for a worker node."""
        private_dir(config.data_dir)
        store = open_store(config)
        files = open_files(config)
        ctx = job_context(config, files)
        changes = Changes()
        metrics = Metrics(store)
        managers, group = cls._workers(config, metrics) if not config.no_workers else ([], None)
        webhooks = (
            None
            if signer is None
            else Webhooks(
                store,
                signer,
                ctx,
                attempts=config.webhook_attempts,
                backoff_s=config.webhook_backoff_s,
                timeout_s=config.webhook_timeout_s,
                lease_s=config.lease_s,
                concurrency=config.webhook_concurrency,
                on_outcome=lambda outcome: metrics.webhook_deliveries.labels(outcome).inc(),
            )
        )
        if config.fetch_allow and not config.webhook_allow:
            log.info("--fetch-allow permits media sources only; non-public webhook targets need --webhook-allow")
        pool: Workers
        if config.no_workers or config.worker_threads:
            pool = WorkerPool(
                store=store,
                files=files,
                metrics=metrics,
                managers=managers,
                work_dir=config.work_dir,
                ctx=ctx,
                lease_s=config.lease_s,
                max_attempts=config.max_attempts,
                runs_jobs=not config.no_workers,
                models=config.models,
                switch_after_s=config.switch_after_s,
                group=group,
                intermediates=Intermediates.of(config),
            )
        else:  # the managers stay here to check requests; each worker process loads its own
            from .runtime.worker_process import WorkerProcesses  # the model stack: only a node that runs workers

            pool = WorkerProcesses(config, store, metrics, managers)
        retention = Retention(
            store,
            files,
            max_age_s=config.retention_s,
            interval_s=config.retention_sweep_s,
            deleted=metrics.retention_deleted,
        )
        upkeep = Upkeep(store, max_attempts=config.max_attempts)
        return cls(config, store, files, ctx, changes, metrics, webhooks, pool, upkeep, retention)

    @staticmethod
    def _workers(config: Settings, metrics: Metrics) -> tuple[list[ModelManager], WorkerGroup | None]:
        """The model managers of this node's workers (one per device) and their job group, if any. Only a node that
        runs workers imports the model stack: an API node validates and queues without diffusers or the annotators."""
        from pipelines.loading import ModelManager
        from pipelines.parallel import ParallelSpec
        from pipelines.worker_group import WorkerGroup

        managers = [
            ModelManager(config.weights_dir, device=d, max_models=config.max_models, runtime=config.runtime)
            for d in resolve_devices(config.devices)
        ]
        if not config.parallel:
            return managers, None
        # One worker, rank 0 on the first device; until its group starts, a plain manager there.
        group = WorkerGroup(
            ParallelSpec.parse(config.parallel),
            config.devices,
            config.weights_dir,
            config.runtime,
            config.max_models,
            on_restart=lambda _cause: metrics.group_restart(),
        )
        metrics.show_group(group.describe())
        return managers[:1], group

    async def start(self) -> None:
        """Start on the running event loop: take the store's announcements, recover (a store of its own),
        webhooks, queue upkeep, the workers unless this is an API node, retention."""
        store = self.store
        store.announce_to(self)
        if not self.config.shared_store:  # this node owns the store: whatever was running belongs to the last run
            for job_id in await run_in_threadpool(store.recover, self.config.max_attempts):
                log.warning("job %s was running when the server stopped: %s", job_id, store.logs(job_id)[-1].message)
        if self.webhooks is not None:
            await self.webhooks.start()
        self.upkeep.start()
        if self.pool.runs_jobs:
            clear_work_dir(self.config.work_dir)
            self.pool.start()
        self.retention.start()

    async def stop(self) -> None:
        await run_in_threadpool(self.retention.stop)
        await run_in_threadpool(self.pool.stop)
        await run_in_threadpool(self.upkeep.stop)
        if self.webhooks is not None:
            await self.webhooks.stop()
        self.store.close()

    def announce(self, job_id: str, change: Change) -> None:
        """The store committed a transition of ``job_id`` (called on any thread)."""
        if change == "queued":
            self.pool.wake()
        self.changes.notify(job_id)
        if change == "ended" and self.webhooks is not None:  # a worker node's: the API nodes deliver it
            self.webhooks.schedule(job_id)

    def missed(self) -> None:
        """Announcements were lost (a listener reconnected): idle workers look at the queue again; status streams
        and sync requests re-read on their own within a poll, and webhook deliveries are found by their sweep."""
        self.pool.wake()


def create_app(config: Settings) -> FastAPI:
    """The app; opening it takes the data directory (a SQLite store: one server per directory), starting it starts
    the node (and its workers, unless ``--no-workers``)."""
    secrets = load_secrets(config.secrets_dir or config.data_dir, shared_store=config.shared_store)
    node = Node.build(config, secrets.signer)
    auth = Auth(config.api_keys, secrets.secret, config.admin_keys)
    if renamed := node.store.rename_owners(auth.renamed_owners):
        log.warning(
            "renamed the owner of %d jobs from an earlier release's unkeyed hash of the key to its keyed id", renamed
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="vace-server",
        version="0.1.0",
        summary="Self-hosted, fal-compatible Wan VACE: pose, depth, inpainting, outpainting, reframe and text/image "
        "to video",
        description="fal's HTTP protocol for "
        + ", ".join(
            ("`{a}`, " if "" in tasks else "") + f"`{a}/{{{'|'.join(t for t in tasks if t)}}}`"
            for a, tasks in APP_TASKS.items()
        )
        + ". Authenticate with `Authorization: Key <key>` when the server has API keys.",
        lifespan=lifespan,
    )
    app.state.settings = config
    app.state.store = node.store
    app.state.files = node.files
    app.state.job_context = node.ctx
    app.state.changes = node.changes
    app.state.metrics = node.metrics
    app.state.pool = node.pool
    app.state.auth = auth
    app.state.signer = secrets.signer
    app.include_router(routes.router)
    app.include_router(uploads.router)
    app.include_router(service.router)
    app.include_router(preview.router)
    app.mount("/static", StaticFiles(directory=service.STATIC_DIR), name="static")
    app.add_middleware(RequestIdHeader)
    files = node.files
    app.add_middleware(
        RequestGuard,
        auth=auth,
        hosts=HostPolicy(config.accepted_hosts()),
        upload_is_open=lambda upload_id: (u := files.pending(upload_id)) is not None and auth.is_active(u.owner),
        limits={Body.JSON: config.max_body_bytes, Body.UPLOAD: config.max_upload_bytes, Body.PARTS: PARTS_BODY_BYTES},
    )
    if config.cors_origins:  # outermost, so a preflight is answered before the guard asks for a key
        if not config.auth_enabled:
            log.warning(
                "--cors-origins %s without an API key: pages from %s can submit, read and cancel every "
                "job of this server and upload to it; set --api-keys, or drop --cors-origins",
                ",".join(config.cors_origins),
                "any origin" if "*" in config.cors_origins else "there",
            )
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["x-fal-request-id", "x-fal-error-type"],
            allow_credentials=False,
        )

    @app.exception_handler(RequestValidationError)
    @app.exception_handler(InputError)
    @app.exception_handler(RequestFailed)
    async def refused(_request: Request, exc: Exception) -> JSONResponse:
        return failure_response(failure_of(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            endpoints = ", ".join(ENDPOINT_IDS)
            detail = f"No route {request.method} {request.url.path}; endpoints: {endpoints}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    return app


def serve(config: Settings, *, log_level: str = "info", access_log: bool = False) -> None:
    """Run the server in the foreground until interrupted; print how to point the fal clients at it."""
    ssl: dict[str, str] = {}
    hostport = client_hostport(config.host, config.port)
    if config.tls:
        public_host = urlsplit(config.public_url).hostname if config.public_url else None
        cert, key = ensure_certificate(config.tls_dir, certificate_names(config.host, public_host))
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        how = "fal-client environment:\n" + "\n".join(
            f"  export {line}" for line in fal_client_env(hostport, cert, config.auth_enabled)
        )
    else:
        how = f'fal-client: from server.falclient import use_server; use_server("http://{hostport}")'
    app = create_app(config)
    raise_open_file_limit()
    scheme = "https" if config.tls else "http"
    auth = "on" if config.auth_enabled else "off"
    print(f"vace server on {scheme}://{hostport} (data: {config.data_dir}; auth {auth})\n{how}", flush=True)
    uvicorn.Server(
        uvicorn_config(app, config, log_level=log_level, access_log=access_log, timeout_graceful_shutdown=5, **ssl)
    ).run()
