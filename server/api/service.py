"""The service routes: liveness, readiness, Prometheus metrics, and the playground page with its one setting.

What is public (no key): ``/health``, ``/ready``'s readiness per endpoint, ``/metrics`` (counts and timings, no URLs,
paths or ids) and the playground. ``/ready`` adds the optional stages' settings (the prompt expander's URL, local
model paths), the devices and the installed LoRAs only for a valid key, or when auth is off, and the fleet's live
workers (host names, the ids of the jobs they run, which may be other keys') only for an admin key, or when auth is
off; ``/loras`` (the installed LoRAs with their sizes) needs a key like every route the guard does not list.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from pipelines.lora_names import installed_loras
from pipelines.registry import APP_TASKS, APPS, endpoint_id

from ..runtime.metrics import CONTENT_TYPE
from .deps import AuthDep, CallerDep, MetricsDep, PoolDep, SettingsDep, SignerDep, StoreDep

STATIC_DIR = Path(__file__).parents[1] / "static"
# The playground loads nothing from other hosts; its requests go to this server only (media may come from
# anywhere the user points it at, like the public URL the server hands out).
PLAYGROUND_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src * data: blob:; media-src * data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


router = APIRouter(tags=["service"])


@router.get("/health", summary="Liveness")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    summary="Per endpoint: can a live worker (here or, in a fleet, anywhere) serve it, is its model "
    "loaded; with a key (or auth off) also the safety checker, prompt expansion, devices and "
    "installed LoRAs; with an admin key (or auth off) the live workers",
)
def ready(pool: PoolDep, store: StoreDep, settings: SettingsDep, auth: AuthDep, caller: CallerDep) -> JSONResponse:
    # Workers of any node that renewed their sign of life within a lease: this node's, or a fleet's.
    workers = store.live_workers(time.time() - settings.lease_s)
    devices = pool.devices()  # this node's own workers, as they are now
    served = {m for w in workers for m in w["models_present"]}
    loaded = {m for d in devices for m in d["loaded_models"]} | {m for w in workers for m in w["models_loaded"]}
    endpoints = {
        app_id: {
            "model": model,
            "tasks": [t for t in APP_TASKS[app_id] if t],
            "endpoints": [endpoint_id(app_id, t) for t in APP_TASKS[app_id]],  # the base endpoint first
            "weights_present": model in served or (pool.runs_jobs and pool.has_weights(model)),
            "loaded": model in loaded,
        }
        for app_id, model in APPS.items()
    }
    any_ready = any(e["weights_present"] for e in endpoints.values())
    body: dict[str, object] = {"ready": any_ready, "endpoints": endpoints}
    # The optional stages never decide readiness: a request that needs a missing one is refused on its own.
    if caller.key_id is not None or not auth.enabled:
        if pool.models is not None:  # this node's own workers (an API node has none)
            body |= {**pool.models.describe_stages(), "devices": devices}
        body |= {"loras": list(installed_loras(settings.weights_dir))}
    if caller.admin:  # auth off makes every caller one
        body |= {"workers": workers}
    return JSONResponse(body, status_code=200 if any_ready else 503)


@router.get(
    "/loras", summary="The LoRAs installed in the weights directory, by the names requests give as a LoRA's path"
)
def loras(settings: SettingsDep) -> dict[str, list[dict[str, object]]]:
    return {
        "loras": [
            {"name": name, "file_size": path.stat().st_size}
            for name, path in installed_loras(settings.weights_dir).items()
        ]
    }


@router.get("/metrics", summary="Prometheus metrics")
def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=CONTENT_TYPE)


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The playground: static HTML + JS that builds its form from /openapi.json and speaks the fal protocol."""
    return FileResponse(STATIC_DIR / "index.html", headers={"content-security-policy": PLAYGROUND_CSP})


@router.get("/.well-known/jwks.json", summary="The public key webhook signatures verify against (JWKS, ED25519)")
def jwks(signer: SignerDep) -> dict[str, Any]:
    return signer.jwks()


@router.get("/playground/config", include_in_schema=False)
def playground_config(auth: AuthDep) -> dict[str, bool]:
    """What the page cannot read from /openapi.json: whether it needs an API key field."""
    return {"auth_required": auth.enabled}
