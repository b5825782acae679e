"""Outpainting geometry: which border grows by how much, the output size, and where the source lands.

**Expansion** (``expansion``), as VACE's ``OutpaintingAnnotator``: each chosen side grows by ``int(ratio * width)``
(left, right) or ``int(ratio * height)`` (top, bottom) source pixels; the expanded canvas is the source plus those
borders. Choosing no side, or a ratio too small to add a pixel, is a 422: fal's defaults (every ``expand_*`` false)
would otherwise run a whole generation to return the source, which nobody asks outpainting for. (fal does not
publish what it does then; the base endpoint's ``task=outpainting``, which has no such fields, grows all four sides
by 0.25, the example fal's own playground sends.)

**Output size** (``outpaint_size``): ``resolution`` and ``aspect_ratio`` apply to the expanded canvas as they apply
to the input video of a pose/depth job. ``resolution=auto`` picks the tier nearest the canvas's short side.
``aspect_ratio=auto`` keeps the canvas's shape: it is scaled to the tier's pixel count and each side is rounded up
to a multiple of 16 (the model's requirement). A fixed ``aspect_ratio`` gives the tier's size for it; the expanded
canvas is scaled to fit inside and the space left over is generated too (the source is never cropped).

**Placement** (``outpaint_placement``): the source is scaled by the canvas's scale and the space around it is shared
between the sides of each axis in proportion to their expansion, with VACE's integer formula (``left = extra * l //
(l + r)``), so the rounding up to 16 goes to the chosen sides as VACE's ``KEEP_PADDING_RATIO`` rounding does. At a
canvas already a multiple of 16 this is VACE's layout pixel for pixel. One difference, on purpose: on an axis with
no chosen side, the pixels that rounding adds are split between both edges and generated; VACE puts them all on the
right/bottom edge, grey yet marked keep in its mask (``docs/PARITY.md``).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from .canvas import Placement
from .errors import InputError
from .sizing import MULTIPLE, RESOLUTIONS, auto_tier

Side = Literal["left", "right", "top", "bottom"]
SIDES: tuple[Side, ...] = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class Expansion:
    """The source size and the border each side grows by, in source pixels."""

    src_w: int
    src_h: int
    left: int
    right: int
    top: int
    bottom: int

    @property
    def canvas_w(self) -> int:
        return self.src_w + self.left + self.right

    @property
    def canvas_h(self) -> int:
        return self.src_h + self.top + self.bottom


def chosen_sides(left: bool, right: bool, top: bool, bottom: bool) -> tuple[Side, ...]:
    """The sides an outpainting request's ``expand_*`` fields choose."""
    return tuple(side for side, on in zip(SIDES, (left, right, top, bottom), strict=True) if on)


def check_sides(sides: Collection[Side]) -> None:
    """A 422 for a request that chooses no side (checked at submission too, before the video's size is known)."""
    if not sides:
        raise InputError(
            "expand_left",
            "no side to expand: set at least one of expand_left, expand_right, "
            "expand_top, expand_bottom (they all default to false)",
            "nothing_to_expand",
        )


def expansion(src_w: int, src_h: int, sides: Collection[Side], ratio: float) -> Expansion:
    """VACE's borders for ``sides`` at ``ratio``; a 422 when they add nothing."""
    check_sides(sides)
    horizontal, vertical = int(ratio * src_w), int(ratio * src_h)
    exp = Expansion(
        src_w,
        src_h,
        *((horizontal if side in ("left", "right") else vertical) if side in sides else 0 for side in SIDES),
    )
    if exp.canvas_w == src_w and exp.canvas_h == src_h:
        raise InputError(
            "expand_ratio", f"expand_ratio={ratio:g} adds no pixel to a {src_w}x{src_h} video", "nothing_to_expand"
        )
    return exp


def _ceil16(x: float) -> int:
    return max(MULTIPLE, math.ceil(x / MULTIPLE - 1e-9) * MULTIPLE)


def outpaint_size(exp: Expansion, resolution: str, aspect_ratio: str) -> tuple[float, int, int]:
    """(scale, width, height): how much the expanded canvas is scaled and the output size it goes into."""
    cw, ch = exp.canvas_w, exp.canvas_h
    tier = auto_tier(cw, ch) if resolution == "auto" else resolution
    if aspect_ratio == "auto":
        ref_w, ref_h = RESOLUTIONS[tier]["16:9"]
        scale = math.sqrt(ref_w * ref_h / (cw * ch))
        return scale, _ceil16(cw * scale), _ceil16(ch * scale)
    width, height = RESOLUTIONS[tier][aspect_ratio]
    return min(width / cw, height / ch), width, height


def _share(extra: int, before: int, after: int) -> int:
    """The part of ``extra`` that goes before the source: VACE's proportional split, centred with no chosen side."""
    return extra * before // (before + after) if before + after else extra // 2


def outpaint_placement(exp: Expansion, scale: float, width: int, height: int) -> Placement:
    """The source scaled by ``scale`` on a ``width`` x ``height`` canvas (at least the scaled expanded canvas)."""
    w, h = min(width, round(exp.src_w * scale)), min(height, round(exp.src_h * scale))
    return Placement(
        width, height, _share(width - w, exp.left, exp.right), _share(height - h, exp.top, exp.bottom), w, h
    )


def plan_outpaint(
    src_w: int, src_h: int, sides: Collection[Side], ratio: float, resolution: str, aspect_ratio: str
) -> Placement:
    """Everything above in one call: the placement of a ``src_w`` x ``src_h`` video for an outpainting request."""
    exp = expansion(src_w, src_h, sides, ratio)
    return outpaint_placement(exp, *outpaint_size(exp, resolution, aspect_ratio))
