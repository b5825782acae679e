"""Videos longer than one pass of the model, window by window.

A job whose generated frames outnumber one pass (``WindowSettings.frames``: the model's native 81 by default, a
setting of the server or the CLI, never more than 241, the single-pass limit of a request) runs as consecutive
**windows** of at most that many frames. Each later window begins ``overlap`` frames (17 by default, about a second
at 16 fps) before the previous one ended, and those frames are not generated again: the window is conditioned on
them as the output already has them, under a black (keep) mask, and generates the rest, grey under its task's mask.
That is VACE's own way of extending a clip (``firstclip`` in ``vace/annotators/frameref.py``: given frames kept with
a black mask, new frames generated), so motion and identity carry across the seam. Only a window's new frames join
the output; reference images, LoRAs, the sampler and the step cache apply to every window, and temporal downsampling
and interpolation run over the whole timeline (``pipelines.frame_plan``), never per window.

**The plan** (``plan_windows``) is over the G generated positions (4m + 1 of them). Window 0 covers
``[0, min(W, G))``; every next window starts at ``min(end - O, G - 17)`` (O frames back, or further when only a
short window would be left: the model's minimum is 17 frames) and ends at ``min(start + W, G)``. W, O and G being
4k + 1, every window's length is too, so no window generates frames past the end of the job. A job of one window is
exactly the single pass it always was.

**Seeds** (``window_seed``): window 0 uses the job's seed (so a one-window job is bit for bit the single pass);
window i > 0 uses the first 63 bits of sha256 of ``"{seed}:{i}"``: reproducible from the job's seed alone, and
unrelated to the windows of the job with seed + 1.

**Finished windows** are kept where a resumed job finds them: ``pipelines.window_outputs``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .frame_plan import MAX_FRAMES, MIN_FRAMES

DEFAULT_FRAMES = 81
DEFAULT_OVERLAP = 17
WINDOWS_DIR = "windows"
"""The folder of a job's work directory that holds its finished windows (``pipelines.window_outputs``)."""


@dataclass(frozen=True)
class WindowSettings:
    """How long a window is and how many frames of the previous one it keeps (see the module docstring)."""

    frames: int = DEFAULT_FRAMES
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        if not (MIN_FRAMES <= self.frames <= MAX_FRAMES and self.frames % 4 == 1):
            raise ValueError(
                f"window frames must be 4k+1 in {MIN_FRAMES}..{MAX_FRAMES} (the model's lengths), got {self.frames}"
            )
        if not (1 <= self.overlap < self.frames and self.overlap % 4 == 1):
            raise ValueError(
                f"window overlap must be 4k+1 and less than the window's {self.frames} frames (so each "
                f"window is 4k+1 frames long), got {self.overlap}"
            )


@dataclass(frozen=True)
class Window:
    """Positions ``[start, stop)`` of the generated timeline; the first ``kept`` are the output's already."""

    index: int
    start: int
    stop: int
    kept: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    @property
    def new(self) -> int:
        """How many frames this window adds to the output."""
        return self.length - self.kept


def plan_windows(generate_frames: int, settings: WindowSettings, first_index: int = 0) -> list[Window]:
    """The windows of a clip that generates ``generate_frames`` frames (4m + 1, at least 17), numbered from
    ``first_index`` (a long reframe numbers the windows of all its scenes in one sequence)."""
    if generate_frames < MIN_FRAMES or generate_frames % 4 != 1:
        raise ValueError(f"a job generates 4k+1 frames, at least {MIN_FRAMES}; got {generate_frames}")
    windows = [Window(first_index, 0, min(settings.frames, generate_frames), 0)]
    while (end := windows[-1].stop) < generate_frames:
        start = min(end - settings.overlap, generate_frames - MIN_FRAMES)
        windows.append(
            Window(first_index + len(windows), start, min(start + settings.frames, generate_frames), end - start)
        )
    return windows


def describe_windows(windows: list[Window], settings: WindowSettings) -> str:
    """The job log's account of a clip's windows."""
    return (
        f"{windows[-1].stop} frames in {len(windows)} windows of up to {settings.frames}, each after the first "
        f"conditioned on the last {settings.overlap} frames of the output before it"
    )


def window_seed(seed: int, index: int) -> int:
    """The seed of window ``index`` of a job with ``seed`` (see the module docstring)."""
    if index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "big") >> 1
