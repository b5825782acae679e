"""The temporal plan: how many frames to generate, at what frame rate, and which input frame drives each.

The input video is resampled in time to the output frame rate at real speed: output frame ``i`` shows the input
at ``i / fps_out`` seconds. ``match_input_frames_per_second`` takes the input's frame rate as the output's, and
``match_input_num_frames`` makes the output cover the whole input at that rate instead of using ``num_frames``.
The count is then clamped to 17..241 and rounded down to ``4k+1`` (the Wan VAE packs 4 frames per latent after the
first). When the input is shorter than the output, its last frame is held; the plan says how many frames that was
so it can be logged.
"""

from __future__ import annotations

from dataclasses import dataclass

from .video_io import VideoInfo

MIN_FRAMES = 17
MAX_FRAMES = 241


@dataclass(frozen=True)
class FramePlan:
    """What to generate: ``num_frames`` frames at ``fps``, driven by ``source_indices`` of the input."""

    num_frames: int
    fps: float
    source_indices: list[int]
    held_frames: int


def round_frames(n: int) -> int:
    """Clamp to the model's range and round down to 4k+1."""
    n = min(max(n, MIN_FRAMES), MAX_FRAMES)
    return (n - 1) // 4 * 4 + 1


def plan_frames(
    video: VideoInfo,
    *,
    num_frames: int,
    frames_per_second: float,
    match_input_num_frames: bool,
    match_input_frames_per_second: bool,
) -> FramePlan:
    """Plan the output timeline for ``video`` (see the module docstring for the rules)."""
    fps = video.fps if match_input_frames_per_second else float(frames_per_second)
    if match_input_num_frames:
        wanted = int(video.num_frames * fps / video.fps + 1e-6)
    else:
        wanted = num_frames
    n = round_frames(wanted)
    indices = [int(i * video.fps / fps + 1e-6) for i in range(n)]
    last = video.num_frames - 1
    held = sum(1 for j in indices if j > last)
    return FramePlan(num_frames=n, fps=fps, source_indices=[min(j, last) for j in indices], held_frames=held)
