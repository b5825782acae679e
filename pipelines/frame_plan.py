"""The frame plan: how many frames the model generates, at what frame rate, from which input frames, and how many
are interpolated afterwards. Two steps, each a pure function of the request and the input's probe.

**Timeline** (``plan_frames``). The input video is resampled in time to the output frame rate at real speed: output
frame ``i`` shows the input at ``i / fps_out`` seconds. ``match_input_frames_per_second`` takes the input's frame
rate as the output's, and ``match_input_num_frames`` makes the output cover the whole input at that rate instead of
using ``num_frames``: exactly as many frames as that takes (the input's own count when the rates match, as fal's field
promises), whatever the model's length rules; the generation plan below makes a valid length and the output is cut
back to this one. ``num_frames`` is clamped to 17..241 and rounded down to ``4k+1`` (the Wan VAE packs 4 frames per
latent after the first). When the input is shorter than the output, its last frame is held; the plan says how many
frames that was so it can be logged.

**Generation and interpolation** (``plan_temporal``). Its input is that control timeline: ``N`` frames at ``fps``
(any N >= 1). The rules:

* ``num_interpolated_frames = k`` inserts k frames between each pair of output frames and multiplies the output
  fps by k + 1, so the duration stays: N frames at fps become (N - 1)(k + 1) + 1 frames at fps * (k + 1).
* ``temporal_downsample_factor = f`` keeps every (f + 1)-th control frame (indices 0, f+1, 2(f+1), ...), generates
  that shorter video at fps / (f + 1), then interpolates f frames between each pair, so the output again has N
  frames at fps. With k as well, one pass interpolates (f + 1)(k + 1) - 1 frames between generated frames.
* ``enable_auto_downsample`` chooses f itself (a requested f is then ignored): the smallest f in 0..5 whose
  generated frames fit the model's native length of 81 while fps / (f + 1) stays at or above
  ``auto_downsample_min_fps``. When no f fits both, it takes the largest f that keeps the fps (the shortest
  generation the fps floor allows). The plan's notes say which f it chose and why, for the job log.

Rounding: the model generates 4m + 1 frames, at least 17 (the Wan VAE packs 4 frames per latent after the first;
more than one pass of the model runs as windows, ``pipelines.windows``). The generated count G is the smallest such
count that covers the timeline, G >= ceil((N - 1) / (f + 1)) + 1. When (N - 1) is not a multiple of 4(f + 1), or N
is below 17, this overshoots: the last generated frames sit past the control video's end (they take its last frame;
``held_frames`` counts them) and the interpolated output is cut back to exactly the planned length, so the count and
fps above are exact. f is also capped so the shortened video still needs the model's minimum of 17 frames (f <= 4
at N = 81, f = 0 at N = 17): beyond that, downsampling would only generate frames past the end of the video. A capped
f is noted too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .video_io import VideoInfo

MIN_FRAMES = 17
MAX_FRAMES = 241  # the longest single pass a request can ask for (num_frames)
NATIVE_FRAMES = 81
MAX_FACTOR = 5


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
    # match_input_num_frames is exact: the generation plan rounds what it generates, not the timeline.
    n = max(1, int(video.num_frames * fps / video.fps + 1e-6)) if match_input_num_frames else round_frames(num_frames)
    indices = [int(i * video.fps / fps + 1e-6) for i in range(n)]
    last = video.num_frames - 1
    held = sum(1 for j in indices if j > last)
    return FramePlan(num_frames=n, fps=fps, source_indices=[min(j, last) for j in indices], held_frames=held)


@dataclass(frozen=True)
class TemporalPlan:
    """What to generate and how to get from it to the output; frame counts are exact."""

    frames: int  # N: control timeline frames at ``fps`` (what the request asked for before k)
    fps: float
    downsample_factor: int  # f actually used
    generate_frames: int  # G: frames the model generates (4m + 1, at least 17; in windows past one pass)
    generate_fps: float  # fps / (f + 1): the frame rate of the generated video
    control_indices: tuple[int, ...]  # for each generated frame, its frame of the N-frame control video
    held_frames: int  # generated frames past the control video's end (they repeat its last frame)
    n_between: int  # frames to interpolate between consecutive generated frames: (f + 1)(k + 1) - 1
    output_frames: int  # (N - 1)(k + 1) + 1: the interpolated stream is cut to this many frames
    output_fps: float  # fps * (k + 1)
    notes: tuple[str, ...] = ()  # log lines explaining automatic choices and caps

    @property
    def interpolates(self) -> bool:
        return self.n_between > 0


def _round_up_4k1(n: int) -> int:
    return (max(n, MIN_FRAMES) - 1 + 3) // 4 * 4 + 1


def frames_to_generate(frames: int, factor: int) -> int:
    """G for a control timeline of ``frames`` frames and downsample factor ``factor`` (see the module rules)."""
    return _round_up_4k1(math.ceil((frames - 1) / (factor + 1)) + 1)


def max_factor(frames: int) -> int:
    """The largest f whose shortened video still needs the model's minimum frame count (at most 5)."""
    f = 0
    while f < MAX_FACTOR and math.ceil((frames - 1) / (f + 2)) + 1 >= MIN_FRAMES:
        f += 1
    return f


def _auto_factor(frames: int, fps: float, min_fps: float, cap: int) -> tuple[int, str]:
    """The auto-downsample choice and the reason to log (see the module rules)."""
    allowed = [f for f in range(cap + 1) if fps / (f + 1) >= min_fps]
    if not allowed:
        return 0, f"auto downsample: f=0, the requested {fps:g} fps is already below the {min_fps:g} fps minimum"
    for f in allowed:
        g = frames_to_generate(frames, f)
        if g <= NATIVE_FRAMES:
            if f == 0:
                return 0, f"auto downsample: f=0, {frames} frames already fit the model's native {NATIVE_FRAMES}"
            return f, (
                f"auto downsample: f={f}, keeping 1 frame in {f + 1} generates {g} frames at {fps / (f + 1):g} fps "
                f"(native length {NATIVE_FRAMES}, minimum {min_fps:g} fps); f={f - 1} would generate "
                f"{frames_to_generate(frames, f - 1)}"
            )
    f = allowed[-1]
    return f, (
        f"auto downsample: f={f}, {frames} frames cannot fit the native {NATIVE_FRAMES} without going below "
        f"{min_fps:g} fps; f={f} generates {frames_to_generate(frames, f)} frames at {fps / (f + 1):g} fps"
    )


def plan_temporal(
    frames: int,
    fps: float,
    *,
    num_interpolated_frames: int = 0,
    temporal_downsample_factor: int = 0,
    enable_auto_downsample: bool = False,
    auto_downsample_min_fps: float = 15.0,
) -> TemporalPlan:
    """Plan generation and interpolation for an ``frames``-frame control timeline at ``fps``."""
    if frames < 1:
        raise ValueError(f"a timeline has at least one frame, got {frames}")
    fps = float(fps)
    k, requested = num_interpolated_frames, temporal_downsample_factor
    if not 0 <= k <= MAX_FACTOR or not 0 <= requested <= MAX_FACTOR:
        raise ValueError(f"num_interpolated_frames and temporal_downsample_factor must be in 0..{MAX_FACTOR}")
    cap = max_factor(frames)
    notes: list[str] = []
    if enable_auto_downsample:
        f, reason = _auto_factor(frames, fps, auto_downsample_min_fps, cap)
        notes.append(reason + (f" (temporal_downsample_factor={requested} ignored)" if requested else ""))
    else:
        f = min(requested, cap)
        if f < requested:
            notes.append(
                f"temporal downsample: f={requested} lowered to {f}: {frames} frames at f={requested} would need "
                f"fewer than the model's minimum {MIN_FRAMES} frames"
            )
    g = frames_to_generate(frames, f)
    positions = [i * (f + 1) for i in range(g)]
    return TemporalPlan(
        frames=frames,
        fps=fps,
        downsample_factor=f,
        generate_frames=g,
        generate_fps=fps / (f + 1),
        control_indices=tuple(min(p, frames - 1) for p in positions),
        held_frames=sum(p > frames - 1 for p in positions),
        n_between=(f + 1) * (k + 1) - 1,
        output_frames=(frames - 1) * (k + 1) + 1,
        output_fps=fps * (k + 1),
        notes=tuple(notes),
    )
