"""How a job talks to its caller: ``JobHooks`` (log lines, step progress, the cancel flag, the control video, and
where its checkpoints and live previews go) and ``Publish`` (where a finished file goes).

A leaf module: the stages that report (``generate``, ``denoise``) and the callers that listen (the CLI, the server's
worker, the GPU bench) all import it, and none of them has to import another to get at these two types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Publish = Callable[[Path, str], str]
"""Turns a finished local file (path, content type) into the URL the output reports."""


def _ignore(*_args: object) -> None:
    return None


@dataclass
class JobHooks:
    """How a job talks to its caller: log lines, progress (``window(i, n)`` as each window of a job longer than one
    pass starts, ``step(j, m)`` after each denoising step of the current window), the cancel flag and, with
    ``preprocess=true``, the control video it made (an MP4 in the job's work directory, and its frame rate), which
    the server keeps for the playground; None: no one keeps it, so the job does not write it."""

    log: Callable[[str], None] = _ignore
    step: Callable[[int, int], None] = _ignore
    window: Callable[[int, int], None] = _ignore
    cancelled: Callable[[], bool] = field(default=lambda: False)
    control: Callable[[Path, float], None] | None = None
    checkpoints: CheckpointSink | None = None
    """Where the denoising loop's checkpoints go and come from (``pipelines.resume``); None: the job keeps none."""
    preview: PreviewSink | None = None
    """Where the live previews go while the job denoises (``pipelines.live_preview``); None: none are made."""


@dataclass(frozen=True)
class CheckpointSink:
    """Where one job's checkpoints go (the server: its file store, the newest recorded in the job store, so that any
    node resumes the job) and how often the loop writes one."""

    every_steps: int
    """A checkpoint after this many steps since the last (0: by time only)."""
    every_s: float
    """A checkpoint after the first step that ends this many seconds after the last one (0: by steps only)."""
    folder: Path
    """Where the loop writes a checkpoint file before handing it to ``keep``."""
    keep: Callable[[Path, int], None]
    """Takes a complete checkpoint file (it may move it) and the step the job would resume at; replaces the job's
    previous checkpoint."""
    latest: Callable[[], Path | None]
    """The job's newest checkpoint as a local file, or None when it has none."""
    resumed: Callable[[int, int], None] = _ignore
    """The job resumed at step k of n (for the metrics)."""


@dataclass(frozen=True)
class PreviewSink:
    """Where one job's live previews go, and how often the loop makes one."""

    every_steps: int
    """A preview after every this many steps (and after the last)."""
    folder: Path
    """Where the loop writes a preview file before handing it to ``publish``."""
    publish: Callable[[Path, int], None]
    """Takes a finished preview file (it may move it) and the step it shows."""
