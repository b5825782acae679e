"""Synthetic videos: a walking stick figure in OpenPose colours, a sphere moving over a receding floor, and for the
editing endpoints an inpainting mask that follows the sphere and a letterboxed copy of the sphere clip.

They stand in for real inputs wherever no video can be downloaded: the demo, the tests and the benchmarks feed them
to the tiny models (and the GPU benchmark to real-size ones).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from pipelines.encode import encode_video

# OpenPose-18 limbs (pairs of keypoint indices) and their colours, as the pose annotators draw them.
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0)]
COLOURS = [
    (255, 0, 0),
    (255, 85, 0),
    (255, 170, 0),
    (255, 255, 0),
    (170, 255, 0),
    (85, 255, 0),
    (0, 255, 0),
    (0, 255, 85),
    (0, 255, 170),
    (0, 255, 255),
    (0, 170, 255),
    (0, 85, 255),
    (0, 0, 255),
]


def _skeleton(t: float, width: int, height: int) -> dict[int, tuple[int, int]]:
    """Keypoints of a figure walking left to right; ``t`` is time in seconds."""
    cx = width * (0.3 + 0.4 * (t % 4.0) / 4.0)
    s = height / 10
    swing = math.sin(t * 2 * math.pi)
    base = {
        0: (0, -4.2),
        1: (0, -3.4),
        2: (-0.6, -3.3),
        5: (0.6, -3.3),
        8: (-0.35, -1.0),
        11: (0.35, -1.0),
        3: (-0.7 + 0.4 * swing, -2.3),
        4: (-0.6 + 0.7 * swing, -1.4),
        6: (0.7 - 0.4 * swing, -2.3),
        7: (0.6 - 0.7 * swing, -1.4),
        9: (-0.35 + 0.5 * swing, 0.6),
        10: (-0.35 + 0.9 * swing, 2.2),
        12: (0.35 - 0.5 * swing, 0.6),
        13: (0.35 - 0.9 * swing, 2.2),
    }
    return {k: (int(cx + x * s), int(height * 0.55 + y * s)) for k, (x, y) in base.items()}


def pose_frames(width: int, height: int, num_frames: int, fps: float) -> list[np.ndarray]:
    frames = []
    for i in range(num_frames):
        frame = np.zeros((height, width, 3), np.uint8)
        points = _skeleton(i / fps, width, height)
        for (a, b), colour in zip(LIMBS, COLOURS, strict=True):
            cv2.line(frame, points[a], points[b], colour, max(2, height // 60))
        for p in points.values():
            cv2.circle(frame, p, max(2, height // 80), (255, 255, 255), -1)
        frames.append(frame)
    return frames


def _sphere(t: float, width: int, height: int) -> tuple[float, float, float]:
    """Centre and radius of the depth sample's sphere at ``t`` seconds."""
    return width * (0.5 + 0.3 * math.sin(t * 1.5)), height * 0.5, height * 0.22


def depth_frames(width: int, height: int, num_frames: int, fps: float) -> list[np.ndarray]:
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    floor = np.repeat(ys * 160.0, width, axis=1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(num_frames):
        cx, cy, r = _sphere(i / fps, width, height)
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r)
        sphere = np.where(d2 < 1.0, 200.0 + 55.0 * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)), 0.0)
        depth = np.maximum(floor, sphere).astype(np.uint8)
        frames.append(np.repeat(depth[..., None], 3, axis=2))
    return frames


def mask_frames(width: int, height: int, num_frames: int, fps: float) -> list[np.ndarray]:
    """An inpainting mask for the depth sample: white (regenerate) over its sphere and a margin, black elsewhere."""
    frames = []
    for i in range(num_frames):
        cx, cy, r = _sphere(i / fps, width, height)
        frame = np.zeros((height, width, 3), np.uint8)
        cv2.circle(frame, (round(cx), round(cy)), round(r * 1.2), (255, 255, 255), -1)
        frames.append(frame)
    return frames


def letterbox_frames(width: int, height: int, num_frames: int, fps: float) -> list[np.ndarray]:
    """The depth sample squeezed between black bars of an eighth of the height each (a letterboxed clip)."""
    bar = height // 8
    frames = []
    for picture in depth_frames(width, height - 2 * bar, num_frames, fps):
        frame = np.zeros((height, width, 3), np.uint8)
        frame[bar : height - bar] = np.maximum(picture, 40)  # no black in the picture: the bars end where it starts
        frames.append(frame)
    return frames


SAMPLES = {"pose": pose_frames, "depth": depth_frames, "mask": mask_frames, "letterbox": letterbox_frames}


def write_sample(
    kind: str, path: Path, width: int = 416, height: int = 240, num_frames: int = 33, fps: float = 16
) -> Path:
    """Write the synthetic video ``kind`` (a key of ``SAMPLES``) to ``path``."""
    encode_video(SAMPLES[kind](width, height, num_frames, fps), path, fps, quality="maximum")
    return path
