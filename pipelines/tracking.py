"""An inpainting job's one mask image, followed through the clip (fal: "salient mask tracking"; VACE: ``masktrack``).

On a server that tracks (``--mask-tracking track``, the default) a job given ``mask_image_url``:

1. reads the image as a static mask is read (``pipelines.masks``: its aspect ratio checked, transparency as keep,
   scaled to the video's size and binarised at half grey) and refuses it when it marks nothing or everything, before
   any model runs;
2. gives it to SAM2.1 (``preprocessors.mask_tracking``) as the mask of the first planned frame, the frame the output
   starts at, and lets SAM2 propagate it over the planned frames only: the frames the job generates from, after fps
   resampling, ``num_frames`` and temporal downsampling, so a downsampled job tracks only the frames it generates;
3. grows every frame's mask as VACE's ``maskaug`` mode ``original_expand`` does (``masks.expand_mask``; by
   ``--mask-expand-ratio``, default ``runtime.DEFAULT_MASK_EXPAND_RATIO``), so the object's edges, and what tracking
   misses of them, are regenerated too;
4. fits each mask to the output size exactly as a mask video's frames are fitted.

A server started with ``--mask-tracking static`` applies the image to every frame unchanged (VACE's ``mask`` mode).
Either way the job log names the mode. Where the tracker's weights are missing, a job that would track is refused
(``pipelines.checks``) rather than run static: a job never changes what it does silently.

The manifest names the tracker folders (``MASK_TRACKERS``), ``preprocessors`` knows SAM2; they meet here, as the
annotators meet in ``pipelines.annotators``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from preprocessors.mask_tracking import Sam2Tracker

from .manifest import MASK_TRACKERS
from .masks import expand_mask, fitted, mask_prompt


@dataclass(frozen=True)
class MaskTracking:
    """How this server follows a mask image through a clip: the tracker (a ``MASK_TRACKERS`` key) and how to get it
    loaded, how much each frame's mask grows and the probability above which a pixel is the object."""

    key: str
    load: Callable[[], Sam2Tracker]
    expand_ratio: float
    threshold: float

    def masks(
        self,
        frames: Sequence[np.ndarray],
        plane: np.ndarray,
        field: str,
        width: int,
        height: int,
        log: Callable[[str], None],
    ) -> list[np.ndarray]:
        """KEEP/GENERATE masks at ``width`` x ``height``, one per frame of ``frames`` (the planned frames at the
        video's size): the mask image's values ``plane`` binarised at the video's size, tracked from the first
        frame, grown and fitted (module docstring). A 422 on ``field`` for a mask that marks nothing or
        everything."""
        video_size = (frames[0].shape[1], frames[0].shape[0])
        prompt = mask_prompt(plane, video_size, field)  # refused before the tracker loads
        tracker = self.load()
        started = time.perf_counter()
        masks = []
        for tracked in tracker.track(frames, prompt, self.threshold):
            masks.append(fitted(expand_mask(tracked, self.expand_ratio), video_size, width, height))
        seconds = time.perf_counter() - started
        log(
            f"mask tracking: {self.key} followed the first frame's mask through {len(frames)} frames in "
            f"{seconds:.1f} s ({len(frames) / max(seconds, 1e-9):.1f} frames/s); masks grown by "
            f"{self.expand_ratio:g} of their box per side, object where SAM2's probability > {self.threshold:g}"
        )
        return masks


def load_tracker(key: str, weights_dir: Path, device: torch.device | str, *, offload: bool = False) -> Sam2Tracker:
    """The tracker ``key`` from its manifest folder under ``weights_dir``; FileNotFoundError naming the download
    when it is not there."""
    return Sam2Tracker.load(MASK_TRACKERS[key].path(weights_dir), device, offload=offload)
