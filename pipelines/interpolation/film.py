"""FILM frame interpolation (Google, "FILM: Frame Interpolation for Large Motion", ECCV 2022; Apache-2.0).

Real weights are the widely distributed PyTorch port's TorchScript file ``film_net_fp32.pt`` (the "Style" network
converted from Google's TF SavedModel). It carries its own code, so it is loaded with ``torch.jit.load`` and called
as ``model(img0, img1, dt)``: images (B, 3, H, W) RGB in [0, 1], ``dt`` the time in (0, 1); it returns the frame at
``dt`` (not clamped). ``FILMNet`` below is our own implementation of the same network with the same parameter names
and call; it scripts with ``torch.jit.script``, which is how tiny random weights are written in the real format and
how the benchmark runs the real-size network without the real file.

The network, and why it is built like this:

* Image pyramid: 7 levels, each an average-pooled half of the one above, so frames are padded to multiples of 64.
* Cascaded features: the same 4-level conv tower runs from every pyramid level, and level ``i`` concatenates tower
  stage ``j`` started at level ``i - j``. Level 3 and every coarser one have the same channels and meaning, so one
  flow predictor is shared by all of them (it learns from fine examples too); levels 0-2 have their own.
* Flow: coarse to fine, each level upsamples the flow, warps the other image's features with it and predicts a
  residual. Both directions are predicted (in one batch here).
* Fusion: the 5 finest levels of both images (pixels and features) are warped to time ``dt`` (flows scaled by
  ``dt`` and ``1 - dt``) and a U-Net-style decoder (nearest upsample, 2x2 conv, two 3x3 convs per level) blends them.

FILM was trained at ``dt = 0.5``; more in-between frames come from recursive midpoints (``film_frames_between``), the
scheme the port's own tools use. The port multiplies (B, 2, H, W) flows by ``dt`` as given, so a (B, 1) ``dt`` only
broadcasts for B = 1; passing (B, 1, 1, 1), as ``film_frames_between`` does, is right for every B, in the port and
here. FILM runs in fp32: the port's warp builds its sampling grid in the input dtype, and an fp16 grid moves in
steps of about 0.4 px near the edges of an 832 px frame.
"""

import bisect
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..manifest import FILM_FILE

PYRAMID_LEVELS = 7
FUSION_LEVELS = 5
SUB_LEVELS = 4
SPECIALIZED_LEVELS = 3
FLOW_CONVS = 3
PAD_MULTIPLE = 2 ** (PYRAMID_LEVELS - 1)


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

    def forward(self, image: Tensor, depth: int) -> List[Tensor]:
        out: List[Tensor] = []
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

    def forward(self, pyramid: List[Tensor]) -> List[Tensor]:
        levels = len(pyramid)
        towers: List[List[Tensor]] = []
        for i, image in enumerate(pyramid):
            towers.append(self.extract_sublevels(image, min(levels - i, self.sub_levels)))
        out: List[Tensor] = []
        for i in range(levels):
            parts: List[Tensor] = []
            for j in range(min(i + 1, self.sub_levels)):
                parts.append(towers[i - j][j])
            out.append(torch.cat(parts, 1))
        return out


class _FlowHead(nn.Module):
    """Predicts a flow (residual) from two feature maps: 3x3 convs, then 1x1 to half width, then 1x1 to (x, y)."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        convs = [_Conv(cin if i == 0 else width, width, 3) for i in range(FLOW_CONVS)]
        convs += [_Conv(width, width // 2, 1), _Conv(width // 2, 2, 1, activate=False)]
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

    def __init__(self, filters: int, widths: Sequence[int]) -> None:
        super().__init__()
        heads = [_FlowHead(2 * _feature_channels(i, filters), width) for i, width in enumerate(widths)]
        self._predictor = heads[-1]
        self._predictors = nn.ModuleList(heads[:-1][::-1])  # coarse to fine, as they run
        self.specialized = len(heads) - 1

    def forward(self, a: List[Tensor], b: List[Tensor]) -> List[Tensor]:
        """Accumulated flows, finest level first."""
        levels = len(a)
        flow = self._predictor(a[-1], b[-1])
        flows: List[Tensor] = [flow]
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

    def __init__(self, filters: int) -> None:
        super().__init__()
        levels = []
        cin = _aligned_channels(FUSION_LEVELS - 1, filters)
        for i in reversed(range(FUSION_LEVELS - 1)):
            width = filters << min(i, SPECIALIZED_LEVELS)
            levels.append(nn.ModuleList([
                _Conv(cin, width, 2, activate=False),
                _Conv(_aligned_channels(i, filters) + width, width, 3),
                _Conv(width, width, 3),
            ]))
            cin = width
        self.convs = nn.ModuleList(levels)
        self.output_conv = nn.Conv2d(filters, 3, 1)

    def forward(self, pyramid: List[Tensor]) -> Tensor:
        x = pyramid[-1]
        for k, level in enumerate(self.convs):
            skip = pyramid[len(pyramid) - 2 - k]
            x = F.interpolate(x, size=[skip.shape[2], skip.shape[3]], mode="nearest")
            x = level[0](x)
            x = level[2](level[1](torch.cat((skip, x), 1)))
        return self.output_conv(x)


class FILMNet(nn.Module):
    """FILM's film_net; ``forward(img0, img1, dt)`` as in the port. Defaults are the real widths (~34 M params)."""

    def __init__(self, filters: int = 64, flow_filters: Tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if len(flow_filters) != SUB_LEVELS:
            raise ValueError(f"flow_filters needs {SUB_LEVELS} widths, got {len(flow_filters)}")
        self.extract = _CascadedFeatures(filters)
        self.predict_flow = _FlowPyramid(filters, flow_filters)
        self.fuse = _Fusion(filters)
        self.pyramid_levels, self.fusion_levels = PYRAMID_LEVELS, FUSION_LEVELS

    def forward(self, x0: Tensor, x1: Tensor, batch_dt: Tensor) -> Tensor:
        """The frame at ``batch_dt`` between ``x0`` and ``x1`` (B, 3, H, W; H, W multiples of 64)."""
        b = x0.shape[0]
        dt = batch_dt.reshape(-1, 1, 1, 1)
        image = torch.cat((x0, x1))  # both images through one pass of every stage
        images: List[Tensor] = [image]
        for _ in range(self.pyramid_levels - 1):
            image = F.avg_pool2d(image, 2, 2)
            images.append(image)
        features = self.extract(images)
        swapped: List[Tensor] = []
        for f in features:
            swapped.append(torch.cat((f[b:], f[:b])))
        flows = self.predict_flow(features, swapped)  # first half: flow 0->1, second half: flow 1->0
        aligned: List[Tensor] = []
        for i in range(self.fusion_levels):
            to0 = flows[i][b:] * dt  # where the frame at dt reads image 0
            to1 = flows[i][:b] * (1 - dt)  # and image 1
            warped = _warp(torch.cat((images[i], features[i]), 1), torch.cat((to0, to1)))
            aligned.append(torch.cat((warped[:b], warped[b:], to0, to1), 1))
        return self.fuse(aligned)


def film_state_keys() -> set[str]:
    """Parameter names of film_net (the same at every width), to recognise a FILM TorchScript file."""
    with torch.device("meta"):
        return set(FILMNet(filters=2, flow_filters=(2, 2, 2, 2)).state_dict())


def load_film(path: Path) -> torch.jit.ScriptModule:
    """Load a FILM TorchScript file (fp32, on CPU, eval); ValueError naming the file when it is not one."""
    try:
        with warnings.catch_warnings():  # deprecated in torch, but it is how the real file is stored
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError or ValueError for non-TorchScript files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a TorchScript file (FILM's {FILM_FILE} is one): {first}") from e
    keys, expected = set(model.state_dict()), film_state_keys()
    if keys != expected:
        missing, unexpected = sorted(expected - keys), sorted(keys - expected)
        raise ValueError(
            f"{path}: TorchScript file is not FILM's film_net: {len(missing)} missing parameters "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    return model.float().eval()


def _midpoint_rounds(n: int) -> List[List[Tuple[int, int, int, float]]]:
    """Recursive-midpoint schedule for ``n`` frames between positions 0 and ``n + 1`` on a uniform timeline.

    Repeatedly takes the missing frame closest to the middle of the known pair around it (FILM is trained at 0.5),
    as the port's tools do. Steps are ``(target, left, right, dt)``; a round holds steps whose inputs are known, so
    a round runs as one batch.
    """
    known, missing = [0, n + 1], list(range(1, n + 1))
    depth = {0: 0, n + 1: 0}
    rounds: List[List[Tuple[int, int, int, float]]] = []
    while missing:
        def off_centre(m: int) -> Fraction:  # exact, so ties go to the earliest frame
            k = bisect.bisect(known, m)
            return abs(Fraction(m - known[k - 1], known[k] - known[k - 1]) - Fraction(1, 2))

        target = min(missing, key=off_centre)
        k = bisect.bisect(known, target)
        left, right = known[k - 1], known[k]
        depth[target] = max(depth[left], depth[right]) + 1
        if len(rounds) < depth[target]:
            rounds.append([])
        rounds[depth[target] - 1].append((target, left, right, (target - left) / (right - left)))
        known.insert(k, target)
        missing.remove(target)
    return rounds


@torch.inference_mode()
def film_frames_between(model: nn.Module, img0: Tensor, img1: Tensor, n: int, max_batch: int) -> Tensor:
    """``n`` frames at t = 1/(n+1) .. n/(n+1) between each pair: (B, 3, H, W) x2 -> (B, n, 3, H, W).

    Each round of the midpoint schedule runs (steps x pairs) items, ``max_batch`` at a time.
    """
    b = img0.shape[0]
    frames = {0: img0, n + 1: img1}
    with torch.jit.optimized_execution(False):  # TorchScript re-optimises per input shape: seconds, for no gain
        for steps in _midpoint_rounds(n):
            _run_round(model, frames, steps, b, max_batch)
    return torch.stack([frames[i] for i in range(1, n + 1)], 1)


def _run_round(
    model: nn.Module, frames: Dict[int, Tensor], steps: List[Tuple[int, int, int, float]], b: int, max_batch: int
) -> None:
    """Add one round's frames, for all ``b`` pairs, to ``frames``; ``max_batch`` network items at a time."""
    left = torch.cat([frames[s[1]] for s in steps])
    right = torch.cat([frames[s[2]] for s in steps])
    dt = torch.tensor([s[3] for s in steps], device=left.device, dtype=left.dtype).repeat_interleave(b)
    dt = dt.view(-1, 1, 1, 1)
    out = []
    for i in range(0, left.shape[0], max_batch):
        out.append(model(left[i : i + max_batch], right[i : i + max_batch], dt[i : i + max_batch]).clamp(0, 1))
    done = torch.cat(out)
    for j, s in enumerate(steps):
        frames[s[0]] = done[j * b : (j + 1) * b]


def build_tiny_film(path: Path, filters: int = 4, flow_filters: Tuple[int, ...] = (4, 4, 8, 8), seed: int = 0) -> Path:
    """Write a random-weight FILM TorchScript file with the real interface and parameter names, reduced widths."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = FILMNet(filters, flow_filters).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is the real file's format
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(net).save(str(path))
    return path
