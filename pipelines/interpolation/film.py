"""FILM frame interpolation (Google, "FILM: Frame Interpolation for Large Motion", ECCV 2022; Apache-2.0).

Real weights are the widely distributed PyTorch port's TorchScript file ``film_net_fp32.pt`` (the "Style" network
converted from Google's TF SavedModel). It carries its own code, so it is loaded with ``torch.jit.load`` and called
as ``model(img0, img1, dt)``: images (B, 3, H, W) RGB in [0, 1], ``dt`` the time in (0, 1); it returns the frame at
``dt`` (not clamped). Its image pyramid has 7 levels, each an average-pooled half of the one above, so frames are
padded to multiples of 64. A file is recognised as film_net by its parameter names (``film_state_keys``). Our own
eager implementation of the network, which writes tiny random weights in this format and runs the real-size network
in the benchmark, is ``weights/tiny/film.py``: only the file's own code runs here.

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
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from ..manifest import FILM_FILE

PYRAMID_LEVELS = 7
FUSION_LEVELS = 5
SUB_LEVELS = 4
SPECIALIZED_LEVELS = 3
FLOW_CONVS = 3
PAD_MULTIPLE = 2 ** (PYRAMID_LEVELS - 1)


def film_state_keys() -> set[str]:
    """Parameter names of the port's film_net (the same at every width), to recognise a FILM TorchScript file.

    Each is a convolution's weight and bias: two per stage of the feature tower; the flow heads (one shared by the
    coarse levels, one per specialised finer level), each ``FLOW_CONVS`` 3x3 convolutions and two 1x1; three per
    level of the fusion decoder, and its output convolution.
    """
    convs = [f"extract.extract_sublevels.convs.{j}.{k}.0" for j in range(SUB_LEVELS) for k in range(2)]
    heads = ["predict_flow._predictor", *(f"predict_flow._predictors.{i}" for i in range(SPECIALIZED_LEVELS))]
    convs += [f"{head}._convs.{k}.0" for head in heads for k in range(FLOW_CONVS + 2)]
    convs += [f"fuse.convs.{i}.{k}.0" for i in range(FUSION_LEVELS - 1) for k in range(3)]
    convs.append("fuse.output_conv")
    return {f"{conv}.{kind}" for conv in convs for kind in ("weight", "bias")}


def load_film(path: Path) -> torch.jit.ScriptModule:
    """Load a FILM TorchScript file (fp32, on CPU, eval); ValueError naming the file when it is not one."""
    try:
        with warnings.catch_warnings():  # deprecated in torch, but it is how the real file is stored
            warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", FutureWarning)
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
