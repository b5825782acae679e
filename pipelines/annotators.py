"""The annotators by name: which ``preprocessors`` class serves each name of the manifest's ``TASK_ANNOTATORS``, and
which files of the weights directory it loads.

``preprocessors`` knows networks, not our weights directory: each class loads from the files it is handed. The names
requests use, the folders and the file names are the manifest's, so the two meet here, on the side of the arrow that
may import both (``pipelines`` imports ``preprocessors``, never the reverse).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from preprocessors.base import Preprocessor
from preprocessors.depth import DepthAnythingPreprocessor, MidasPreprocessor
from preprocessors.pose import DWPosePreprocessor, OpenPosePreprocessor

from .manifest import (
    DEFAULT_ANNOTATORS,
    DEPTH_ANYTHING,
    DWPOSE,
    DWPOSE_DETECTOR_FILE,
    DWPOSE_ESTIMATOR_FILE,
    MIDAS,
    MIDAS_FILE,
    OPENPOSE,
    OPENPOSE_FILE,
    TASK_ANNOTATORS,
)

Device = str | torch.device
Loader = Callable[[Path, Device, int | None], Preprocessor]


def _dwpose(weights_dir: Path, device: Device, batch_size: int | None) -> Preprocessor:
    return DWPosePreprocessor.load(
        DWPOSE.path(weights_dir, DWPOSE_DETECTOR_FILE),
        DWPOSE.path(weights_dir, DWPOSE_ESTIMATOR_FILE),
        device,
        batch_size,
    )


def _openpose(weights_dir: Path, device: Device, batch_size: int | None) -> Preprocessor:
    return OpenPosePreprocessor.load(OPENPOSE.path(weights_dir, OPENPOSE_FILE), device, batch_size)


def _midas(weights_dir: Path, device: Device, batch_size: int | None) -> Preprocessor:
    return MidasPreprocessor.load(MIDAS.path(weights_dir, MIDAS_FILE), device, batch_size)


def _depth_anything(weights_dir: Path, device: Device, batch_size: int | None) -> Preprocessor:
    return DepthAnythingPreprocessor.load(DEPTH_ANYTHING.path(weights_dir), device, batch_size)


LOADERS: dict[str, Loader] = {
    DWPOSE.key: _dwpose,
    OPENPOSE.key: _openpose,
    MIDAS.key: _midas,
    DEPTH_ANYTHING.key: _depth_anything,
}
"""Annotator name -> how it loads from a weights directory; one entry per name of ``TASK_ANNOTATORS``."""


def make_preprocessor(
    task: str,
    annotator: str | None,
    weights_dir: Path,
    device: Device = "cpu",
    batch_size: int | None = None,
) -> Preprocessor:
    """The preprocessor of ``task`` ("pose" or "depth") using ``annotator``, or VACE's default for the task when
    None, loaded from ``weights_dir`` onto ``device``; ``batch_size`` frames go through the networks together
    (each annotator has a default)."""
    if task not in TASK_ANNOTATORS:
        raise ValueError(f"unknown preprocessing task {task!r}; expected one of {sorted(TASK_ANNOTATORS)}")
    name = annotator or DEFAULT_ANNOTATORS[task]
    if name not in TASK_ANNOTATORS[task]:
        raise ValueError(f"unknown {task} annotator {name!r}; expected one of {sorted(TASK_ANNOTATORS[task])}")
    return LOADERS[name](Path(weights_dir), device, batch_size)
