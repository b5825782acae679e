"""The frame format every stage passes along: uint8 HxWx3 RGB NumPy arrays, one size per video.

The decoder yields it; the annotators, the interpolators and the encoder take it. A float, BGRA or grey frame would
not fail in those stages but be silently misread (mis-annotated, mis-blended, encoded as garbage), so each checks
its frames with ``check_frame`` first.

It lives in ``preprocessors``, the lowest of the packages that handle frames: ``pipelines`` (decoder, interpolators,
encoder) builds on ``preprocessors`` and takes the definition from here, so both check against one.
"""

from __future__ import annotations

import numpy as np


def check_frame(frame: np.ndarray, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) of a uint8 HxWx3 frame (of ``size`` when given); ValueError for anything else."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"frames must be uint8 HxWx3 RGB arrays, got {got}")
    if size is not None and frame.shape[:2] != size:
        raise ValueError(
            f"all frames must be uint8 HxWx3 of one size, {size[1]}x{size[0]}; got {frame.shape[1]}x{frame.shape[0]}"
        )
    return frame.shape[0], frame.shape[1]
