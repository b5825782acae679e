"""Inpainting masks: from a mask video or one mask image to one KEEP/GENERATE array per planned frame.

VACE's convention: white = generate, black = keep. The model binarises its mask at 0.5 (``m > 0.5`` on values in
[0, 1], i.e. 128 and up of 255) after resizing it to the video size, so we resize first and binarise the same way;
the conditioning then paints exactly the pixels the model will generate grey. (VACE's ``InpaintingVideoAnnotator``
greys every pixel above 0 instead, so a soft mask edge would be grey in its frames yet kept by its model: with a
hard 0/255 mask, as its own tools write, the two agree; ``docs/PARITY.md``.) A mask video is read like VACE's
``prepare_source`` reads one: its first colour channel.

The mask follows the source video frame for frame: the job reads mask frame ``i`` wherever it reads video frame
``i`` (the frame plan's fps resampling, ``num_frames``, temporal downsampling and held last frames apply to both
alike), as VACE pairs a source video and its mask by index. What would make the mask silently wrong is refused with
a 422 naming the field and the numbers: a mask video too short for the frames the plan reads, a mask of another
aspect ratio than the video (stretching it would move its edges off what it outlines), a mask that keeps every
pixel of every frame (all black: nothing to generate, almost always an inverted mask) and one that keeps none (all
white: the video would be ignored entirely, which is text-to-video with extra steps; the base endpoint without
``video_url`` does that on purpose).

A mask image a job tracks through the clip (``pipelines.tracking``) is read the same way and becomes the tracker's
prompt on the first frame (``mask_prompt``); what it tracks is grown as VACE's ``maskaug`` grows masks
(``expand_mask``) and fitted like every mask (``fitted``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .conditioning import GENERATE, KEEP, fit_frame, flatten_alpha
from .errors import InputError
from .streams import once_each
from .video_io import VideoInfo, pick_frames

THRESHOLD = 128  # mask values from here up are white (VACE: m > 0.5 with m = value / 255)
ASPECT_TOLERANCE = 0.01  # relative: 1920x1088 (encoder padding) passes as 1920x1080, 4:3 never as 16:9


@dataclass(frozen=True)
class MaskRef:
    """The mask a request names: which field and its URL."""

    field: str  # "mask_video_url" or "mask_image_url"
    url: str

    @property
    def is_video(self) -> bool:
        return self.field == "mask_video_url"


def choose_mask(mask_video_url: str | None, mask_image_url: str | None, *, image_wins: bool) -> MaskRef | None:
    """The one mask a request uses when it names both. fal documents opposite precedences: the base endpoint
    ignores the mask video when a mask image is given, the inpainting endpoints ignore the image when a video is."""
    video = MaskRef("mask_video_url", mask_video_url) if mask_video_url else None
    image = MaskRef("mask_image_url", mask_image_url) if mask_image_url else None
    return (image or video) if image_wins else (video or image)


def check_aspect(field: str, mask_size: tuple[int, int], video_size: tuple[int, int]) -> None:
    """Refuse a mask whose aspect ratio is not the video's (sizes are (width, height))."""
    (mw, mh), (vw, vh) = mask_size, video_size
    if abs((mw / mh) / (vw / vh) - 1) > ASPECT_TOLERANCE:
        raise InputError(
            field,
            f"the mask is {mw}x{mh} (aspect {mw / mh:.3f}) but the video is {vw}x{vh} (aspect "
            f"{vw / vh:.3f}): a mask must have the video's aspect ratio; it is scaled, never stretched",
            "mask_aspect_mismatch",
        )


def mask_plane(frame: np.ndarray) -> np.ndarray:
    """The mask values of a decoded RGB mask frame: its first channel, as VACE reads a mask video."""
    return np.ascontiguousarray(frame[..., 0])


def mask_from_image(image: Image.Image, video_size: tuple[int, int], field: str = "mask_image_url") -> np.ndarray:
    """The mask values of a mask image for a video of ``video_size`` (width, height), whose aspect ratio it must
    have. Transparent areas count as black (keep): a mask drawn on a transparent layer marks only what it paints."""
    check_aspect(field, image.size, video_size)
    return mask_plane(np.asarray(flatten_alpha(image, "black")))


def read_mask_video(
    path: Path, mask: VideoInfo, video: VideoInfo, indices: Sequence[int], field: str = "mask_video_url"
) -> tuple[Iterator[np.ndarray], list[str]]:
    """The mask planes for the video frames at ``indices`` (the frame plan's reads of the source, in order) at the
    mask's own size, read as they are taken (a long job's masks are never held at once), and log lines. ``mask`` is
    the probed mask video (the caller checks it against the input limits first, as for the video). The checks on
    the mask's shape and length come first, before any frame is read."""
    check_aspect(field, (mask.width, mask.height), (video.width, video.height))
    needed = max(indices) + 1
    if mask.num_frames < needed:
        raise InputError(
            field,
            f"the mask video has {mask.num_frames} frames but the job uses the video's frames up "
            f"to #{needed - 1} ({needed} frames; the video has {video.num_frames}): a mask video must "
            "cover them, frame for frame",
            "mask_too_short",
        )
    notes = []
    if mask.num_frames != video.num_frames:
        notes.append(
            f"the mask video has {mask.num_frames} frames, the video {video.num_frames}: masks follow "
            "the video frame for frame from its first frame"
        )
    return once_each(mask_plane, pick_frames(path, indices, field)), notes


def fit_masks(
    planes: Iterable[np.ndarray], video_size: tuple[int, int], width: int, height: int
) -> Iterator[np.ndarray]:
    """Binary KEEP/GENERATE masks at ``width`` x ``height`` for mask planes of the video's aspect ratio, one per
    plane as they are taken.

    Each plane is scaled to the video's size (``video_size``, (width, height)) and then cropped and scaled exactly
    as ``fit_frame`` does with the video's frames, so mask and frame pixels stay aligned; binarised after resizing,
    as the model does. A plane repeated (a mask image, a held frame) is fitted once and its mask repeated.
    """
    vw, vh = video_size

    def fit(plane: np.ndarray) -> np.ndarray:
        arr = plane
        if arr.shape != (vh, vw):
            shrink = vw * vh < arr.shape[0] * arr.shape[1]
            arr = cv2.resize(arr, (vw, vh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        arr = np.asarray(fit_frame(arr, width, height))
        return np.where(arr >= THRESHOLD, GENERATE, KEEP).astype(np.uint8)

    return once_each(fit, planes)


def check_generates(masks: Iterable[np.ndarray], field: str) -> float:
    """The share of pixels the masks regenerate; a 422 when it is none (an all-black mask: nothing to do) or all
    (an all-white mask: nothing of the video is used)."""
    total, count, last = 0.0, 0, None
    for m in masks:
        if last is None or last[0] is not m:  # a run of one mask is counted once
            last = m, np.count_nonzero(m == GENERATE) / m.size
        total, count = total + last[1], count + 1
    share = total / max(1, count)
    if share == 0:
        raise InputError(
            field,
            "the mask is black everywhere (keep every pixel): there is nothing to generate; "
            "white marks what to regenerate",
            "mask_empty",
        )
    if share == 1:
        raise InputError(
            field,
            "the mask is white everywhere (regenerate every pixel): nothing of the video would be "
            "kept; black marks what to keep (for a video from the prompt alone, call the base endpoint "
            "without video_url)",
            "mask_full",
        )
    return share


def mask_prompt(plane: np.ndarray, video_size: tuple[int, int], field: str) -> np.ndarray:
    """A mask image's values ``plane`` as the boolean mask (True = regenerate) of a frame of ``video_size`` (width,
    height), scaled and binarised as every mask is; a 422 on ``field`` when it marks nothing or everything."""
    prompt = next(fit_masks([plane], video_size, *video_size))
    check_generates([prompt], field)
    return prompt == GENERATE


def expand_mask(mask: np.ndarray, ratio: float) -> np.ndarray:
    """``mask`` (boolean) grown on each side by ``ratio`` of its bounding box's width (left, right) or height (top,
    bottom), but by at most half the distance to the frame's edge on that side: VACE's ``original_expand``
    (``vace/annotators/maskaug.py``) with its random per-side factors at 1 and one pass. An empty mask stays empty."""
    ys, xs = np.nonzero(mask)
    if ratio <= 0 or xs.size == 0:
        return mask
    height, width = mask.shape
    left, right, top, bottom = xs.min(), xs.max(), ys.min(), ys.max()
    box_w, box_h = (right - left + 1) * ratio, (bottom - top + 1) * ratio
    grow_left, grow_right = int(min(box_w, left / 2)), int(min(box_w, (width - right) / 2))
    grow_up, grow_down = int(min(box_h, top / 2)), int(min(box_h, (height - bottom) / 2))
    if not grow_left + grow_right + grow_up + grow_down:
        return mask
    # A pixel joins the mask when the mask is at most grow_right to its left, grow_left to its right, and so on.
    kernel = np.ones((grow_up + grow_down + 1, grow_left + grow_right + 1), np.uint8)
    grown = cv2.dilate(mask.astype(np.uint8), kernel, anchor=(grow_right, grow_down))
    return grown.astype(bool)


def fitted(mask: np.ndarray, video_size: tuple[int, int], width: int, height: int) -> np.ndarray:
    """A boolean mask at the video's size (``video_size``: width, height) as a KEEP/GENERATE mask at ``width`` x
    ``height``, fitted like every mask."""
    return next(fit_masks([np.where(mask, GENERATE, KEEP).astype(np.uint8)], video_size, width, height))
