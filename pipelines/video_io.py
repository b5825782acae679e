"""Video decoding with imageio-ffmpeg's bundled ffmpeg, one uint8 frame at a time.

Inputs can be long (minutes of 1080p), while a job needs at most a few hundred frames, so frames are streamed
from one ffmpeg process and only the requested ones are kept; nothing here holds a whole video or float frames.
Anything ffmpeg cannot read becomes ``InputError(field, ..., "video_decode_error")`` instead of a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from .errors import InputError

DECODE_ERROR = "video_decode_error"

# Same stream as count_frames_and_secs (first video stream), and every decoded frame exactly once, so a probe's
# num_frames is the number of frames iter_frames yields even for variable-frame-rate files.
_OUTPUT_PARAMS = ["-map", "0:v:0", "-fps_mode", "passthrough"]


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float


def probe_video(path: Path, field: str = "video_url") -> VideoInfo:
    """Size, frame rate and exact frame count; the count decodes the stream once (no RGB conversion)."""
    meta, frames = _start_decoder(path, field)
    frames.close()
    try:
        num_frames, secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    except RuntimeError:
        num_frames, secs = sum(1 for _ in iter_frames(path, field)), meta.get("duration") or 0.0
    if not num_frames:
        raise InputError(field, "the video contains no frames", DECODE_ERROR)
    fps = float(meta.get("fps") or 0.0) or (num_frames / secs if secs else 0.0)
    if fps <= 0:
        raise InputError(field, "the video's frame rate cannot be determined", DECODE_ERROR)
    width, height = meta["size"]
    return VideoInfo(width=width, height=height, fps=fps, num_frames=num_frames, duration=num_frames / fps)


def iter_frames(path: Path, field: str = "video_url") -> Iterator[np.ndarray]:
    """Yield every frame as a read-only uint8 HxWx3 RGB array (a view on ffmpeg's bytes: copy before editing).

    Closing the generator early stops ffmpeg.
    """
    meta, frames = _start_decoder(path, field)
    width, height = meta["size"]
    with closing(frames):
        while True:
            try:
                raw = next(frames)
            except StopIteration:
                return
            except (OSError, RuntimeError) as exc:
                raise _decode_error(field, path, exc) from None
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def read_frames(path: Path, indices: Sequence[int], field: str = "video_url") -> list[np.ndarray]:
    """The frames at ``indices`` (non-decreasing, repeats allowed), decoding the stream once.

    Indices past the end get the last frame, so a plan made from a slightly optimistic frame count still works.
    Repeated indices share one (read-only) array.
    """
    if not indices:
        return []
    if indices[0] < 0 or any(b < a for a, b in zip(indices, indices[1:])):
        raise ValueError("indices must be non-negative and non-decreasing")
    picked: list[np.ndarray] = []
    last: np.ndarray | None = None
    with closing(iter_frames(path, field)) as frames:
        for i, frame in enumerate(frames):
            last = frame
            while len(picked) < len(indices) and indices[len(picked)] == i:
                picked.append(frame)
            if len(picked) == len(indices):
                break
    if last is None:
        raise InputError(field, "the video contains no frames", DECODE_ERROR)
    picked.extend([last] * (len(indices) - len(picked)))
    return picked


def _start_decoder(path: Path, field: str) -> tuple[dict[str, Any], Generator[bytes, None, None]]:
    """Start ffmpeg and read its header; the caller owns (and must close) the returned frame generator."""
    if not path.is_file():
        raise InputError(field, "video file not found", DECODE_ERROR)
    if path.stat().st_size == 0:
        raise InputError(field, "the video file is empty", DECODE_ERROR)
    frames = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24", output_params=_OUTPUT_PARAMS)
    try:
        meta = next(frames)
    except (OSError, RuntimeError, ValueError, IndexError) as exc:  # the last two: a header with no video stream
        frames.close()
        raise _decode_error(field, path, exc) from None
    return meta, frames


def _decode_error(field: str, path: Path, exc: Exception) -> InputError:
    """ffmpeg's last log line is the useful one ("Invalid data found when processing input"); drop the rest."""
    if "matches no streams" in str(exc):  # our -map 0:v:0 on a file without video, e.g. audio only
        return InputError(field, "not a decodable video: the file has no video stream", DECODE_ERROR)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1]) if lines else type(exc).__name__
    reason = reason.replace(str(path), path.name)[:200]
    return InputError(field, f"not a decodable video: {reason}", DECODE_ERROR)
