"""RIFE frame interpolation: our implementation of Practical-RIFE's IFNet v4.x (hzwer, MIT).

Practical-RIFE ships each release as a ``flownet.pkl``: a ``torch.save``d state dict of the DDP-wrapped training
model, so every key starts with ``module.``. The network here has the same modules under the same names, so such a
file loads with ``strict=True`` once the prefix is stripped; the checkpoint, not a version flag, says which 4.x layout
it is (the widths are read from the tensor shapes). 4.25/4.26 is the default layout; the 4.21-4.24 layouts (a wider
head and four blocks, with or without features carried between blocks) load through the same code.

How IFNet works, and why the code is shaped like this:

* A small head turns each input image into a few feature channels at full resolution.
* Blocks run coarse to fine (scales 16, 8, 4, 2, 1 for five blocks). Each block sees both images (warped by the flow
  so far), their warped features, the time ``t``, the previous blend mask and flow, at ``1/scale`` resolution;
  downsamples 4x more, runs eight residual convolutions and upsamples back. It adds a flow correction (two flows:
  target->image0 and target->image1, in pixels), replaces the mask logit, and (4.21+) hands 8 feature channels on.
* The output is ``sigmoid(mask) * warp(img0) + (1 - sigmoid(mask)) * warp(img1)``: a per-pixel convex blend, so it
  stays inside the inputs' range. With zero flow and a zero mask it is exactly the 50/50 blend, which the tests use
  to check the wiring without real weights.

Sizes must divide exactly through the coarsest block (1/16 and a further 1/4 for 4.26), so frames are padded to
``IFNetConfig.pad_multiple`` (64 for 4.26) and cropped back by the caller. Warps sample with a float32 grid even when
the network runs in fp16: near the frame edges an fp16 grid moves in steps of about 0.4 px at 832 px wide.

The training-only submodules a release file may still carry (``teacher.*``, ``caltime.*``: 4.26's file has them)
are dropped before the strict load; any other missing or unexpected key rejects the file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

STATE_PREFIX = "module."  # DDP's wrapper name, on every key of a release file
_TRAINING_ONLY = ("teacher.", "caltime.")
_RESIDUAL_CONVS = 8
_CARRIED = 8  # feature channels a 4.21+ block hands to the next one
_SLOPE = 0.2


@dataclass(frozen=True)
class IFNetConfig:
    """Widths of one IFNet v4.x layout; the default is 4.25/4.26 (5.7 M parameters)."""

    head_width: int = 16
    feature_channels: int = 4
    block_widths: tuple[int, ...] = (192, 128, 96, 64, 32)
    carries_features: bool = True

    @property
    def scales(self) -> tuple[int, ...]:
        """Downscale of each block, coarse to fine (16, 8, 4, 2, 1 for five blocks)."""
        return tuple(2**i for i in reversed(range(len(self.block_widths))))

    @property
    def pad_multiple(self) -> int:
        """Frame sizes must be multiples of this: the coarsest block works at 1/scale and halves twice more."""
        return 4 * self.scales[0]

    @property
    def block_outputs(self) -> int:
        """Channels a block predicts: 4 flow + 1 mask, plus the carried features (4.21+) or one unused channel."""
        return 5 + _CARRIED if self.carries_features else 6

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor]) -> IFNetConfig:
        """Read the layout from a (prefix-free) state dict; KeyError names the first key a v4.x file must have."""
        head = state["encode.cnn0.weight"].shape[0]
        features = state["encode.cnn3.weight"].shape[1]  # ConvTranspose2d weights are (in, out, kh, kw)
        widths: list[int] = []
        while f"block{len(widths)}.conv0.1.0.weight" in state:
            widths.append(state[f"block{len(widths)}.conv0.1.0.weight"].shape[0])
        outputs = state["block0.lastconv.0.weight"].shape[1] // 4  # PixelShuffle(2) folds 4 channels into 1
        return cls(head, features, tuple(widths), carries_features=outputs == 5 + _CARRIED)


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(_SLOPE, inplace=True))


class _Head(nn.Module):
    """Per-image features at full resolution (stride-2 conv, two convs, 2x transposed conv)."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, width, 3, 2, 1)
        self.cnn1 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn2 = nn.Conv2d(width, width, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(width, out, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.cnn0, self.cnn1, self.cnn2):
            x = F.leaky_relu(conv(x), _SLOPE)
        return self.cnn3(x)


class _ResConv(nn.Module):
    """``leaky_relu(x + beta * conv(x))`` with a learned per-channel ``beta``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones(1, width, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(torch.addcmul(x, self.conv(x), self.beta), _SLOPE)


class _Block(nn.Module):
    """One coarse-to-fine step: predicts flow, mask logit and features for the whole frame at ``1/scale``."""

    def __init__(self, cin: int, width: int, outputs: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(cin, width // 2, 2), _conv(width // 2, width, 2))
        self.convblock = nn.Sequential(*(_ResConv(width) for _ in range(_RESIDUAL_CONVS)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(width, 4 * outputs, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: Tensor, flow: Tensor | None, scale: int) -> Tensor:
        """``x`` and ``flow`` at full resolution; returns the predictions at full resolution, flow in pixels."""
        if scale != 1:
            x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            if scale != 1:
                flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) / scale
            x = torch.cat((x, flow), 1)
        out = self.lastconv(self.convblock(self.conv0(x)))
        if scale != 1:
            out = F.interpolate(out, scale_factor=float(scale), mode="bilinear", align_corners=False)
            out = torch.cat((out[:, :4] * scale, out[:, 4:]), 1)
        return out


def _pixel_grid(h: int, w: int, device: torch.device) -> Tensor:
    """(1, H, W, 2) float32 sampling grid of the pixel centres, x then y, corners at -1 and 1."""
    ys, xs = torch.meshgrid(
        torch.linspace(-1.0, 1.0, h, device=device), torch.linspace(-1.0, 1.0, w, device=device), indexing="ij"
    )
    return torch.stack((xs, ys), -1).unsqueeze(0)


def _warp(x: Tensor, flow: Tensor, grid: Tensor) -> Tensor:
    """Backward warp: ``out(p) = x(p + flow(p))``, flow in pixels (x, y), bilinear, edges clamped."""
    h, w = flow.shape[2:]
    to_grid = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], device=flow.device)
    coords = grid + flow.float().permute(0, 2, 3, 1) * to_grid
    out = F.grid_sample(x.float(), coords, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(x.dtype)


class IFNet(nn.Module):
    """Practical-RIFE's IFNet v4.x; parameter names match ``flownet.pkl`` without its ``module.`` prefix."""

    def __init__(self, config: IFNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or IFNetConfig()
        feats, carried = config.feature_channels, _CARRIED if config.carries_features else 0
        first_in = 3 + 3 + 2 * feats + 1  # both images, both features, t
        later_in = 3 + 3 + 2 * feats + 1 + 1 + carried + 4  # warped images and features, t, mask, carried, flow
        for i, width in enumerate(config.block_widths):
            self.add_module(f"block{i}", _Block(first_in if i == 0 else later_in, width, config.block_outputs))
        self.encode = _Head(config.head_width, feats)

    def forward(self, img0: Tensor, img1: Tensor, timestep: Tensor) -> Tensor:
        """Frames at ``timestep`` (B,) between ``img0`` and ``img1`` (B, 3, H, W in [0, 1]).

        H and W must be multiples of ``config.pad_multiple``.
        """
        b, _, h, w = img0.shape
        t = timestep.to(img0.dtype).view(b, 1, 1, 1).expand(b, 1, h, w)
        features = self.encode(torch.cat((img0, img1)))
        f0, f1 = features[:b], features[b:]
        src0, src1 = torch.cat((img0, f0), 1), torch.cat((img1, f1), 1)  # warped together: one grid per flow
        grid = _pixel_grid(h, w, img0.device)
        blocks: list[_Block] = [getattr(self, f"block{i}") for i in range(len(self.config.scales))]
        out = blocks[0](torch.cat((img0, img1, f0, f1, t), 1), None, self.config.scales[0])  # the first sees no flow
        flow = out[:, :4]
        for block, scale in zip(blocks[1:], self.config.scales[1:], strict=True):
            warped0, warped1 = _warp(src0, flow[:, :2], grid), _warp(src1, flow[:, 2:4], grid)
            parts = [warped0[:, :3], warped1[:, :3], warped0[:, 3:], warped1[:, 3:], t, out[:, 4:5]]  # ..., mask
            if self.config.carries_features:
                parts.append(out[:, 5:])
            out = block(torch.cat(parts, 1), flow, scale)
            flow = flow + out[:, :4]
        warped0, warped1 = _warp(src0, flow[:, :2], grid), _warp(src1, flow[:, 2:4], grid)
        alpha = torch.sigmoid(out[:, 4:5])
        return warped0[:, :3] * alpha + warped1[:, :3] * (1 - alpha)


def _short(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:5])
    return f"{shown}{', ...' if len(keys) > 5 else ''} ({len(keys)} in all)"


def load_rife(path: Path) -> IFNet:
    """Build the IFNet a Practical-RIFE ``flownet.pkl`` describes and load it strictly (fp32, on CPU, eval).

    Raises ValueError naming the file when it is not a readable state dict of an IFNet v4.x.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or non-zip files
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ValueError(
            f"{path}: expected a state dict of tensors (Practical-RIFE flownet.pkl), got {type(raw).__name__}"
        )
    state = {k.removeprefix(STATE_PREFIX): v for k, v in raw.items()}
    dropped = [k for k in state if k.startswith(_TRAINING_ONLY)]
    for k in dropped:
        del state[k]
    if dropped:
        log.debug("%s: ignoring %d training-only tensors (teacher/caltime)", path, len(dropped))
    try:
        net = IFNet(IFNetConfig.from_state_dict(state))
    except (KeyError, IndexError) as e:
        raise ValueError(f"{path}: not a Practical-RIFE IFNet v4.x checkpoint: missing key {e}") from e
    expected = net.state_dict().keys()
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing keys {_short(missing)}"] if missing else []) + (
            [f"unexpected keys {_short(unexpected)}"] if unexpected else []
        )
        raise ValueError(f"{path}: not a Practical-RIFE IFNet v4.x checkpoint: {'; '.join(parts)}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shapes that disagree with the layout read from the file
        raise ValueError(f"{path}: inconsistent IFNet v4.x checkpoint: {e}") from e
    return net.eval()


@torch.inference_mode()
def rife_frames_between(net: IFNet, img0: Tensor, img1: Tensor, n: int, max_batch: int) -> Tensor:
    """``n`` frames at t = 1/(n+1) .. n/(n+1) between each pair: (B, 3, H, W) x2 -> (B, n, 3, H, W).

    RIFE 4.x takes any ``t`` directly, so every (pair, t) is one independent item; items run ``max_batch`` at a time.
    """
    b = img0.shape[0]
    times = torch.arange(1, n + 1, device=img0.device, dtype=torch.float32) / (n + 1)
    pair = torch.arange(b, device=img0.device).repeat_interleave(n)
    t = times.repeat(b)
    out = []
    for s in range(0, b * n, max_batch):
        idx = pair[s : s + max_batch]
        out.append(net(img0[idx], img1[idx], t[s : s + max_batch]))
    return torch.cat(out).view(b, n, *img0.shape[1:])
