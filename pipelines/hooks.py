"""How a job talks to its caller: ``JobHooks`` (log lines, step progress, the cancel flag, the control video) and
``Publish`` (where a finished file goes).

A leaf module: the stages that report (``generate``, ``denoise``) and the callers that listen (the CLI, the server's
worker, the GPU bench) all import it, and none of them has to import another to get at these two types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Publish = Callable[[Path, str], str]
"""Turns a finished local file (path, content type) into the URL the output reports."""


def _ignore(*_args: object) -> None:
    return None


@dataclass
class JobHooks:
    """How a job talks to its caller: log lines, step progress, the cancel flag and, with ``preprocess=true``, the
    control video it made (uint8 RGB frames and their frame rate), which the server keeps for the playground."""

    log: Callable[[str], None] = _ignore
    step: Callable[[int, int], None] = _ignore
    cancelled: Callable[[], bool] = field(default=lambda: False)
    control: Callable[[list[np.ndarray], float], None] = _ignore
