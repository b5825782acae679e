"""Synthetic control videos: a walking stick figure in OpenPose colours and a sphere moving over a receding floor.

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
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255),
]


def _skeleton(t: float, width: int, height: int) -> dict[int, tuple[int, int]]:
    """Keypoints of a figure walking left to right; ``t`` is time in seconds."""
    cx = width * (0.3 + 0.4 * (t % 4.0) / 4.0)
    s = height / 10
    swing = math.sin(t * 2 * math.pi)
    base = {
        0: (0, -4.2), 1: (0, -3.4), 2: (-0.6, -3.3), 5: (0.6, -3.3), 8: (-0.35, -1.0), 11: (0.35, -1.0),
        3: (-0.7 + 0.4 * swing, -2.3), 4: (-0.6 + 0.7 * swing, -1.4),
        6: (0.7 - 0.4 * swing, -2.3), 7: (0.6 - 0.7 * swing, -1.4),
        9: (-0.35 + 0.5 * swing, 0.6), 10: (-0.35 + 0.9 * swing, 2.2),
        12: (0.35 - 0.5 * swing, 0.6), 13: (0.35 - 0.9 * swing, 2.2),
    }
    return {k: (int(cx + x * s), int(height * 0.55 + y * s)) for k, (x, y) in base.items()}


def pose_frames(width: int, height: int, num_frames: int, fps: float) -> list[np.ndarray]:
    frames = []
    for i in range(num_frames):
        frame = np.zeros((height, width, 3), np.uint8)
        points = _skeleton(i / fps, width, height)
        for (a, b), colour in zip(LIMBS, COLOURS):
            cv2.line(frame, points[a], points[b], colour, max(2, height // 60))
        for p in points.values():
            cv2.circle(frame, p, max(2, height // 80), (255, 255, 255), -1)
        frames.append(frame)
    return frames


def depth_frames(width: int, height: int, num_frames: int, fps: float) -> list[np.ndarray]:
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    floor = np.repeat(ys * 160.0, width, axis=1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(num_frames):
        t = i / fps
        cx, cy, r = width * (0.5 + 0.3 * math.sin(t * 1.5)), height * 0.5, height * 0.22
        d2 = ((xx - cx) ** 2 + (yy - cy) ** 2) / (r * r)
        sphere = np.where(d2 < 1.0, 200.0 + 55.0 * np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)), 0.0)
        depth = np.maximum(floor, sphere).astype(np.uint8)
        frames.append(np.repeat(depth[..., None], 3, axis=2))
    return frames


def write_sample(kind: str, path: Path, width: int = 416, height: int = 240, num_frames: int = 33, fps: float = 16) -> Path:
    """Write a synthetic ``pose`` or ``depth`` control video to ``path``."""
    make = pose_frames if kind == "pose" else depth_frames
    encode_video(make(width, height, num_frames, fps), path, fps, quality="maximum")
    return path
