"""A source video placed on a canvas of another size or shape: the conditioning of outpainting and reframe.

Both tasks keep the source where it lands and generate the rest of the canvas, so they share one description of the
layout (``Placement``): the canvas (the output size), the rectangle the source is scaled into (it may reach past the
canvas when reframe zooms in, which cuts the source's edges), and the part of each source frame used (reframe trims
letterbox bars first). The canvas is grey (VACE's ``MASK_COLOR``) wherever the source does not cover it, the mask
white there and black over the source, as VACE's ``OutpaintingAnnotator`` builds it; the same geometry serves every
frame, so there is one mask for the whole video.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from .conditioning import GENERATE, GREY, KEEP
from .sizing import MULTIPLE
from .streams import once_each


@dataclass(frozen=True)
class Placement:
    """Where the source goes on the output canvas; every number is in output pixels except ``crop``."""

    width: int  # the canvas (= output) size, multiples of 16
    height: int
    x: int  # the source rectangle: top-left corner (negative when zoomed past the edge) and size
    y: int
    w: int
    h: int
    crop: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) of each source frame that is placed; None: all

    def _visible(self) -> tuple[int, int, int, int]:
        """The canvas area the source covers, (x0, y0, x1, y1)."""
        return max(self.x, 0), max(self.y, 0), min(self.x + self.w, self.width), min(self.y + self.h, self.height)

    def mask(self) -> np.ndarray:
        """KEEP over the source, GENERATE on the rest of the canvas (uint8, height x width)."""
        mask = np.full((self.height, self.width), GENERATE, np.uint8)
        x0, y0, x1, y1 = self._visible()
        mask[y0:y1, x0:x1] = KEEP
        return mask

    @property
    def generated_share(self) -> float:
        """The share of the canvas that is generated (0 when the source covers it all)."""
        x0, y0, x1, y1 = self._visible()
        return 1 - max(0, x1 - x0) * max(0, y1 - y0) / (self.width * self.height)

    def render(self, frame: np.ndarray) -> np.ndarray:
        """One source frame on the grey canvas."""
        if self.crop is not None:
            cx0, cy0, cx1, cy1 = self.crop
            frame = frame[cy0:cy1, cx0:cx1]
        fh, fw = frame.shape[:2]
        if (fw, fh) != (self.w, self.h):
            shrink = self.w * self.h < fw * fh
            frame = cv2.resize(
                np.ascontiguousarray(frame),
                (self.w, self.h),
                interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC,
            )
        canvas = np.full((self.height, self.width, 3), GREY, np.uint8)
        x0, y0, x1, y1 = self._visible()
        canvas[y0:y1, x0:x1] = frame[y0 - self.y : y1 - self.y, x0 - self.x : x1 - self.x]
        return canvas

    def paste(self, generated: np.ndarray, original: np.ndarray) -> np.ndarray:
        """An output frame with the source frame ``original`` pasted back where it lands (``paste_back``): only the
        area around it stays generated. The model keeps that area too, but through the VAE and, with temporal
        downsampling, by interpolation; pasting makes it the source's own pixels (at the output's scale)."""
        out = np.array(generated)
        x0, y0, x1, y1 = self._visible()
        out[y0:y1, x0:x1] = self.render(original)[y0:y1, x0:x1]
        return out

    def render_all(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Every frame on the canvas, as they are taken; a frame repeated (a held last frame) is rendered once."""
        return once_each(self.render, frames)


def rounding_gap(width: int, height: int) -> tuple[float, float]:
    """The widest uncovered band (horizontal, vertical) that rounding both sides of a ``width`` x ``height`` output
    to multiples of 16 can leave when a picture of (nearly) the output's own aspect is scaled to fit it: each side
    moves by up to 8 px, so the band can reach 8 * (1 + width/height) px across and 8 * (1 + height/width) down."""
    half = MULTIPLE / 2
    return half * (1 + width / height), half * (1 + height / width)
