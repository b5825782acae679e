"""The VACE conditioning of one job: control frames, the mask, reference images, first and last frame.

VACE reads a video and a mask of the same length: black (0) mask pixels are kept as given, white (255) ones are
generated, guided by the video's content there (the pose or depth control). A pose/depth job is all white: pure
control. An edit (inpainting, outpainting, reframe) passes ``masks``: the source is kept where they are black, and
where they are white its pixels are painted grey (VACE's 128, "missing"), so the model sees no trace of what it must
replace. A job with no video at all (text-, reference- or first/last-frame-to-video) is ``grey_frames`` under an
all-white mask, which is what VACE's ``prepare_source`` builds when no source video is given.
``first_frame_url``/``last_frame_url`` put a real image at index 0 / N-1 with a black mask, so the model keeps it and
generates the rest (VACE's ``frameref`` convention). Reference images go to the pipeline as they are; diffusers
letterboxes them onto white and prepends them as extra latent frames.

Images with an alpha channel are flattened here, because the model sees only RGB: ``white``/``black`` composite onto
a flat colour; ``content_aware`` fills the transparent area from the image's own content with OpenCV inpainting
(done at reduced size, since inpainting cost grows with the hole's area, then blended back at full size).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

KEEP = 0  # mask value: condition on this pixel
GENERATE = 255  # mask value: generate this pixel
GREY = 128  # source pixels that are missing (VACE's MASK_COLOR; 127.5 in its frame-extension code, not a uint8)
INPAINT_MAX_SIDE = 256


@dataclass
class Conditioning:
    """Exactly what ``WanVACEPipeline.__call__`` takes as ``video``, ``mask`` and ``reference_images``."""

    video: list[Image.Image]
    mask: list[Image.Image]
    reference_images: list[Image.Image] | None


def fit_frame(frame: np.ndarray | Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover ``width`` x ``height`` and crop the centre, so nothing is stretched."""
    arr = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
    h, w = arr.shape[:2]
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        arr = cv2.resize(arr, (new_w, new_h), interpolation=interp)
    top, left = (new_h - height) // 2, (new_w - width) // 2
    return Image.fromarray(np.ascontiguousarray(arr[top : top + height, left : left + width]))


def _inpaint_fill(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """An RGB image whose transparent pixels are filled from the opaque ones."""
    h, w = alpha.shape
    scale = min(1.0, INPAINT_MAX_SIDE / max(h, w))
    small_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_rgb = cv2.resize(rgb, small_size, interpolation=cv2.INTER_AREA)
    small_alpha = cv2.resize(alpha, small_size, interpolation=cv2.INTER_AREA)
    hole = (small_alpha < 250).astype(np.uint8) * 255
    filled = cv2.inpaint(small_rgb, hole, 5, cv2.INPAINT_TELEA)
    return cv2.resize(filled, (w, h), interpolation=cv2.INTER_CUBIC)


def flatten_alpha(image: Image.Image, mode: str) -> Image.Image:
    """An RGB version of ``image`` with its transparent area filled per ``transparency_mode``."""
    if image.mode != "RGBA":
        return image.convert("RGB")
    arr = np.asarray(image)
    rgb, alpha = arr[..., :3], arr[..., 3]
    if alpha.min() == 255:
        return Image.fromarray(np.ascontiguousarray(rgb))
    if mode == "content_aware" and alpha.max() > 0:
        background = _inpaint_fill(np.ascontiguousarray(rgb), alpha)
    else:
        background = np.full_like(rgb, 0 if mode == "black" else 255)
    a = alpha[..., None].astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + background.astype(np.float32) * (1.0 - a)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def grey_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """``count`` all-grey frames: the source of a job without a video (one read-only array, repeated)."""
    frame = np.full((height, width, 3), GREY, np.uint8)
    frame.flags.writeable = False
    return [frame] * count


def _grey_out(frame: Image.Image, mask: np.ndarray) -> Image.Image:
    """``frame`` with the pixels its mask marks for generation painted grey."""
    arr = np.array(frame)
    arr[mask == GENERATE] = GREY
    return Image.fromarray(arr)


def build_conditioning(
    control_frames: Sequence[np.ndarray],
    width: int,
    height: int,
    *,
    masks: Sequence[np.ndarray] | None = None,
    first_frame: Image.Image | None = None,
    last_frame: Image.Image | None = None,
    last_index: int | None = None,
    reference_images: list[Image.Image] | None = None,
    transparency_mode: str = "content_aware",
    kept_frames: Sequence[np.ndarray] = (),
) -> Conditioning:
    """Frames, mask and references for one job (or one window of a long one, ``pipelines.windows``); every frame is
    exactly ``width`` x ``height``.

    ``masks`` (one uint8 ``height`` x ``width`` array of KEEP/GENERATE per frame, as ``pipelines.masks`` and
    ``pipelines.canvas`` make them) turn the job into an edit of ``control_frames``; without them every pixel is
    generated. A mask array repeated for several frames becomes one image. ``last_index`` places the last frame
    earlier than the final position, for generated videos that run past the end of the control video (temporal
    downsampling rounds their length up) and are cut back after interpolation.

    ``kept_frames`` come first, whole and under a black mask (VACE's ``firstclip`` extension: a later window of a long
    job continues the frames the output already has); ``masks``, ``first_frame`` and the control frames follow them,
    and ``last_index`` counts them too.
    """
    video = [fit_frame(f, width, height) for f in control_frames]
    generate = Image.new("L", (width, height), GENERATE)
    keep = Image.new("L", (width, height), KEEP)
    mask = [generate] * len(video)
    if masks is not None:
        if len(masks) != len(video) or any(m.shape != (height, width) or m.dtype != np.uint8 for m in masks):
            raise ValueError(f"masks must be {len(video)} uint8 arrays of {height}x{width}")
        images: dict[int, Image.Image] = {}
        for m in masks:
            if id(m) not in images:
                images[id(m)] = Image.fromarray(m)
        mask = [images[id(m)] for m in masks]
        video = [_grey_out(frame, m) for frame, m in zip(video, masks, strict=True)]
    video = [fit_frame(f, width, height) for f in kept_frames] + video
    mask = [keep] * len(kept_frames) + mask
    end = len(video) - 1 if last_index is None else last_index
    for index, image in ((0, first_frame), (end, last_frame)):
        if image is not None:
            video[index] = fit_frame(flatten_alpha(image, transparency_mode), width, height)
            mask[index] = keep
    refs = [flatten_alpha(img, "white") for img in reference_images] if reference_images else None
    return Conditioning(video=video, mask=mask, reference_images=refs)
