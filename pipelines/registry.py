"""Which apps and tasks the server exposes, and which model serves each.

An *app* is a fal application id (``fal-ai/wan-vace-14b``); a *task* is the control type (``pose`` or ``depth``).
fal offers one task per app; we serve both tasks on both apps. Models, their folders and the app each serves are
data in ``weights.manifest``, so the loader, the downloader and the checker agree on them.
"""

from __future__ import annotations

from typing import Literal

from weights.manifest import MODELS, ModelEntry

Task = Literal["pose", "depth"]
TASKS: tuple[Task, ...] = ("pose", "depth")

# fal app id -> the model that serves it by default.
APPS: dict[str, str] = {entry.endpoint: key for key, entry in MODELS.items() if entry.endpoint}


def model_for_app(app: str) -> ModelEntry:
    """The model serving ``app``; raises KeyError for an unknown app."""
    return MODELS[APPS[app]]
