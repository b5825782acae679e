"""The FastAPI app of ``vace serve``: wiring of store, files, workers, webhooks, retention, auth and metrics, the
service routes (``/health``, ``/ready``, ``/metrics``), the playground (``/``, ``/static/...``, ``server/static/``)
and fal-shaped error bodies; ``serve()`` runs it in uvicorn.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.errors import InputError
from pipelines.fetch import register_local_resolver, set_fetch_allowlist
from pipelines.limits import set_limits
from pipelines.loading import ModelManager
from pipelines.registry import APPS, TASKS

from .auth import Auth, load_secret
from .config import ServerConfig
from .events import Changes
from .files import FileStore
from .jobs import SqliteJobStore
from .metrics import CONTENT_TYPE, Metrics
from .protocol import validation_detail
from .retention import Retention
from .routes import fal_router
from .tls import certificate_names, client_hostport, ensure_certificate, fal_client_env
from .uploads import storage_router
from .webhooks import Webhooks
from .worker import WorkerPool

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# The playground loads nothing from other hosts; its requests go to this server only (media may come from
# anywhere the user points it at, like the public URL the server hands out).
PLAYGROUND_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                  "img-src * data: blob:; media-src * data: blob:; object-src 'none'; base-uri 'none'; "
                  "frame-ancestors 'none'")


def resolve_devices(names: tuple[str, ...]) -> list[torch.device]:
    """The devices to run workers on: as configured, else every CUDA device, else the CPU."""
    if names:
        return [torch.device(n) for n in names]
    if torch.cuda.is_available():
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device("cpu")]


def create_app(config: ServerConfig) -> FastAPI:
    """The app; opening it takes the data directory (one server per directory), starting it starts the workers."""
    store = SqliteJobStore(config.jobs_db)
    files = FileStore(config.files_dir, config.uploads_dir, config.max_upload_bytes)
    register_local_resolver(files.local_path)
    set_limits(config.limits)
    set_fetch_allowlist(config.fetch_allow)
    changes = Changes()
    devices = resolve_devices(config.devices)
    metrics = Metrics(store, devices)
    webhooks = Webhooks(store, attempts=config.webhook_attempts, backoff_s=config.webhook_backoff_s,
                        timeout_s=config.webhook_timeout_s)
    managers = [
        ModelManager(config.weights_dir, device=d, max_models=config.max_models, runtime=config.runtime)
        for d in devices
    ]
    pool = WorkerPool(store=store, files=files, changes=changes, metrics=metrics, managers=managers,
                      work_dir=config.work_dir, on_finished=webhooks.schedule)
    auth = Auth(config.api_keys, load_secret(config.data_dir / "secret"))
    retention = Retention(store, files, max_age_s=config.retention_s, interval_s=config.retention_sweep_s,
                          deleted=metrics.retention_deleted)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        for job_id in store.recover(config.max_attempts):
            log.warning("job %s was running when the server stopped: %s", job_id, store.logs(job_id)[-1].message)
        await webhooks.start()
        pool.start()
        retention.start()
        try:
            yield
        finally:
            await run_in_threadpool(retention.stop)
            await run_in_threadpool(pool.stop)
            await webhooks.stop()
            store.close()

    app = FastAPI(
        title="vace-server",
        version="0.1.0",
        summary="Self-hosted, fal-compatible Wan VACE pose and depth video-to-video",
        description="fal's HTTP protocol for " + ", ".join(f"`{a}/{{{'|'.join(TASKS)}}}`" for a in APPS)
        + ". Authenticate with `Authorization: Key <key>` when the server has API keys.",
        lifespan=lifespan,
    )
    app.include_router(fal_router(store=store, pool=pool, changes=changes, auth=auth, public_url=config.public_url,
                                  on_finished=webhooks.schedule))
    app.include_router(storage_router(files=files, auth=auth, public_url=config.public_url))

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        """Refuse oversized request bodies with a fal-shaped 413 before reading them (storage uploads excepted:
        they stream to disk under their own limit)."""
        path = request.url.path
        if not path.startswith(("/storage/", "/files/")) and request.method in ("POST", "PUT", "PATCH"):
            declared = request.headers.get("content-length", "")
            too_big = declared.isdigit() and int(declared) > config.max_body_bytes
            if not too_big and not declared.isdigit():  # chunked: read at most the limit, then stop
                chunks, size = [], 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > config.max_body_bytes:
                        too_big = True
                        break
                    chunks.append(chunk)
                else:
                    request._body = b"".join(chunks)  # replayed to the route by Starlette's middleware
            if too_big:
                return JSONResponse({"detail": [{"loc": ["body"], "msg": f"request body is over the "
                                                 f"{config.max_body_bytes}-byte limit", "type": "request_too_large"}]},
                                    status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail()}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            endpoints = ", ".join(f"{a}/{t}" for a in APPS for t in TASKS)
            detail = f"No route {request.method} {request.url.path}; endpoints: {endpoints}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/health", tags=["service"], summary="Liveness")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["service"],
             summary="Per endpoint: are its weights present, is its model loaded; the safety checker and prompt "
                     "expansion: configured, weights present")
    def ready() -> JSONResponse:
        loaded = pool.loaded_models()
        endpoints = {
            app_id: {"model": model, "tasks": list(TASKS), "weights_present": pool.has_weights(model),
                     "loaded": model in loaded}
            for app_id, model in APPS.items()
        }
        any_ready = any(e["weights_present"] for e in endpoints.values())
        # The optional stages never decide readiness: a request that needs a missing one is refused on its own.
        body = {"ready": any_ready, "endpoints": endpoints, **managers[0].describe_stages(),
                "devices": [m.describe() for m in managers]}
        return JSONResponse(body, status_code=200 if any_ready else 503)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # The playground: static HTML + JS that builds its form from /openapi.json and speaks the fal protocol.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"content-security-policy": PLAYGROUND_CSP})

    @app.get("/playground/config", include_in_schema=False)
    def playground_config() -> dict[str, bool]:
        """What the page cannot read from /openapi.json: whether it needs an API key field."""
        return {"auth_required": auth.enabled}

    return app


def serve(config: ServerConfig, *, log_level: str = "info", access_log: bool = False) -> None:
    """Run the server in the foreground until interrupted; print how to point the fal clients at it."""
    ssl: dict[str, str] = {}
    hostport = client_hostport(config.host, config.port)
    if config.tls:
        public_host = urlsplit(config.public_url).hostname if config.public_url else None
        cert, key = ensure_certificate(config.tls_dir, certificate_names(config.host, public_host))
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        how = "fal-client environment:\n" + "\n".join(
            f"  export {line}" for line in fal_client_env(hostport, cert, bool(config.api_keys)))
    else:
        how = f'fal-client: from server.falclient import use_server; use_server("http://{hostport}")'
    app = create_app(config)
    scheme = "https" if config.tls else "http"
    print(f"vace server on {scheme}://{hostport} (data: {config.data_dir}; auth {'on' if config.api_keys else 'off'})"
          f"\n{how}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level, access_log=access_log,
                timeout_graceful_shutdown=5, **ssl)  # type: ignore[arg-type]
