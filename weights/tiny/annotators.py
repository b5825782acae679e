"""Random-weight annotators in the real on-disk formats, for tests and demos without downloads.

Each file sits where the real one goes and is read by the same loader:

- ``yolox_l.onnx`` and ``dw-ll_ucoco_384.onnx``: small torch modules exported to ONNX with the real graphs' input
  and output names and shapes (``images`` 1x3x640x640 -> ``output`` 1x8400x85, as YOLOX exports it; ``input``
  Nx3x384x288 -> ``simcc_x`` Nx133x576 and ``simcc_y`` Nx133x768, batch dynamic, as mmdeploy exports RTMPose).
- ``dpt_hybrid-midas-501f0c75.pt`` and ``body_pose_model.pth``: controlnet-aux loads these strictly into the full
  DPT-Hybrid (123 M parameters) and OpenPose body (52 M) networks, so they have every real key and shape. Written
  independently they would be 490 MB and 200 MB; instead every large tensor is a view into one shared random
  buffer, which ``torch.save`` stores once (about 26 MB and 11 MB). Norm weights are 1, biases 0, and the
  depth head's last bias is 1 so that the ReLU-ended head gives a depth map that is not all zeros.
- ``depth_anything_v2/``: ``DepthAnythingForDepthEstimation.save_pretrained`` of a four-layer, 32-wide config.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipelines.manifest import (
    DEPTH_ANYTHING,
    DWPOSE,
    DWPOSE_DETECTOR_FILE,
    DWPOSE_ESTIMATOR_FILE,
    MIDAS,
    MIDAS_FILE,
    OPENPOSE,
    OPENPOSE_FILE,
)
from preprocessors.aux_modules import aux_module
from preprocessors.depth import dpt_hybrid
from preprocessors.pose import DET_SIZE, DET_STRIDES, NUM_WHOLEBODY, POSE_HEIGHT, POSE_WIDTH, SIMCC_SPLIT_RATIO

SHARED_ABOVE = 65536  # tensors with more elements than this are views into the shared buffer
INIT_STD = 0.02


class TinyYolox(nn.Module):
    """YOLOX's exported contract with three small conv stages: raw 0..255 BGR pixels in, per anchor (stride 8,
    16, 32, row-major) the box regression (dx, dy, log w, log h) then sigmoid objectness and 80 class scores.

    Group norms keep the random scores varied; every anchor predicts a 320-pixel box, so NMS leaves a few people
    on most images (and none on flat ones, which takes VACE's whole-image fallback).
    """

    def __init__(self, width: int = 8, classes: int = 80) -> None:
        super().__init__()

        def stage(channels: int, stride: int) -> nn.Sequential:
            conv = nn.Conv2d(channels, width, 3, stride=stride, padding=1)
            return nn.Sequential(conv, nn.GroupNorm(1, width), nn.SiLU())

        self.stem = nn.Sequential(stage(3, 4), stage(width, 2))
        self.downs = nn.ModuleList(stage(width, 2) for _ in DET_STRIDES[1:])
        heads = [nn.Conv2d(width, 5 + classes, 1) for _ in DET_STRIDES]
        for head, stride in zip(heads, DET_STRIDES, strict=True):
            weight = torch.randn_like(head.weight) * 0.5
            weight[:4] = 0.0  # every box the same size, centred on its anchor
            bias = torch.zeros(5 + classes)
            bias[2:4] = math.log(320 / stride)
            bias[4:6] = -1.5  # objectness and person around sigmoid(-1.5) = 0.18, so only some anchors pass 0.3
            head.weight, head.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.heads = nn.ModuleList(heads)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = [self.stem(images / 255.0)]
        for down in self.downs:
            features.append(down(features[-1]))
        per_stride = [head(f).flatten(2) for head, f in zip(self.heads, features, strict=True)]  # (1, 85, cells)
        raw = torch.cat(per_stride, dim=2).permute(0, 2, 1)
        return torch.cat([raw[..., :4], raw[..., 4:].sigmoid()], dim=-1)


class TinyRtmPose(nn.Module):
    """RTMPose's exported contract: normalised 288x384 crops in, SimCC logits out, one row per whole-body keypoint
    over 2 bins per pixel of the crop's width (simcc_x) and height (simcc_y)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=4, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, width, 3, stride=4, padding=1),
            nn.SiLU(),
            nn.Conv2d(width, NUM_WHOLEBODY, 3, stride=2, padding=1),
        )
        self.cells = (POSE_HEIGHT // 32) * (POSE_WIDTH // 32)
        self.to_x = nn.Linear(self.cells, int(POSE_WIDTH * SIMCC_SPLIT_RATIO))
        self.to_y = nn.Linear(self.cells, int(POSE_HEIGHT * SIMCC_SPLIT_RATIO))
        for linear in (self.to_x, self.to_y):  # maxima around the 0.3 visibility threshold: about half are drawn
            nn.init.normal_(linear.weight, std=0.1)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # An explicit keypoint count (not flatten) keeps the exported output shapes (batch, 133, bins).
        per_keypoint = self.features(crops).reshape(-1, NUM_WHOLEBODY, self.cells)
        return self.to_x(per_keypoint), self.to_y(per_keypoint)


def _export(module: nn.Module, example: torch.Tensor, path: Path, inputs: list[str], outputs: list[str],
            dynamic_batch: bool) -> None:  # fmt: skip
    """Export with the TorchScript-based exporter: it needs only the ``onnx`` package and takes well under a second
    (the torch.export-based one needs onnxscript and takes several)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in inputs + outputs} if dynamic_batch else None
    with warnings.catch_warnings():
        # the TorchScript exporter is deprecated, not gone
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        torch.onnx.export(
            module.eval(), (example,), str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
            opset_version=17, dynamo=False,
        )  # fmt: skip


def shared_random_state(
    shapes: dict[str, torch.Size], generator: torch.Generator, overrides: dict[str, float] | None = None
) -> dict[str, torch.Tensor]:
    """A state dict with every key and shape of ``shapes`` whose large tensors share one random buffer.

    Each large tensor starts at its own random offset, so no two layers are equal. Small tensors are standalone:
    norm weights 1, biases 0, the rest normal(0, 0.02); ``overrides`` sets whole small tensors to a constant.
    """
    overrides = overrides or {}
    largest = max(shape.numel() for shape in shapes.values())
    buffer = torch.randn(largest + SHARED_ABOVE, generator=generator) * INIT_STD
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        count = shape.numel()
        module, _, kind = key.rpartition(".")
        if key in overrides:
            state[key] = torch.full(shape, overrides[key])
        elif count > SHARED_ABOVE:
            start = int(torch.randint(0, buffer.numel() - count + 1, (1,), generator=generator))
            state[key] = buffer[start : start + count].view(shape)
        elif kind == "bias":
            state[key] = torch.zeros(shape)
        elif "norm" in module.rpartition(".")[2] and kind == "weight":
            state[key] = torch.ones(shape)
        else:
            state[key] = torch.randn(shape, generator=generator) * INIT_STD
    return state


def _meta_shapes(build: Callable[[], nn.Module]) -> dict[str, torch.Size]:
    """Parameter names and shapes of a network without allocating (or initialising) it."""
    with torch.device("meta"):
        return {key: value.shape for key, value in build().state_dict().items()}


def build_tiny_annotators(weights_dir: Path, seed: int = 0) -> Path:
    """Write random-weight DWPose, OpenPose, MiDaS DPT-Hybrid and Depth Anything V2 under ``weights_dir``."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    weights_dir = Path(weights_dir)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    detector = DWPOSE.path(weights_dir, DWPOSE_DETECTOR_FILE)
    estimator = DWPOSE.path(weights_dir, DWPOSE_ESTIMATOR_FILE)
    _export(TinyYolox(), torch.zeros(1, 3, DET_SIZE, DET_SIZE), detector, ["images"], ["output"], False)
    _export(TinyRtmPose(), torch.zeros(1, 3, POSE_HEIGHT, POSE_WIDTH), estimator, ["input"],
            ["simcc_x", "simcc_y"], True)  # fmt: skip

    midas = MIDAS.path(weights_dir, MIDAS_FILE)
    midas.parent.mkdir(parents=True, exist_ok=True)
    shapes = _meta_shapes(dpt_hybrid)
    torch.save(shared_random_state(shapes, generator, {"scratch.output_conv.4.bias": 1.0}), midas)

    # controlnet-aux's OpenPose checkpoint keys drop the network's first name component ("model0.conv1_1.weight"
    # is stored as "conv1_1.weight").
    openpose = OPENPOSE.path(weights_dir, OPENPOSE_FILE)
    openpose.parent.mkdir(parents=True, exist_ok=True)
    bodypose_model = aux_module("open_pose.model").bodypose_model
    shapes = {key.split(".", 1)[1]: shape for key, shape in _meta_shapes(bodypose_model).items()}
    torch.save(shared_random_state(shapes, generator), openpose)

    config = DepthAnythingConfig(
        backbone_config=Dinov2Config(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=518, patch_size=14,
            out_indices=[1, 2, 3, 4], reshape_hidden_states=False,
        ),
        reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16, head_hidden_size=8,
    )  # fmt: skip
    depth_anything = DepthAnythingForDepthEstimation(config).eval()
    nn.init.constant_(depth_anything.head.conv3.bias, 1.0)
    depth_anything.save_pretrained(DEPTH_ANYTHING.path(weights_dir))
    return weights_dir
