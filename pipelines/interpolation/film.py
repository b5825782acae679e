"""FILM frame interpolation (Google, "FILM: Frame Interpolation for Large Motion", ECCV 2022; Apache-2.0).

Real weights are the widely distributed PyTorch port's TorchScript file ``film_net_fp32.pt`` (the "Style" network
converted from Google's TF SavedModel, dajes/frame-interpolation-pytorch). It carries its own code, so it is loaded
with ``torch.jit.load`` and called as ``model(img0, img1, dt)``: images (B, 3, H, W) RGB in [0, 1], ``dt`` the time
in (0, 1); it returns the frame at ``dt`` (not clamped). Its image pyramid has 7 levels, each an average-pooled half
of the one above, so frames are padded to multiples of 64. Our own eager implementation of the network, which writes
tiny random weights in this format and runs the real-size network in the benchmark, is ``weights/tiny/film.py``:
only the file's own code runs here.

The port has published the file in three layouts (its tags), and which one a user has is not in the file name:

* ``v1.0.0``: the un-activated convolutions (the flow heads' last 1x1, the decoder's 2x2) are stored bare, so 16
  parameter names lack the ``.0`` of the later releases, and the network ignores ``dt``: it always makes t = 0.5.
* ``v1.0.1``: honours ``dt`` but reads ``batch_dt[:, 0]``, a (B,) vector that broadcasts against the image width,
  not the batch: one call may carry one ``dt`` only, given as (1, 1), which then broadcasts over any batch.
* ``v1.0.2`` (the current release): reshapes a (B, 1) ``dt`` to (B, 1, 1, 1) itself, so each item has its own time
  (a (B, 1, 1, 1) ``dt`` fails inside it).

``load_film`` tells them apart from the file itself: v1.0.0 by its parameter names, v1.0.1 from v1.0.2 by one tiny
probe call with two different per-item times (v1.0.1 cannot broadcast it). ``FilmModel`` then passes ``dt`` in the
shape the layout takes and never lets a call mix times that the layout would mishandle.

In-between frames come from recursive midpoints as the port's own inference script makes them (FILM is trained at
t = 0.5): repeatedly the missing frame whose time is closest to the middle of the known pair around it, times on
``torch.linspace(0, 1, n + 2)`` in float32, so float ties resolve as the port's do (at n = 2 the frame at 2/3
comes first) and ``dt`` has the port's float32 value. Same frames, same order, same ``dt``: the output equals the
port's script within float32 noise, only batched (``_midpoint_rounds``). A v1.0.0 file can only make the positions
that pure midpoints reach (1 or 3 frames between a pair); other counts are refused before anything runs.

FILM runs in fp32: the port's warp builds its sampling grid in the input dtype, and an fp16 grid moves in steps of
about 0.4 px near the edges of an 832 px frame.
"""

import itertools
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from ..manifest import FILM_FILE

PYRAMID_LEVELS = 7
FUSION_LEVELS = 5
SUB_LEVELS = 4
SPECIALIZED_LEVELS = 3
FLOW_CONVS = 3
PAD_MULTIPLE = 2 ** (PYRAMID_LEVELS - 1)

FilmLayout = Literal["v1.0.0", "v1.0.1", "v1.0.2"]
CURRENT_LAYOUT: FilmLayout = "v1.0.2"

Step = tuple[int, int, int, float]  # (target, left, right, dt) on the timeline 0 .. n + 1


def film_state_keys(layout: FilmLayout = CURRENT_LAYOUT) -> set[str]:
    """Parameter names of the port's film_net (the same at every width), to recognise a FILM TorchScript file.

    Each is a convolution's weight and bias: two per stage of the feature tower; the flow heads (one shared by the
    coarse levels, one per specialised finer level), each ``FLOW_CONVS`` 3x3 convolutions and two 1x1; three per
    level of the fusion decoder, and its output convolution. From v1.0.1 on every convolution but the output one is
    child ``0`` of a container; v1.0.0 stores the two un-activated kinds (last 1x1 of a flow head, the decoder's 2x2
    resize convolution) bare.
    """
    bare = "" if layout == "v1.0.0" else ".0"
    convs = [f"extract.extract_sublevels.convs.{j}.{k}.0" for j in range(SUB_LEVELS) for k in range(2)]
    heads = ["predict_flow._predictor", *(f"predict_flow._predictors.{i}" for i in range(SPECIALIZED_LEVELS))]
    convs += [f"{head}._convs.{k}.0" for head in heads for k in range(FLOW_CONVS + 1)]
    convs += [f"{head}._convs.{FLOW_CONVS + 1}{bare}" for head in heads]
    convs += [f"fuse.convs.{i}.0{bare}" for i in range(FUSION_LEVELS - 1)]
    convs += [f"fuse.convs.{i}.{k}.0" for i in range(FUSION_LEVELS - 1) for k in (1, 2)]
    convs.append("fuse.output_conv")
    return {f"{conv}.{kind}" for conv in convs for kind in ("weight", "bias")}


class FilmModel(nn.Module):
    """A loaded film_net TorchScript file and its layout; ``forward(img0, img1, dt)`` with ``dt`` of shape (B,).

    Calls the file with ``dt`` in the shape its layout takes. For the layouts that take one time per call (v1.0.0,
    v1.0.1) every item must share it: ``steps_per_call`` groups work so that holds.
    """

    def __init__(self, net: torch.jit.ScriptModule, layout: FilmLayout) -> None:
        super().__init__()
        self.net, self.layout = net, layout

    @property
    def per_item_dt(self) -> bool:
        return self.layout == "v1.0.2"

    @property
    def midpoints_only(self) -> bool:
        """v1.0.0 always makes t = 0.5, whatever ``dt`` says."""
        return self.layout == "v1.0.0"

    def forward(self, img0: Tensor, img1: Tensor, dt: Tensor) -> Tensor:
        if self.per_item_dt:
            return self.net(img0, img1, dt.view(-1, 1))
        if bool((dt != dt[0]).any()):
            raise ValueError(f"FILM layout {self.layout} takes one dt per call, got {dt.tolist()}")
        return self.net(img0, img1, dt[:1].view(1, 1))

    def steps_per_call(self, steps: list[Step]) -> list[list[Step]]:
        """``steps`` split into groups that may share a call: all together, or one group per ``dt``."""
        if self.per_item_dt:
            return [steps]
        groups: dict[float, list[Step]] = {}
        for step in steps:
            groups.setdefault(step[3], []).append(step)
        return list(groups.values())

    def check_between(self, n: int) -> None:
        """Raise ValueError when this file cannot make ``n`` frames between a pair (v1.0.0 beyond midpoints)."""
        if not self.midpoints_only:
            return
        odd = sorted({round(s[3], 4) for r in _midpoint_rounds(n) for s in r if s[3] != 0.5})
        if odd:
            raise ValueError(
                f"this {FILM_FILE} is the port's v1.0.0 layout, which always interpolates at t = 0.5, so it can make "
                f"1 or 3 frames between two frames (recursive midpoints), not {n} (that needs dt {odd}); use "
                f"interpolator_model=rife, or the port's v1.0.2 file"
            )


def load_film(path: Path) -> FilmModel:
    """Load a FILM TorchScript file (fp32, on CPU, eval) and tell its layout; ValueError naming the file if it is
    not one."""
    try:
        with warnings.catch_warnings():  # deprecated in torch, but it is how the real file is stored
            warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError or ValueError for non-TorchScript files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a TorchScript file (FILM's {FILM_FILE} is one): {first}") from e
    net = net.float().eval()
    return FilmModel(net, _layout(path, net))


def _layout(path: Path, net: torch.jit.ScriptModule) -> FilmLayout:
    """The file's layout: v1.0.0 by its parameter names; v1.0.1 or v1.0.2 by whether per-item times broadcast."""
    keys = set(net.state_dict())
    if keys == film_state_keys("v1.0.0"):
        return "v1.0.0"
    expected = film_state_keys()
    if keys != expected:
        missing, unexpected = sorted(expected - keys), sorted(keys - expected)
        raise ValueError(
            f"{path}: TorchScript file is not FILM's film_net: {len(missing)} missing parameters "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    probe = torch.zeros(2, 3, PAD_MULTIPLE, PAD_MULTIPLE)
    with torch.inference_mode(), torch.jit.optimized_execution(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a failing probe may warn about the broadcast first
        probes: tuple[tuple[FilmLayout, Tensor], ...] = (
            ("v1.0.2", torch.tensor([[0.25], [0.75]])),
            ("v1.0.1", torch.full((1, 1), 0.5)),
        )
        for layout, dt in probes:
            try:
                if net(probe, probe, dt).shape == probe.shape:
                    return layout
            except RuntimeError:  # v1.0.1 cannot broadcast (2,) against the width
                continue
    raise ValueError(f"{path}: film_net file that takes neither a (B, 1) nor a (1, 1) dt; not a known layout")


def _midpoint_rounds(n: int) -> list[list[Step]]:
    """The port's recursive-midpoint schedule for ``n`` frames between positions 0 and ``n + 1``, in rounds.

    Picks, one at a time, the missing frame whose time is closest to the middle of the known pair around it, ties
    to the earliest, with times and distances in float32 on ``torch.linspace(0, 1, n + 2)`` exactly as the port's
    inference script measures them (so float32 rounding breaks the exact ties as it does there), and ``dt`` in
    float32. A round holds the steps whose inputs are known by then, so it runs as one batch; the frames made are
    the script's, only computed in fewer calls.
    """
    times = torch.linspace(0, 1, n + 2)
    known, missing = [0, n + 1], list(range(1, n + 1))
    depth = {0: 0, n + 1: 0}
    rounds: list[list[Step]] = []
    while missing:
        best: tuple[float, int, int, int, float] | None = None
        for left, right in itertools.pairwise(known):
            span = times[right] - times[left]
            for target in (m for m in missing if left < m < right):
                at = (times[target] - times[left]) / span
                off = float((at - 0.5).abs())
                if best is None or off < best[0]:
                    best = (off, target, left, right, float(at))
        assert best is not None
        _, target, left, right, dt = best
        depth[target] = max(depth[left], depth[right]) + 1
        if len(rounds) < depth[target]:
            rounds.append([])
        rounds[depth[target] - 1].append((target, left, right, dt))
        known.insert(known.index(right), target)
        missing.remove(target)
    return rounds


@torch.inference_mode()
def film_frames_between(model: FilmModel, img0: Tensor, img1: Tensor, n: int, max_batch: int) -> Tensor:
    """``n`` frames at t = 1/(n+1) .. n/(n+1) between each pair: (B, 3, H, W) x2 -> (B, n, 3, H, W).

    Each round of the midpoint schedule runs (steps x pairs) items, ``max_batch`` at a time, grouped so that no call
    mixes times the file's layout cannot take together.
    """
    model.check_between(n)
    b = img0.shape[0]
    frames = {0: img0, n + 1: img1}
    with torch.jit.optimized_execution(False):  # TorchScript re-optimises per input shape: seconds, for no gain
        for steps in _midpoint_rounds(n):
            for group in model.steps_per_call(steps):
                _run_group(model, frames, group, b, max_batch)
    return torch.stack([frames[i] for i in range(1, n + 1)], 1)


def _run_group(model: FilmModel, frames: dict[int, Tensor], steps: list[Step], b: int, max_batch: int) -> None:
    """Add the frames of ``steps``, for all ``b`` pairs, to ``frames``; ``max_batch`` network items at a time."""
    left = torch.cat([frames[s[1]] for s in steps])
    right = torch.cat([frames[s[2]] for s in steps])
    dt = torch.tensor([s[3] for s in steps], device=left.device, dtype=torch.float32).repeat_interleave(b)
    out = []
    for i in range(0, left.shape[0], max_batch):
        out.append(model(left[i : i + max_batch], right[i : i + max_batch], dt[i : i + max_batch]).clamp(0, 1))
    done = torch.cat(out)
    for j, s in enumerate(steps):
        frames[s[0]] = done[j * b : (j + 1) * b]
