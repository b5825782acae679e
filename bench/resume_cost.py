"""What checkpoints and live previews cost: their sizes at real job sizes (computed), their time on tiny weights
(measured on the CPU, as a share of a denoising step) and the preview's share of a GPU step (computed from FLOPs).

    .venv/bin/python bench/resume_cost.py [--weights-dir DIR] [--steps N]

Measured: a real ``denoise()`` call (Wan2.1 VACE 14B tiny weights, 416x240, 17 frames, UniPC, guidance 5, step cache
``regular``) run once plain and once with a checkpoint and a preview after every step, on one torch thread. The
parts the loop itself waits for are timed where it calls them (``StepCacheController.snapshot`` and
``scheduler_state``: the host copies of a checkpoint; ``latent_rgb``: the preview's projection and host copy), and
so are the parts that run beside it (``keep_checkpoint``: the safetensors file, its digest and the store;
``write_webp``: the preview's upscaling and encoding). A step is the mean time between step reports (step 1 left
out), of each run. Sizes: a checkpoint holds fp32 latents (16 x F x H/8 x W/8), the sampler's fp32 history (UniPC:
two model outputs and the last sample; DPM++: two model outputs; Euler: none) and, with the step cache on, per
guidance branch of the expert still running the fp32 residual (tokens x 5120) and the signal on every 8th token (the
14B transformer's width, 1x2x2 patches).
"""

from __future__ import annotations

import argparse
import functools
import platform
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pipelines.denoise as denoise_module
from pipelines.conditioning import build_conditioning
from pipelines.hooks import CheckpointSink, JobHooks, PreviewSink
from pipelines.loading import ModelManager
from pipelines.resume import Identity, code_version
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.step_cache import THRESHOLDS, StepCacheController
from pipelines.video_io import read_frames
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample

HIDDEN = 5120  # the 14B transformer's width
SAMPLER_HISTORY = {"unipc": 3, "dpm++": 2, "euler": 0}  # latent-sized fp32 tensors besides the latents
SIZES = {"480p/81": (832, 480, 81), "720p/81": (1280, 720, 81)}
STEP_FLOPS_480P = 5e15  # DESIGN.md sec. 5: VACE-14B 480p 81 frames with CFG, one step


def checkpoint_bytes(width: int, height: int, frames: int, sampler: str, cached: bool) -> int:
    latent = 16 * ((frames - 1) // 4 + 1) * (height // 8) * (width // 8)
    size = 4 * latent * (1 + SAMPLER_HISTORY[sampler])
    if cached:
        tokens = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
        size += 2 * 4 * HIDDEN * (tokens + -(-tokens // 8))  # two branches: residual + every 8th token's signal
    return size


def preview_flops(width: int, height: int, frames: int) -> float:
    """What runs on the device per preview: x0 = x_t - sigma v (2 per latent value: 32 per latent pixel) and the
    16x3 map with its bias (33 per colour: 99 per latent pixel); the upscaling runs on the host, beside the loop."""
    return (32 + 99) * ((frames - 1) // 4 + 1) * (height // 8) * (width // 8)


class Timers:
    """Wall time of each call of the wrapped functions, by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name].append(time.perf_counter() - start)

        return timed

    def ms(self, name: str) -> float:
        return 1000 * float(np.mean(self.seconds[name])) if self.seconds[name] else float("nan")


def run(manager: ModelManager, cond: Any, steps: int, folder: Path | None) -> tuple[list[float], int]:
    """One denoise call; returns the step report times and the size of the last checkpoint file (0: none)."""
    inp = VaceInput(
        prompt="a person dancing",
        video_url="https://example.com/v.mp4",
        num_inference_steps=steps,
        acceleration="regular",
    )
    times: list[float] = []
    sizes: list[int] = []
    hooks = JobHooks(step=lambda _i, _n: times.append(time.perf_counter()))
    if folder is not None:
        hooks.checkpoints = CheckpointSink(
            every_steps=1,
            every_s=0,
            folder=folder,
            keep=lambda path, _step: sizes.append(path.stat().st_size),
            latest=lambda: None,
        )
        hooks.preview = PreviewSink(every_steps=1, folder=folder, publish=lambda path, _step: path.unlink())
    pipe = manager.get("wan-vace-14b").pipeline(make_scheduler("unipc", inp.shift))
    threshold = THRESHOLDS["regular"]
    assert threshold is not None  # "regular" caches
    cache = StepCacheController(threshold, steps)
    identity = Identity("bench", "bench", code_version())
    denoise_module.denoise(
        pipe, cond, inp, prompt=inp.prompt, width=416, height=240, seed=1, hooks=hooks, cache=cache, identity=identity
    )
    return times, (sizes[-1] if sizes else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, help="tiny weights (built in a temporary folder if not given)")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print("## Checkpoint size per job (computed)\n")
    print("| size | step cache | euler | dpm++ | unipc |\n|---|---|---|---|---|")
    for name, (w, h, f) in SIZES.items():
        for cached in (False, True):
            cells = [f"{checkpoint_bytes(w, h, f, s, cached) / 1e6:,.1f} MB" for s in ("euler", "dpm++", "unipc")]
            print(f"| {name} | {'on' if cached else 'off'} | " + " | ".join(cells) + " |")

    timers = Timers()
    for name in ("latent_rgb", "scheduler_state", "keep_checkpoint", "write_webp"):
        setattr(denoise_module, name, timers.wrap(name, getattr(denoise_module, name)))
    # Timed by swapping the method on the class, which mypy reads as a mistake unless told.
    StepCacheController.snapshot = timers.wrap("snapshot", StepCacheController.snapshot)  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as scratch:
        weights = args.weights_dir or build_tiny_weights(Path(scratch) / "weights")
        video = write_sample("pose", Path(scratch) / "pose.mp4", num_frames=17)
        cond = build_conditioning(read_frames(video, range(17)), 416, 240)
        manager = ModelManager(weights, device="cpu")
        run(manager, cond, 2, None)  # warm-up: first calls allocate
        plain, _ = run(manager, cond, args.steps, None)
        timers.seconds.clear()
        both, size = run(manager, cond, args.steps, Path(scratch))
    step_ms = 1000 * float(np.mean(np.diff(plain)))
    both_ms = 1000 * float(np.mean(np.diff(both)))
    blocking_ckpt = timers.ms("snapshot") + timers.ms("scheduler_state")
    print(
        f"\n## Measured on tiny weights (CPU: {platform.processor() or platform.machine()}, 1 thread, "
        f"{args.steps} steps, 416x240x17, UniPC, step cache regular)\n"
    )
    print(
        f"A step: {step_ms:.1f} ms; with a checkpoint and a preview after every step: {both_ms:.1f} ms "
        f"(the work beside the loop shares the CPU with it). A checkpoint file here: {size / 1e6:.2f} MB.\n"
    )
    print("| part | runs | ms per call | share of a step |\n|---|---|---|---|")
    for label, where, ms in (
        ("checkpoint: host copies", "in the loop", blocking_ckpt),
        ("checkpoint: file, digest, store", "beside the loop", timers.ms("keep_checkpoint")),
        ("preview: x0 projection, host copy", "in the loop", timers.ms("latent_rgb")),
        ("preview: upscaling, WebP encoding", "beside the loop", timers.ms("write_webp")),
    ):
        print(f"| {label} | {where} | {ms:.1f} | {ms / step_ms:.1%} |")

    w, h, f = SIZES["480p/81"]
    flops = preview_flops(w, h, f)
    print(
        f"\n## Preview on a GPU (computed)\n\nAt 480p/81: {flops:.2e} FLOPs per preview against "
        f"{STEP_FLOPS_480P:.0e} per step: {flops / STEP_FLOPS_480P:.1e} of a step."
    )


if __name__ == "__main__":
    main()
