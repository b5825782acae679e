"""Depth control frames: MiDaS DPT-Hybrid the way VACE's depth annotator makes them, and Depth Anything V2.

VACE (``vace/annotators/depth.py``, ``DepthVideoAnnotator``) runs MiDaS ``dpt_hybrid`` one frame at a time: the
RGB frame is resized so its short side is min(short side, 1024), both sides rounded to multiples of 64 (area
interpolation), scaled to [-1, 1], run in float32, min-max normalised per frame to 0..255 (uint8, truncated),
repeated to three channels and resized back to the input size (area). Its ``depthv2`` annotator runs Depth
Anything V2 at a short side of at least 518 (multiple of 14, bicubic, ImageNet normalisation), interpolates the
prediction bilinearly back to the input size and normalises the same way.

We run the same steps with many frames per network call: resizing on the worker threads, the network and the
normalisation on the device, uint8 back to the host. The network is controlnet-aux's ``DPTDepthModel`` (the model
inside its ``MidasDetector``, loaded from ``dpt_hybrid-midas-501f0c75.pt``) and transformers'
``DepthAnythingForDepthEstimation``. A frame with no depth variation at all becomes black (VACE would divide by zero
there).

MiDaS runs its network one frame per call, so its output is VACE's bit for bit at every batch size: in a batched
call the matrix products sum in another order, and at batch 4 about 2e-4 of the pixels came out one grey level off
(measured on CPU at 256x144 and 832x480). Exactness costs little: batching gained ~1.3x at 256x144 on 2 CPU cores
and nothing measurable at 832x480, where one frame already fills the cores (``docs/BENCHMARKS.md``). The batch
still sets how many frames are read, resized (on the worker threads) and normalised together. Depth Anything V2,
which is not VACE's network size anyway (VACE's ``depthv2`` is ViT-L), stays batched through the network: one
grey level on a few pixels against one frame per call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .aux_modules import aux_module
from .base import Preprocessor, require_weights, vace_resize

MIDAS_MAX_SHORT_SIDE = 1024
DEPTH_ANYTHING_SIZE = 518  # lower bound of the short side
DEPTH_ANYTHING_MULTIPLE = 14  # the ViT patch size
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def normalize_depth(depth: torch.Tensor) -> torch.Tensor:
    """Per-frame min-max of (B, H, W) depth to uint8 0..255, as VACE does it (float32, truncating)."""
    shifted = depth - depth.flatten(1).amin(1)[:, None, None]
    peak = shifted.flatten(1).amax(1)[:, None, None]
    scaled = torch.where(peak > 0, shifted / peak, torch.zeros_like(shifted))
    return (scaled * 255.0).clamp(0, 255).to(torch.uint8)


def _three_channels(depth: np.ndarray) -> np.ndarray:
    return np.repeat(depth[..., None], 3, axis=2)


def _frame_size(frames: Sequence[np.ndarray]) -> tuple[int, int]:
    """(height, width) shared by the batch: its frames are stacked into one tensor (a video has one size anyway)."""
    height, width = frames[0].shape[:2]
    if any(frame.shape[:2] != (height, width) for frame in frames):
        raise ValueError("all frames of one stream must have the same size")
    return height, width


class DepthPreprocessor(Preprocessor):
    """A depth annotator: one torch network on one device, frames of a batch stacked into one input."""

    task = "depth"
    default_batch_size = 4

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        batch_size: int | None = None,
        workers: int | None = None,
    ) -> None:
        super().__init__(batch_size, workers)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()


class MidasPreprocessor(DepthPreprocessor):
    """MiDaS DPT-Hybrid, VACE's default depth annotator."""

    @classmethod
    def load(
        cls, checkpoint: Path, device: str | torch.device = "cpu", batch_size: int | None = None
    ) -> MidasPreprocessor:
        """From the ``dpt_hybrid`` checkpoint file."""
        return cls(load_midas(checkpoint), device, batch_size=batch_size)

    @torch.inference_mode()
    def process_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        height, width = _frame_size(frames)
        short_side = min(height, width, MIDAS_MAX_SHORT_SIDE)
        resized = self.map(lambda frame: vace_resize(frame, short_side), frames)
        # NCHW-contiguous: a channels-last view (what permuting HWC frames gives) sends the convolutions down a
        # different kernel, and VACE's 1xCxHxW view of one frame takes the NCHW one.
        pixels = torch.from_numpy(np.stack(resized)).to(self.device).permute(0, 3, 1, 2).contiguous()
        pixels = pixels.float() / 127.5 - 1.0
        depth = torch.cat([self.model(frame[None]) for frame in pixels])  # one frame per call: see the docstring
        maps = normalize_depth(depth).cpu().numpy()
        return self.map(lambda d: _three_channels(cv2.resize(d, (width, height), interpolation=cv2.INTER_AREA)), maps)


def load_midas(path: Path) -> torch.nn.Module:
    """controlnet-aux's DPT-Hybrid (``DPTDepthModel``, ViT-B/16 on a ResNet-50 stem) with the weights at ``path``.

    The module is built on the meta device and takes the checkpoint's tensors as they are: building it normally
    would first randomly initialise its 123 M parameters, seconds of work that the checkpoint overwrites. Keys and
    shapes are checked strictly, as controlnet-aux's own loader does.
    """
    state = torch.load(require_weights(path), map_location="cpu", weights_only=True)
    if "optimizer" in state:  # a training checkpoint, as controlnet-aux's loader also accepts
        state = state["model"]
    with torch.device("meta"):
        model = dpt_hybrid()
    model.load_state_dict(state, strict=True, assign=True)
    return model.float().eval()


def dpt_hybrid() -> torch.nn.Module:
    """controlnet-aux's DPT-Hybrid network, uninitialised weights on the current default device.

    controlnet-aux builds its ViT-B/16 backbone from timm under the old name ``vit_base_resnet50_384``, which timm
    still maps to the same network but warns about on every build; that one warning is silenced here.
    """
    dpt_depth = aux_module("midas.midas.dpt_depth")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mapping deprecated model name vit_base_resnet50_384", UserWarning)
        return dpt_depth.DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)


def depth_anything_size(height: int, width: int) -> tuple[int, int]:
    """Depth Anything V2's input (height, width): short side at least 518, keeping the aspect, multiples of 14."""
    scale = max(DEPTH_ANYTHING_SIZE / height, DEPTH_ANYTHING_SIZE / width)

    def fit(x: float) -> int:
        y = int(np.round(x / DEPTH_ANYTHING_MULTIPLE)) * DEPTH_ANYTHING_MULTIPLE
        return y if y >= DEPTH_ANYTHING_SIZE else int(np.ceil(x / DEPTH_ANYTHING_MULTIPLE)) * DEPTH_ANYTHING_MULTIPLE

    return fit(scale * height), fit(scale * width)


def _depth_anything_input(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """One frame as Depth Anything V2's float32 CHW input: [0, 1], bicubic resize, ImageNet normalisation."""
    image = cv2.resize(frame / 255.0, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(((image - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1), dtype=np.float32)


class DepthAnythingPreprocessor(DepthPreprocessor):
    """Depth Anything V2 (transformers), VACE's ``depthv2`` annotator.

    The network gets RGB, as it was trained; VACE's own wrapper swaps the channels of an already-RGB frame first.
    """

    @classmethod
    def load(
        cls, folder: Path, device: str | torch.device = "cpu", batch_size: int | None = None
    ) -> DepthAnythingPreprocessor:
        """From a transformers model folder (``config.json`` and the weights)."""
        from transformers import DepthAnythingForDepthEstimation

        require_weights(folder / "config.json")
        model = DepthAnythingForDepthEstimation.from_pretrained(folder, dtype=torch.float32)
        return cls(model, device, batch_size=batch_size)

    @torch.inference_mode()
    def process_batch(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        height, width = _frame_size(frames)
        net_h, net_w = depth_anything_size(height, width)
        inputs = self.map(lambda frame: _depth_anything_input(frame, net_h, net_w), frames)
        depth = self.model(pixel_values=torch.from_numpy(np.stack(inputs)).to(self.device)).predicted_depth
        depth = F.interpolate(depth[:, None], (height, width), mode="bilinear", align_corners=True)[:, 0]
        return [_three_channels(d) for d in normalize_depth(depth).cpu().numpy()]
