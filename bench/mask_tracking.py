"""How fast SAM2.1 follows an inpainting mask image through a clip, and what share of a job that is.

    python bench/mask_tracking.py [--sizes small ...] [--frames N] [--size WxH] [--device cpu|cuda]

Each SAM2.1 size runs at its real architecture (``weights/tiny/tracker.py``'s ``real_config``: 39 M to 224 M
parameters, 1024x1024 input) with random weights, through the server's own tracker (``preprocessors.mask_tracking``:
the pixels of eight frames at a time, the model's history only), on the depth sample's moving sphere with its mask
on the first frame. Random weights cost what trained ones do: every frame runs the image encoder, memory attention,
mask decoder and memory encoder whatever the masks come out as.

Reported per size: frames per second after one warm-up clip, the floating-point operations per tracked frame
(``torch.utils.flop_counter`` over a tracked frame), and the tracker's share of an 81-frame 480p job by operations:
81 tracked frames against 30 denoising steps of VACE-14B at about 5 PFLOP each with classifier-free guidance (the
arithmetic in DESIGN.md, section 5). Operations, not seconds, because the denoiser cannot run at real size on a CPU;
on one GPU both run at similar efficiency (dense matmuls and convolutions), so the share in time is of that order.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import Sam2VideoModel

from preprocessors.mask_tracking import Sam2Tracker
from weights.tiny.samples import SAMPLES
from weights.tiny.tracker import HIERA, processor_for, real_config

JOB_FRAMES = 81  # fal's default num_frames
DENOISE_FLOP = 30 * 5e15  # 30 steps of VACE-14B at 480p/81 frames with CFG: ~5 PFLOP a step (DESIGN.md, sec. 5)


def clip(frames: int, width: int, height: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The depth sample's sphere over a receding floor, and the sample mask's first frame as the prompt."""
    video = SAMPLES["depth"](width, height, frames, 16)
    return video, SAMPLES["mask"](width, height, 1, 16)[0][..., 0] >= 128


def frames_per_second(tracker: Sam2Tracker, frames: list[np.ndarray], prompt: np.ndarray) -> float:
    """Throughput of a whole clip after a two-frame warm-up (first calls pick kernels and allocate)."""
    list(tracker.track(frames[:2], prompt))
    if tracker.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    produced = sum(1 for _ in tracker.track(frames, prompt))
    if tracker.device.type == "cuda":
        torch.cuda.synchronize()
    assert produced == len(frames)
    return len(frames) / (time.perf_counter() - start)


def flop_per_frame(tracker: Sam2Tracker, frames: list[np.ndarray], prompt: np.ndarray) -> float:
    """Operations of one tracked frame: those of a three-frame clip less those of a two-frame one (the first frame,
    prompted, costs less than a tracked one)."""
    counts = []
    for count in (2, 3):
        with FlopCounterMode(display=False) as counter:
            list(tracker.track(frames[:count], prompt))
        counts.append(counter.get_total_flops())
    return float(counts[1] - counts[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["small"], choices=list(HIERA))
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", default="832x480", help="frame WxH (the clip's; SAM2 resizes to 1024x1024)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames, prompt = clip(args.frames, width, height)
    device = torch.device(args.device)
    print(f"# bench/mask_tracking.py {' '.join(sys.argv[1:])}")
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"threads {torch.get_num_threads()}, device {device}; {args.frames} frames of {width}x{height}"
    )
    for size in args.sizes:
        torch.manual_seed(0)
        model = Sam2VideoModel(real_config(size)).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        tracker = Sam2Tracker(model, processor_for(1024), device)
        fps = frames_per_second(tracker, frames, prompt)
        flop = flop_per_frame(tracker, frames, prompt)
        share = JOB_FRAMES * flop / (JOB_FRAMES * flop + DENOISE_FLOP)
        print(
            f"sam2.1-hiera-{size:<10} {params:6.1f} M params  {fps:7.2f} frames/s  ({JOB_FRAMES / fps:6.1f} s for "
            f"{JOB_FRAMES} frames)  {flop / 1e9:7.1f} GFLOP/frame  share of an {JOB_FRAMES}-frame 480p job "
            f"{share:.3%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
