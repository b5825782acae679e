"""Which apps and endpoints the server exposes, which model serves each, and which request model each takes.

An *app* is a fal application id (``fal-ai/wan-vace-14b``); an *endpoint* is an app and a task path under it: the
base endpoint (``POST /{app}``, task ``""``), ``pose``, ``depth``, ``inpainting``, ``outpainting`` and ``reframe``.
fal offers the base endpoint on the 14B app only and pose/depth one per app; we serve every endpoint on both apps.
Which app a model serves is its ``endpoint`` in ``pipelines.manifest``; ``APPS`` is the one mapping derived from it,
used by the routes, the checker and ``/ready``, with fal's ``fal-ai/wan-vace-apps`` beside them, whose one endpoint
we serve (``long-reframe``, on the 14B model as fal's "Wan 2.1 VACE Long Reframe"). ``APP_TASKS`` says which
endpoints each app has. ``Task`` is narrower: the control tasks whose videos an annotator
makes (``preprocess``), which the base endpoint's ``task=pose|depth`` selects too.
"""

from __future__ import annotations

from typing import Literal

from .manifest import MODELS
from .schema import INPUT_MODELS, EndpointInput

Task = Literal["pose", "depth"]
TASKS: tuple[Task, ...] = ("pose", "depth")

EndpointTask = Literal["", "pose", "depth", "inpainting", "outpainting", "reframe", "long-reframe"]
"""The path under an app: ``""`` is the base endpoint (``POST /{app}``), whose body's ``task`` says what it does."""
ENDPOINT_TASKS: tuple[EndpointTask, ...] = ("", "pose", "depth", "inpainting", "outpainting", "reframe")
"""The endpoints of each model's app."""
APPS_APP = "fal-ai/wan-vace-apps"
"""fal's app of VACE applications, served beside the models' apps: its long-reframe endpoint only."""

# fal app id -> the model that serves it.
APPS: dict[str, str] = {entry.endpoint: key for key, entry in MODELS.items() if entry.endpoint} | {
    APPS_APP: "wan-vace-14b"
}
# fal app id -> its endpoints (tasks).
APP_TASKS: dict[str, tuple[EndpointTask, ...]] = {
    app: ("long-reframe",) if app == APPS_APP else ENDPOINT_TASKS for app in APPS
}

# The model `vace generate TASK` runs when no --model is given: each task on the fal app that offers it (fal offers
# inpainting, outpainting, reframe and the base endpoint on the 14B app).
DEFAULT_MODEL_FOR_TASK: dict[EndpointTask, str] = {
    "": "wan-vace-14b",
    "pose": "wan-vace-14b",
    "depth": "wan-22-vace-fun-a14b",
    "inpainting": "wan-vace-14b",
    "outpainting": "wan-vace-14b",
    "reframe": "wan-vace-14b",
    "long-reframe": "wan-vace-14b",
}


def endpoint_task(task: str) -> EndpointTask:
    """``task`` (a stored job's, read back as text) as the endpoint task it names; ValueError for none."""
    for known in (*ENDPOINT_TASKS, *APP_TASKS[APPS_APP]):
        if task == known:
            return known
    raise ValueError(f"no endpoint task {task!r}; expected one of {ENDPOINT_TASKS} or long-reframe")


def endpoint_id(app: str, task: str) -> str:
    """fal's id of an endpoint: ``fal-ai/wan-vace-14b/pose``, or the app alone for the base endpoint."""
    return f"{app}/{task}" if task else app


ENDPOINT_IDS: tuple[str, ...] = tuple(endpoint_id(app, task) for app, tasks in APP_TASKS.items() for task in tasks)
"""Every served endpoint, for listings and "no such endpoint" messages."""


def input_model(app: str, task: str) -> type[EndpointInput]:
    """The request model of an endpoint (``KeyError`` for one not served)."""
    model = INPUT_MODELS[endpoint_id(app, task)]
    return model  # type: ignore[return-value]  # every served endpoint's model is an EndpointInput
