"""One mask followed through a clip: SAM2 video propagation through transformers (``Sam2VideoModel``).

VACE's ``masktrack`` inpainting mode gives SAM2's video predictor the first frame's mask and keeps what it
propagates to every later frame; fal's inpainting endpoints describe ``mask_image_url`` the same way ("salient mask
tracking"). We run SAM2.1 as transformers ships it, following its documented recipe (``Sam2VideoProcessor``'s
``init_video_session``, ``add_inputs_to_inference_session`` with the mask on frame 0, the model run frame by frame
as ``propagate_in_video_iterator`` runs it, ``post_process_masks``), with two changes that only bound memory:

* **The pixels arrive a chunk at a time.** ``init_video_session(video=...)`` turns every frame into a 1024x1024
  float tensor up front (12 MB a frame: 3 GB for 241 frames). Our session (``_PlannedSession``) is told how many
  frames there are, which is all the model asks of a whole-video session (it caps the object pointers it attends to
  at ``min(frames, 16)``: a streamed session, which does not know the count, differs there on clips under 16
  frames), and is handed ``CHUNK_FRAMES`` frames' pixels at a time; each is dropped once the model has run on it.
* **What the model no longer reads is forgotten.** After frame ``i`` the model reads back the memories of the
  previous ``num_maskmem - 1`` frames and the object pointers of the previous ``max_object_pointers_in_encoder -
  1``, plus the prompted frame's, so older per-frame outputs (about 6 MB each at 1024, mostly a full-resolution
  mask logit the memory encoder has already consumed) are deleted as tracking moves on.

Neither changes a number: ``tests/test_mask_tracking.py`` runs transformers' recipe by hand on the same frames and
random weights and compares. The prompted frame's own mask is the one given (SAM2 would return it resampled through
its 256x256 low-resolution grid); the others are SAM2's logits at the frame size, above the logit of ``threshold``.

This module knows SAM2 and frames, not the weights directory: ``pipelines.tracking`` hands it a folder.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import Sam2VideoModel, Sam2VideoProcessor
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

from .base import require_weights
from .frames import check_frame

CHUNK_FRAMES = 8  # frames whose pixels (12 MB each at SAM2's 1024x1024) are prepared together
OBJECT_ID = 1  # the one object tracked


class _PlannedSession(Sam2VideoInferenceSession):
    """A whole-video session whose frames' pixels are handed in (and dropped) a chunk at a time: it reports the
    clip's length, as ``init_video_session(video=...)``'s session does, while holding only the frames in hand."""

    def __init__(self, total: int, height: int, width: int, device: torch.device) -> None:
        super().__init__(
            video_height=height,
            video_width=width,
            inference_device=device,
            inference_state_device=device,
            video_storage_device=device,
            dtype=torch.float32,
        )
        self.pixels: dict[int, torch.Tensor] = {}  # the frames in hand: the model reads them as processed_frames
        self.processed_frames = self.pixels
        self.total = total

    @property
    def num_frames(self) -> int:
        return self.total


class Sam2Tracker:
    """SAM2.1 video propagation of one first-frame mask, loaded once and run per clip."""

    def __init__(
        self, model: Sam2VideoModel, processor: Sam2VideoProcessor, device: torch.device, *, offload: bool = False
    ) -> None:
        """``offload``: keep the model in host memory between clips and on ``device`` only while it tracks (the
        server's offload memory modes, where the video model needs the device's memory)."""
        self.model = model.eval()
        self.processor = processor
        self.device = device
        self.offload = offload
        self.model.to("cpu" if offload else device)
        config = model.config
        # How far back the model reads per-frame outputs: its memory frames and its object pointers.
        self.history = max(config.num_maskmem - 1, config.max_object_pointers_in_encoder - 1)

    @classmethod
    def load(cls, folder: Path, device: torch.device | str = "cpu", *, offload: bool = False) -> Sam2Tracker:
        """The model and processor saved in ``folder`` (transformers' format, as the hub's facebook/sam2.1-hiera-*
        repos hold them), in float32: SAM2's masks are cheap next to a video model, and exact."""
        require_weights(Path(folder) / "config.json")
        model = Sam2VideoModel.from_pretrained(folder, dtype=torch.float32)
        return cls(model, Sam2VideoProcessor.from_pretrained(folder), torch.device(device), offload=offload)

    @contextmanager
    def _on_device(self) -> Iterator[None]:
        if not self.offload:
            yield
            return
        self.model.to(self.device)
        try:
            yield
        finally:
            self.model.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def track(
        self, frames: Sequence[np.ndarray], first_mask: np.ndarray, threshold: float = 0.5
    ) -> Iterator[np.ndarray]:
        """Boolean masks of the object ``first_mask`` marks on ``frames[0]`` (True = the object), one per frame at
        the frames' size, in order: ``first_mask`` itself, then SAM2's where its probability exceeds ``threshold``."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1 (exclusive), got {threshold}")
        logit = math.log(threshold / (1.0 - threshold))
        for index, logits in enumerate(self.logits(frames, first_mask)):
            yield first_mask.copy() if index == 0 else (logits > logit).cpu().numpy()

    def logits(self, frames: Sequence[np.ndarray], first_mask: np.ndarray) -> Iterator[torch.Tensor]:
        """SAM2's mask logits (float, the frames' height x width) for every frame, the prompted first frame's
        included, with ``first_mask`` (boolean, True = the object) as the input on the first frame. Pixels are
        prepared ``CHUNK_FRAMES`` at a time, so a long clip never has all of them in memory."""
        height, width = check_frame(frames[0])
        if first_mask.shape != (height, width) or first_mask.dtype != np.bool_:
            raise ValueError(
                f"the first mask must be a {width}x{height} boolean array, got {first_mask.dtype} {first_mask.shape}"
            )
        with self._on_device():
            session = _PlannedSession(len(frames), height, width, self.device)
            self.processor.add_inputs_to_inference_session(
                session, frame_idx=0, obj_ids=OBJECT_ID, input_masks=first_mask
            )
            for start in range(0, len(frames), CHUNK_FRAMES):
                chunk = list(frames[start : start + CHUNK_FRAMES])
                for frame in chunk:
                    check_frame(frame, (height, width))
                pixels = self.processor.video_processor(videos=chunk, device=self.device, return_tensors="pt")
                for offset, frame_pixels in enumerate(pixels.pixel_values_videos[0]):
                    session.pixels[start + offset] = frame_pixels.to(self.device, torch.float32)
                for index in range(start, start + len(chunk)):
                    out = self.model(inference_session=session, frame_idx=index)
                    self._forget(session, index)
                    yield self.processor.post_process_masks(
                        [out.pred_masks], original_sizes=[[height, width]], binarize=False
                    )[0][0, 0]

    def _forget(self, session: _PlannedSession, index: int) -> None:
        """Drop frame ``index``'s pixels and what no later frame reads: its full-resolution mask logits (the
        memory encoder has consumed them) and the outputs of frames that fell out of the model's history."""
        session.pixels.pop(index, None)
        for outputs in session.output_dict_per_obj.values():
            tracked = outputs["non_cond_frame_outputs"]
            if index in tracked:
                tracked[index].pop("high_res_masks", None)
            tracked.pop(index - self.history, None)
