"""The one interface every annotator implements, and the helpers the pose and depth annotators share.

A job's input can be 241 frames of 720p: as float32 that is ~2.7 GB, so frames are never collected. ``process``
pulls ``batch_size`` uint8 frames from the decoder, runs them through the networks together and yields their
control frames before pulling the next batch. The per-frame CPU work around the networks (resizing, cropping,
drawing) is OpenCV and NumPy, which release the GIL, so it runs on a small thread pool, frame by frame.
"""

from __future__ import annotations

import itertools
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from .frames import check_frame

R = TypeVar("R")


class Preprocessor(ABC):
    """Turns RGB video frames into the control frames of one task (pose or depth), frame for frame.

    ``process`` takes uint8 HxWx3 RGB frames and yields uint8 HxWx3 RGB control frames of the same size, one per
    input frame, in order. Output does not depend on ``batch_size``: batching only changes how many frames share
    one network call.
    """

    task: str
    default_batch_size: int

    def __init__(self, batch_size: int | None = None, workers: int | None = None) -> None:
        """``workers`` defaults to half the CPUs (at most 8): OpenCV already spreads each resize over all cores,
        so frame-level threads pay off only where cores are to spare."""
        self.batch_size = self.default_batch_size if batch_size is None else batch_size
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.workers = workers or max(1, min(8, (os.cpu_count() or 2) // 2))
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=type(self).__name__)

    def process(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Yield the control frame of every frame, reading at most ``batch_size`` frames ahead."""
        stream = iter(frames)
        while batch := list(itertools.islice(stream, self.batch_size)):
            for frame in batch:
                check_frame(frame)
            yield from self.process_batch(batch)

    @abstractmethod
    def process_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Control frames of one batch of already checked frames."""

    def map(self, fn: Callable[..., R], *iterables: Iterable[Any]) -> list[R]:
        """``fn`` over the items of ``iterables`` (zipped) on the worker threads, results in order."""
        return list(self._pool.map(fn, *iterables))


def require_weights(path: Path) -> Path:
    """``path`` if it is a file; otherwise say which annotator file is missing and how to get it."""
    if not path.is_file():
        raise FileNotFoundError(
            f"annotator weights missing: {path} (`vace weights download` fetches them, `vace weights tiny` builds "
            "random ones)"
        )
    return path


def vace_resize(image: np.ndarray, short_side: int) -> np.ndarray:
    """Scale so the short side is ``short_side`` and round both sides to multiples of 64, as VACE's annotators do.

    Lanczos when enlarging, area when shrinking (or when only the rounding changes the size). The rounding is
    NumPy's (half to even), like VACE's, so sizes match VACE's exactly.
    """
    height, width = image.shape[:2]
    k = float(short_side) / min(height, width)
    new_h = int(np.round(height * k / 64.0)) * 64
    new_w = int(np.round(width * k / 64.0)) * 64
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)
