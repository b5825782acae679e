"""Control-video makers: RGB frames in, pose or depth control frames out, in batches (see ``base.Preprocessor``).

Each task has VACE's annotator as its default (pose: DWPose, depth: MiDaS DPT-Hybrid) and one alternative; which
annotators serve which task, and their names, are ``pipelines.manifest.TASK_ANNOTATORS``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.manifest import DEFAULT_ANNOTATORS, TASK_ANNOTATORS

from .base import Preprocessor
from .depth import DepthAnythingPreprocessor, MidasPreprocessor
from .pose import DWPosePreprocessor, OpenPosePreprocessor

_CLASSES: dict[str, type[Preprocessor]] = {
    cls.annotator: cls
    for cls in (DWPosePreprocessor, OpenPosePreprocessor, MidasPreprocessor, DepthAnythingPreprocessor)
}
ANNOTATORS: dict[str, dict[str, type[Preprocessor]]] = {
    task: {name: _CLASSES[name] for name in names} for task, names in TASK_ANNOTATORS.items()
}

__all__ = ["ANNOTATORS", "DEFAULT_ANNOTATORS", "Preprocessor", "make_preprocessor"]


def make_preprocessor(
    task: str,
    annotator: str | None,
    weights_dir: Path,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
) -> Preprocessor:
    """The preprocessor of ``task`` ("pose" or "depth") using ``annotator``, or VACE's default for the task when
    None, loaded from ``weights_dir`` onto ``device``; ``batch_size`` frames go through the networks together
    (each annotator has a default)."""
    if task not in ANNOTATORS:
        raise ValueError(f"unknown preprocessing task {task!r}; expected one of {sorted(ANNOTATORS)}")
    name = annotator or DEFAULT_ANNOTATORS[task]
    if name not in ANNOTATORS[task]:
        raise ValueError(f"unknown {task} annotator {name!r}; expected one of {sorted(ANNOTATORS[task])}")
    return ANNOTATORS[task][name].from_weights(Path(weights_dir), device, batch_size)
