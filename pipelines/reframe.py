"""Reframe: the same footage in a new frame shape. fal does not publish its algorithm (and VACE has no reframe task);
ours, built on VACE's outpainting conditioning:

1. **Trim** (``trim_borders``, on by default): letterbox/pillarbox bars are found on frames sampled over the clip
   (``detect_bars``) and cut off, so the model regenerates that area with picture instead of keeping black bars.
2. **Canvas**: ``aspect_ratio`` and ``resolution`` give the output size as for pose/depth, measured on the source's
   own frame, bars included (``aspect_ratio=auto`` = the source's frame: a letterboxed clip is filled in).
3. **Fit**: the trimmed picture is scaled to fit the canvas, centred. A band left uncovered that is no wider than
   what rounding the canvas to multiples of 16 produces (``canvas.rounding_gap``) is not worth generating: the
   picture is scaled to fill that axis instead, cutting that much from the other one.
4. **Zoom** (``zoom_factor`` z, 0..0.9): the fitted picture is scaled by 1 + z about the canvas centre (z = 0.5: half
   as large again, relative to the canvas it fitted), cutting off its edges where it passes the canvas.
5. Everything of the canvas the picture does not cover is generated (grey in the video, white in the mask).

**Bar detection.** A bar is a run of whole rows (top, bottom) or columns (left, right) from the frame's edge inward
that is one flat colour in *every* sampled frame: at least 98% of a line's pixels within 24 levels of the bar's
colour per channel (compression noise and a stray bright speck pass; picture does not), the colour taken from the
outermost line. Dark bars (every channel of the colour at most 32) are trimmed on any edge. A bar of another flat
colour is trimmed only when the opposite edge has one of the same colour (a white letterbox), so a clear sky or a
plain floor at one edge stays. When the bars would leave less than a tenth of the frame on an axis the clip is one
flat colour there (a black clip, a fade) and nothing is trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .canvas import Placement, rounding_gap
from .sizing import output_size

T = TypeVar("T")
MAX_SAMPLES = 16
LINE_SHARE = 0.98  # share of a line's pixels that must match the bar colour
COLOUR_TOLERANCE = 24  # per channel, in levels (ffmpeg's cropdetect uses 24 as its black limit too)
DARK = 32  # a bar colour with every channel at most this is a dark bar
MIN_CONTENT = 0.1  # bars may leave no less than this share of a side


@dataclass(frozen=True)
class Bars:
    """Bar thickness per edge, in source pixels."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def crop(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The picture inside the bars as (x0, y0, x1, y1)."""
        return self.left, self.top, width - self.right, height - self.bottom


def sample_evenly(frames: Sequence[T], count: int) -> list[T]:
    """Up to ``count`` items spread evenly over ``frames``, the first and the last among them."""
    if len(frames) <= count:
        return list(frames)
    return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)]


def _edge_bar(lines: list[np.ndarray]) -> tuple[int, np.ndarray | None]:
    """How many lines from the edge are bar in every frame, and the bar colour.

    ``lines`` holds one (n_lines, line_length, 3) array per frame, ordered from the edge inward."""
    colour = np.median(np.stack([np.median(stack[0], axis=0) for stack in lines]), axis=0).astype(np.int16)
    depth = len(lines[0]) // 2  # bars are looked for in the outer half of the frame
    for stack in lines:  # each frame only needs checking as deep as the bar still reaches
        close = np.abs(stack[:depth].astype(np.int16) - colour).max(axis=2) <= COLOUR_TOLERANCE
        is_bar = close.mean(axis=1) >= LINE_SHARE
        not_bar = np.flatnonzero(~is_bar)
        depth = min(depth, int(not_bar[0]) if len(not_bar) else len(is_bar))
        if depth == 0:
            return 0, None
    return depth, colour


def detect_bars(frames: Sequence[np.ndarray]) -> Bars:
    """The letterbox/pillarbox bars of a clip, from up to 16 frames sampled evenly over ``frames`` (uint8 RGB)."""
    sampled = sample_evenly(frames, MAX_SAMPLES)
    height, width = sampled[0].shape[:2]
    edges = {
        "top": list(sampled),
        "bottom": [f[::-1] for f in sampled],
        "left": [f.transpose(1, 0, 2) for f in sampled],
        "right": [f.transpose(1, 0, 2)[::-1] for f in sampled],
    }
    found = {name: _edge_bar(lines) for name, lines in edges.items()}
    depth: dict[str, int] = {}
    for name, opposite in (("top", "bottom"), ("bottom", "top"), ("left", "right"), ("right", "left")):
        d, colour = found[name]
        other = found[opposite][1]
        dark = colour is not None and colour.max() <= DARK
        matched = colour is not None and other is not None and np.abs(colour - other).max() <= COLOUR_TOLERANCE
        depth[name] = d if dark or matched else 0
    for a, b, side in (("top", "bottom", height), ("left", "right", width)):
        if side - depth[a] - depth[b] < MIN_CONTENT * side:
            depth[a] = depth[b] = 0
    return Bars(**depth)


def reframe_placement(src_w: int, src_h: int, bars: Bars, width: int, height: int, zoom: float) -> Placement:
    """Where the trimmed source goes on a ``width`` x ``height`` canvas (steps 3 and 4 of the module docstring)."""
    x0, y0, x1, y1 = bars.crop(src_w, src_h)
    cw, ch = x1 - x0, y1 - y0
    fit_x, fit_y = width / cw, height / ch
    scale = min(fit_x, fit_y)
    gap_x, gap_y = rounding_gap(width, height)
    if width - cw * scale <= gap_x and height - ch * scale <= gap_y:
        scale = max(fit_x, fit_y)  # only rounding is left uncovered: fill it
    scale *= 1 + zoom
    w, h = max(1, round(cw * scale)), max(1, round(ch * scale))
    crop = None if (cw, ch) == (src_w, src_h) else (x0, y0, x1, y1)
    return Placement(width, height, (width - w) // 2, (height - h) // 2, w, h, crop)


def plan_reframe(
    frames: Sequence[np.ndarray], trim_borders: bool, zoom_factor: float, resolution: str, aspect_ratio: str
) -> tuple[Placement, Bars]:
    """Everything above in one call: the placement of the clip whose (planned) frames are ``frames``, and the bars
    trimmed (for the job log)."""
    height, width = frames[0].shape[:2]
    bars = detect_bars(frames) if trim_borders else Bars()
    out_w, out_h = output_size(resolution, aspect_ratio, width, height)
    return reframe_placement(width, height, bars, out_w, out_h, zoom_factor), bars
