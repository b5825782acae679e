"""The safety checker: an image classifier for unsafe content, run on sampled frames of a job's inputs and output.

A flagged job fails with fal's 422 ``content_policy_violation`` and nothing of it is stored or returned. So the
inputs are checked as soon as they are decoded, before any model work, and the generated frames before anything is
encoded or handed to ``publish``. Interpolated frames are blends of their checked neighbours and are not classified
again. A video contributes at most ``MAX_VIDEO_FRAMES`` evenly spaced frames, so the check costs the same for 17 and
for 241 frames; all images of one check go through the classifier in batches.

The classifier is any transformers image classifier with an unsafe label (``nsfw`` in Falconsai's, the manifest's
default). Its probability, summed over the unsafe labels, is compared with the runtime's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, BaseImageProcessor, PreTrainedModel

from .conditioning import flatten_alpha
from .errors import InputError

CONTENT_POLICY_VIOLATION = "content_policy_violation"
UNSAFE_LABELS = frozenset({"nsfw", "unsafe"})
MAX_VIDEO_FRAMES = 8
BATCH_SIZE = 16  # bounds activation memory when a request brings many reference images

Picture = Image.Image | np.ndarray  # PIL image (RGB or RGBA) or uint8 (H, W, 3) frame
Loc = tuple[str | int, ...]
T = TypeVar("T")


def sample_frames(frames: Sequence[T], count: int = MAX_VIDEO_FRAMES) -> list[T]:
    """Up to ``count`` evenly spaced frames, the first and the last included."""
    n = len(frames)
    if n <= count:
        return list(frames)
    return [frames[round(i * (n - 1) / (count - 1))] for i in range(count)]


class SafetyChecker:
    """A loaded classifier and the threshold above which an image's unsafe probability flags the job."""

    def __init__(
        self, model: PreTrainedModel, processor: BaseImageProcessor, threshold: float, device: torch.device
    ) -> None:
        labels = {int(i): str(name).lower() for i, name in model.config.id2label.items()}
        self.unsafe_ids = sorted(i for i, name in labels.items() if name in UNSAFE_LABELS)
        if not self.unsafe_ids:
            raise ValueError(f"the safety classifier has no unsafe label ({sorted(UNSAFE_LABELS)}) in {labels}")
        self.model = model
        self.processor = processor
        self.threshold = threshold
        self.device = device

    @classmethod
    def load(cls, folder: Path, device: torch.device, threshold: float) -> SafetyChecker:
        """The classifier in ``folder``, in fp32 on ``device`` (an 86 M-parameter ViT: precision is not worth
        trading for its few hundred MB)."""
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no safety checker in {folder} (run `vace weights download --models safety-checker`)"
            )
        model = AutoModelForImageClassification.from_pretrained(folder, dtype=torch.float32).eval().to(device)
        return cls(model, AutoImageProcessor.from_pretrained(folder), threshold, device)

    @torch.inference_mode()
    def scores(self, images: Sequence[Picture]) -> list[float]:
        """The unsafe probability of each image; transparent images are judged flattened onto white."""
        out: list[float] = []
        for start in range(0, len(images), BATCH_SIZE):
            batch = [
                flatten_alpha(img if isinstance(img, Image.Image) else Image.fromarray(img), "white")
                for img in images[start : start + BATCH_SIZE]
            ]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            probs = self.model(pixel_values=pixels).logits.float().softmax(-1)
            out += probs[:, self.unsafe_ids].sum(-1).tolist()
        return out

    def check_inputs(
        self,
        video: Sequence[np.ndarray],
        first_frame: Image.Image | None,
        last_frame: Image.Image | None,
        reference_images: Sequence[Image.Image] | None,
    ) -> float:
        """Check sampled frames of the input video and every image; raises for the first flagged field, else
        returns the highest score (for the job log)."""
        groups: list[tuple[Loc, str, Sequence[Picture]]] = [(("video_url",), "the input video", sample_frames(video))]
        if first_frame is not None:
            groups.append((("first_frame_url",), "the first frame image", [first_frame]))
        if last_frame is not None:
            groups.append((("last_frame_url",), "the last frame image", [last_frame]))
        for i, image in enumerate(reference_images or []):
            groups.append((("ref_image_urls", i), f"reference image {i}", [image]))
        return self._check(groups)

    def check_output(self, frames: Sequence[np.ndarray]) -> float:
        """Check sampled generated frames. A flagged output is no one field's fault, so its error has fal's
        location for general errors, ``["body"]``."""
        return self._check([((), "the generated video", sample_frames(frames))])

    def _check(self, groups: Sequence[tuple[Loc, str, Sequence[Picture]]]) -> float:
        scores = iter(self.scores([image for _, _, images in groups for image in images]))
        highest = 0.0
        for loc, what, images in groups:
            worst = max((next(scores) for _ in images), default=0.0)
            if worst > self.threshold:
                raise InputError(
                    loc,
                    f"{what} was flagged as unsafe content by the safety checker "
                    f"(score {worst:.2f} > threshold {self.threshold:g})",
                    CONTENT_POLICY_VIOLATION,
                )
            highest = max(highest, worst)
        return highest
