"""What the base endpoint's request asks for: ``task`` and which of its inputs are given decide the recipe.

fal's base endpoint (``fal-ai/wan-vace-14b``, served on both apps here) takes ``task`` (default ``depth``), an
optional video and optional masks, and no task-specific fields. Our reading, since fal publishes none:

* **No video** (absent, null or ""): text-to-video; with ``ref_image_urls`` it is reference-to-video, with
  ``first_frame_url``/``last_frame_url`` image-to-video or first/last-frame-to-video (VACE's ``frameref``: the given
  frames kept, grey frames under a white mask between). This holds for the default ``task=depth``, which a client
  that sends every default also sends; any other task needs the video it works on, so it is a 422 naming
  ``video_url``, and so is a mask without a video (nothing to mask).
The inpainting endpoints take the other precedence (fal: ``mask_image_url`` "ignored if mask_video_url is provided")
and need one of the two (``inpainting_mask``). A mask image is tracked through the clip as fal's "salient mask
tracking" and VACE's ``masktrack`` do, or applied to every frame on a server that does not track
(``pipelines.tracking``); the job log names the mode. ``preprocess`` does nothing on inpainting (the log says so).

* **A video**: ``pose``/``depth`` as on their own endpoints (``preprocess`` as there); ``inpainting`` with
  ``mask_image_url`` if given (fal: "If provided mask video url will be ignored"), else ``mask_video_url``, else a
  422 naming ``mask_video_url``; ``outpainting`` grows all four sides by 0.25 (``BASE_SIDES``, ``BASE_RATIO``: the
  example fal's playground sends); ``reframe`` trims bars and does not zoom (``BASE_TRIM``, ``BASE_ZOOM``: the
  reframe endpoint's defaults), with the request's ``aspect_ratio``. Masks given to another task are ignored, and
  the job log says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import InputError
from .masks import MaskRef, choose_mask
from .outpaint import SIDES, Side
from .schema import InpaintingFunInput, VaceTaskInput

Recipe = Literal["text", "pose", "depth", "inpainting", "outpainting", "reframe"]
BASE_SIDES: tuple[Side, ...] = SIDES
BASE_RATIO = 0.25
BASE_TRIM = True
BASE_ZOOM = 0.0


@dataclass(frozen=True)
class BaseJob:
    """The recipe of one base-endpoint request, the mask it uses and what to log about the choice."""

    recipe: Recipe
    mask: MaskRef | None = None
    notes: tuple[str, ...] = ()


def base_job(inp: VaceTaskInput) -> BaseJob:
    """The recipe for ``inp`` (rules in the module docstring); a 422 for a combination that cannot run."""
    mask = choose_mask(inp.mask_video_url, inp.mask_image_url, image_wins=True)
    if inp.video_url is None:
        if inp.task != "depth":
            raise InputError(
                "video_url",
                f"task={inp.task} needs a video_url; leave task out (or depth) for text-, "
                "reference- or first/last-frame-to-video",
                "missing_video",
            )
        if mask is not None:
            raise InputError(mask.field, "a mask needs the video_url it masks", "missing_video")
        kind = (
            "reference-to-video"
            if inp.ref_image_urls
            else "first/last-frame-to-video"
            if inp.first_frame_url or inp.last_frame_url
            else "text-to-video"
        )
        ignored = ("preprocess is ignored (there is no video to preprocess)",) if inp.preprocess else ()
        return BaseJob("text", notes=(f"no video_url: {kind}", *ignored))
    notes: list[str] = []
    if inp.task == "inpainting":
        if mask is None:
            raise InputError("mask_video_url", "task=inpainting needs mask_video_url or mask_image_url", "missing_mask")
        return BaseJob("inpainting", mask, _mask_notes(mask, inp.mask_video_url, inp.mask_image_url, inp.preprocess))
    if mask is not None:
        notes.append(f"task={inp.task}: {mask.field} is ignored (masks apply to task=inpainting)")
    if inp.task == "outpainting":
        notes.append(f"task=outpainting: every side grows by {BASE_RATIO:g} (the base endpoint has no expand_* fields)")
    elif inp.task == "reframe":
        notes.append("task=reframe: bars trimmed, no zoom (the base endpoint has no trim_borders/zoom_factor)")
    if inp.preprocess and inp.task not in ("pose", "depth"):
        notes.append(f"task={inp.task}: preprocess is ignored (it makes pose/depth control videos)")
    return BaseJob(inp.task, None, tuple(notes))


def inpainting_mask(inp: InpaintingFunInput) -> tuple[MaskRef, tuple[str, ...]]:
    """The mask of an inpainting-endpoint request (the video wins) and what to log; a 422 when there is none."""
    mask = choose_mask(inp.mask_video_url, inp.mask_image_url, image_wins=False)
    if mask is None:
        raise InputError("mask_video_url", "inpainting needs mask_video_url (or mask_image_url)", "missing_mask")
    return mask, _mask_notes(mask, inp.mask_video_url, inp.mask_image_url, inp.preprocess)


def _mask_notes(mask: MaskRef, video_url: str | None, image_url: str | None, preprocess: bool) -> tuple[str, ...]:
    """What an inpainting job logs about its inputs."""
    notes = []
    if preprocess:  # fal's inpainting schema has the field; what fal does with it is unpublished
        notes.append("preprocess does nothing on inpainting: the video is inpainted as it is")
    if video_url and image_url:
        ignored = "mask_image_url" if mask.is_video else "mask_video_url"
        notes.append(f"both masks given: {ignored} is ignored, as fal documents for this endpoint")
    return tuple(notes)
