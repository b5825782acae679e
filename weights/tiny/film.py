"""FILM's film_net as an eager PyTorch module, to write random-weight FILM files in the real format.

The real file (``film_net_fp32.pt``) is TorchScript from the dajes/frame-interpolation-pytorch port and carries its
own code, so serving never needs this module. ``FILMNet`` is our own implementation of the same network with the
same parameter names and call (``forward(img0, img1, dt)``); it scripts with ``torch.jit.script``, which is how
``build_tiny_film`` writes tiny weights that ``pipelines.interpolation.film.load_film`` reads like the real file,
and how the GPU benchmark runs the real-size network without the real file.

The network, and why it is built like this:

* Image pyramid: 7 levels, each an average-pooled half of the one above, so frames are padded to multiples of 64.
* Cascaded features: the same 4-level conv tower runs from every pyramid level, and level ``i`` concatenates tower
  stage ``j`` started at level ``i - j``. Level 3 and every coarser one have the same channels and meaning, so one
  flow predictor is shared by all of them (it learns from fine examples too); levels 0-2 have their own.
* Flow: coarse to fine, each level upsamples the flow, warps the other image's features with it and predicts a
  residual. Both directions are predicted (in one batch here).
* Fusion: the 5 finest levels of both images (pixels and features) are warped to time ``dt`` (flows scaled by
  ``dt`` and ``1 - dt``) and a U-Net-style decoder (nearest upsample, 2x2 conv, two 3x3 convs per level) blends them.

``layout`` picks which of the port's published file layouts the network imitates (see
``pipelines/interpolation/film.py``): how ``forward`` reads ``dt`` (v1.0.2, the default and current release: (B, 1)
per item; v1.0.1: ``batch_dt[:, 0]``, which broadcasts against the width; v1.0.0: ignored, always 0.5) and, for
v1.0.0, the bare parameter names of its un-activated convolutions. So the tests run the same loading and calling
path as each real file takes, on files we build ourselves.

No ``from __future__ import annotations`` here: TorchScript reads the annotations as written.
"""

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipelines.interpolation.film import (
    CURRENT_LAYOUT,
    FLOW_CONVS,
    FUSION_LEVELS,
    PYRAMID_LEVELS,
    SPECIALIZED_LEVELS,
    SUB_LEVELS,
    FilmLayout,
)


def _feature_channels(level: int, filters: int) -> int:
    """Channels of cascaded feature level ``level``: tower stages 0..min(level, SUB_LEVELS - 1) side by side."""
    return sum(filters << j for j in range(min(level, SUB_LEVELS - 1) + 1))


def _aligned_channels(level: int, filters: int) -> int:
    """Fusion input at ``level``: both warped images and features plus both scaled flows."""
    return 2 * (3 + _feature_channels(level, filters)) + 2 * 2


class _Conv(nn.Sequential):
    """One convolution (stored as child ``0``, the port's naming) with LeakyReLU unless it outputs values.

    Odd kernels pad to keep the size; the 2x2 kernel of the decoder's resize-convolution pads one pixel right and
    bottom instead, as TF's 'same' padding does for even kernels.
    """

    def __init__(self, cin: int, cout: int, size: int, activate: bool = True) -> None:
        super().__init__(nn.Conv2d(cin, cout, size, padding=size // 2 if size % 2 else 0))
        self.even = size % 2 == 0
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.even:
            x = F.pad(x, (0, 1, 0, 1))
        x = self[0](x)
        return F.leaky_relu(x, 0.2) if self.activate else x


class _BareConv(nn.Conv2d):
    """An un-activated convolution stored bare, as v1.0.0 stores them: the maths of ``_Conv(..., activate=False)``."""

    def __init__(self, cin: int, cout: int, size: int) -> None:
        super().__init__(cin, cout, size, padding=size // 2 if size % 2 else 0)
        self.even = size % 2 == 0

    def forward(self, x: Tensor) -> Tensor:
        if self.even:
            x = F.pad(x, (0, 1, 0, 1))
        return self._conv_forward(x, self.weight, self.bias)


def _output_conv(cin: int, cout: int, size: int, layout: FilmLayout) -> nn.Module:
    """An un-activated convolution in ``layout``'s naming: child ``0`` of a container, or bare for v1.0.0."""
    return _BareConv(cin, cout, size) if layout == "v1.0.0" else _Conv(cin, cout, size, activate=False)


def _warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward warp: ``out(p) = image(p + flow(p))``, flow in pixels (x, y), bilinear, edges clamped."""
    h, w = flow.shape[2], flow.shape[3]
    ys = torch.linspace(-1.0 + 1.0 / h, 1.0 - 1.0 / h, h, device=flow.device)
    xs = torch.linspace(-1.0 + 1.0 / w, 1.0 - 1.0 / w, w, device=flow.device)
    base = torch.stack((xs.view(1, w).expand(h, w), ys.view(h, 1).expand(h, w)), -1)
    to_grid = torch.tensor([2.0 / w, 2.0 / h], device=flow.device)
    grid = base.unsqueeze(0) + flow.float().permute(0, 2, 3, 1) * to_grid
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=False)


class _Tower(nn.Module):
    """Conventional feature tower: stage ``j`` has ``filters << j`` channels and runs at half the previous size."""

    def __init__(self, filters: int) -> None:
        super().__init__()
        stages = []
        cin = 3
        for j in range(SUB_LEVELS):
            cout = filters << j
            stages.append(nn.Sequential(_Conv(cin, cout, 3), _Conv(cout, cout, 3)))
            cin = cout
        self.convs = nn.ModuleList(stages)

    def forward(self, image: Tensor, depth: int) -> list[Tensor]:
        out: list[Tensor] = []
        x = image
        for j, stage in enumerate(self.convs):  # TorchScript unrolls this loop and allows no `break`
            if j < depth:
                x = stage(x if j == 0 else F.avg_pool2d(x, 2, 2))
                out.append(x)
        return out


class _CascadedFeatures(nn.Module):
    def __init__(self, filters: int) -> None:
        super().__init__()
        self.extract_sublevels = _Tower(filters)
        self.sub_levels = SUB_LEVELS  # TorchScript reads no module globals

    def forward(self, pyramid: list[Tensor]) -> list[Tensor]:
        levels = len(pyramid)
        towers: list[list[Tensor]] = []
        for i, image in enumerate(pyramid):
            towers.append(self.extract_sublevels(image, min(levels - i, self.sub_levels)))
        out: list[Tensor] = []
        for i in range(levels):
            parts: list[Tensor] = []
            for j in range(min(i + 1, self.sub_levels)):
                parts.append(towers[i - j][j])
            out.append(torch.cat(parts, 1))
        return out


class _FlowHead(nn.Module):
    """Predicts a flow (residual) from two feature maps: 3x3 convs, then 1x1 to half width, then 1x1 to (x, y)."""

    def __init__(self, cin: int, width: int, layout: FilmLayout) -> None:
        super().__init__()
        convs: list[nn.Module] = [_Conv(cin if i == 0 else width, width, 3) for i in range(FLOW_CONVS)]
        convs += [_Conv(width, width // 2, 1), _output_conv(width // 2, 2, 1, layout)]
        self._convs = nn.ModuleList(convs)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        x = torch.cat((a, b), 1)
        for conv in self._convs:
            x = conv(x)
        return x


def _upsample_flow(flow: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(2 * flow, size=[like.shape[2], like.shape[3]], mode="bilinear", align_corners=False)


class _FlowPyramid(nn.Module):
    """Coarse-to-fine flow from ``a`` to ``b``: one head shared by the coarse levels, one per finer level."""

    def __init__(self, filters: int, widths: Sequence[int], layout: FilmLayout) -> None:
        super().__init__()
        heads = [_FlowHead(2 * _feature_channels(i, filters), width, layout) for i, width in enumerate(widths)]
        self._predictor = heads[-1]
        self._predictors = nn.ModuleList(heads[:-1][::-1])  # coarse to fine, as they run
        self.specialized = len(heads) - 1

    def forward(self, a: list[Tensor], b: list[Tensor]) -> list[Tensor]:
        """Accumulated flows, finest level first."""
        levels = len(a)
        flow = self._predictor(a[-1], b[-1])
        flows: list[Tensor] = [flow]
        for i in range(levels - 2, self.specialized - 1, -1):
            flow = _upsample_flow(flow, a[i])
            flow = flow + self._predictor(a[i], _warp(b[i], flow))
            flows.insert(0, flow)
        for k, head in enumerate(self._predictors):
            i = self.specialized - 1 - k
            flow = _upsample_flow(flow, a[i])
            flow = flow + head(a[i], _warp(b[i], flow))
            flows.insert(0, flow)
        return flows


class _Fusion(nn.Module):
    """U-Net-style decoder over the aligned pyramid, coarsest level first; widths double per level up to level 3."""

    def __init__(self, filters: int, layout: FilmLayout) -> None:
        super().__init__()
        levels = []
        cin = _aligned_channels(FUSION_LEVELS - 1, filters)
        for i in reversed(range(FUSION_LEVELS - 1)):
            width = filters << min(i, SPECIALIZED_LEVELS)
            levels.append(
                nn.ModuleList(
                    [
                        _output_conv(cin, width, 2, layout),
                        _Conv(_aligned_channels(i, filters) + width, width, 3),
                        _Conv(width, width, 3),
                    ]
                )
            )
            cin = width
        self.convs = nn.ModuleList(levels)
        self.output_conv = nn.Conv2d(filters, 3, 1)

    def forward(self, pyramid: list[Tensor]) -> Tensor:
        x = pyramid[-1]
        for k, level in enumerate(self.convs):
            skip = pyramid[len(pyramid) - 2 - k]
            x = F.interpolate(x, size=[skip.shape[2], skip.shape[3]], mode="nearest")
            # torch types a ModuleList's items as Module; each level here is a ModuleList of three convs
            x = level[0](x)  # type: ignore[index]
            x = level[2](level[1](torch.cat((skip, x), 1)))  # type: ignore[index]
        return self.output_conv(x)


class FILMNet(nn.Module):
    """FILM's film_net; ``forward(img0, img1, dt)`` as in the port's ``layout``. Defaults are the real widths
    (~34 M params) and the current layout."""

    def __init__(
        self,
        filters: int = 64,
        flow_filters: tuple[int, ...] = (32, 64, 128, 256),
        layout: FilmLayout = CURRENT_LAYOUT,
    ) -> None:
        super().__init__()
        if len(flow_filters) != SUB_LEVELS:
            raise ValueError(f"flow_filters needs {SUB_LEVELS} widths, got {len(flow_filters)}")
        self.extract = _CascadedFeatures(filters)
        self.predict_flow = _FlowPyramid(filters, flow_filters, layout)
        self.fuse = _Fusion(filters, layout)
        self.pyramid_levels, self.fusion_levels = PYRAMID_LEVELS, FUSION_LEVELS
        self.layout: str = layout

    def forward(self, x0: Tensor, x1: Tensor, batch_dt: Tensor) -> Tensor:
        """The frame at ``batch_dt`` between ``x0`` and ``x1`` (B, 3, H, W; H, W multiples of 64).

        ``batch_dt`` is (B, 1) per item in v1.0.2, read as ``batch_dt[:, 0]`` in v1.0.1 (so only a (1, 1) time
        serves a batch) and ignored in v1.0.0.
        """
        b = x0.shape[0]
        if self.layout == "v1.0.2":
            dt = batch_dt.unsqueeze(-1).unsqueeze(-1)
        elif self.layout == "v1.0.1":
            dt = batch_dt[:, 0]
        else:
            dt = torch.full_like(batch_dt, 0.5)[:, 0]
        image = torch.cat((x0, x1))  # both images through one pass of every stage
        images: list[Tensor] = [image]
        for _ in range(self.pyramid_levels - 1):
            image = F.avg_pool2d(image, 2, 2)
            images.append(image)
        features = self.extract(images)
        swapped: list[Tensor] = []
        for f in features:
            swapped.append(torch.cat((f[b:], f[:b])))
        flows = self.predict_flow(features, swapped)  # first half: flow 0->1, second half: flow 1->0
        aligned: list[Tensor] = []
        for i in range(self.fusion_levels):
            to0 = flows[i][b:] * dt  # where the frame at dt reads image 0
            to1 = flows[i][:b] * (1 - dt)  # and image 1
            warped = _warp(torch.cat((images[i], features[i]), 1), torch.cat((to0, to1)))
            aligned.append(torch.cat((warped[:b], warped[b:], to0, to1), 1))
        return self.fuse(aligned)


def build_tiny_film(
    path: Path,
    filters: int = 4,
    flow_filters: tuple[int, ...] = (4, 4, 8, 8),
    seed: int = 0,
    layout: FilmLayout = CURRENT_LAYOUT,
) -> Path:
    """Write a random-weight FILM TorchScript file with ``layout``'s interface and parameter names, reduced widths."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FILMNet(filters, flow_filters, layout).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is the real file's format
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        torch.jit.script(net).save(str(path))
    return path
