"""Overhead of ``generate()`` over a direct ``WanVACEPipeline.__call__`` on the same tiny job, in one run.

Both sides get the same control video, size, steps, sampler and seed; ``generate()`` additionally fetches and
decodes the input, builds the conditioning, and encodes the MP4. Runs are interleaved (A, B, A, B, ...) so machine
noise hits both alike; the medians and their ratio are printed.

    .venv/bin/python bench/generate_overhead.py [--runs 5] [--frames 33] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pipelines.generate import generate
from pipelines.loading import ModelManager
from pipelines.samplers import make_scheduler
from pipelines.schema import VaceInput
from pipelines.video_io import read_frames
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample

MODEL = "wan-vace-14b"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = build_tiny_weights(tmp / "weights")
        video = write_sample("pose", tmp / "pose.mp4", num_frames=args.frames)
        manager = ModelManager(weights)
        inp = VaceInput(
            prompt="a person dancing",
            video_url=str(video),
            num_frames=args.frames,
            num_inference_steps=args.steps,
            seed=1,
            acceleration="none",
        )
        loaded = manager.get(MODEL)
        control = [Image.fromarray(f) for f in read_frames(video, range(args.frames))]

        def direct() -> None:
            pipe = loaded.pipeline(make_scheduler("unipc", inp.shift))
            pipe(
                prompt=inp.prompt,
                negative_prompt=inp.negative_prompt,
                video=control,
                height=240,
                width=416,
                num_frames=args.frames,
                num_inference_steps=args.steps,
                guidance_scale=inp.guidance_scale,
                generator=torch.Generator().manual_seed(1),
                output_type="np",
            )

        def ours() -> None:
            with tempfile.TemporaryDirectory(dir=tmp) as work:
                generate(
                    inp, task="pose", model=MODEL, manager=manager, workdir=Path(work), publish=lambda p, c: str(p)
                )

        direct()  # warm-up: first-call allocations and lazy imports
        times: dict[str, list[float]] = {"direct diffusers call": [], "generate()": []}
        for _ in range(args.runs):
            for name, fn in (("direct diffusers call", direct), ("generate()", ours)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    print(
        f"tiny {MODEL}, 416x240, {args.frames} frames, {args.steps} steps, {args.runs} interleaved runs, "
        f"{torch.get_num_threads()} threads"
    )
    for name, values in times.items():
        print(f"  {name:24s} median {statistics.median(values):6.2f} s  (min {min(values):.2f}, max {max(values):.2f})")
    ratio = statistics.median(times["generate()"]) / statistics.median(times["direct diffusers call"])
    print(f"  overhead ratio generate()/direct: {ratio:.3f}")


if __name__ == "__main__":
    main()
