"""Which apps and tasks the server exposes, and which model serves each.

An *app* is a fal application id (``fal-ai/wan-vace-14b``); a *task* is the control type (``pose`` or ``depth``).
fal offers one task per app; we serve both tasks on both apps. Which app a model serves is its ``endpoint`` in
``pipelines.manifest``; ``APPS`` is the one mapping derived from it, used by the routes, the checker and ``/ready``.
"""

from __future__ import annotations

from typing import Literal

from .manifest import MODELS

Task = Literal["pose", "depth"]
TASKS: tuple[Task, ...] = ("pose", "depth")

# fal app id -> the model that serves it.
APPS: dict[str, str] = {entry.endpoint: key for key, entry in MODELS.items() if entry.endpoint}

# The model `vace generate TASK` runs when no --model is given: each task on the fal app that offers it.
DEFAULT_MODEL_FOR_TASK: dict[Task, str] = {"pose": "wan-vace-14b", "depth": "wan-22-vace-fun-a14b"}
