"""A 241-frame job with ``temporal_downsample_factor=2`` against the same job with f=0, on the same tiny model.

f=2 generates 81 frames (one control frame in 3) and interpolates the rest; f=0 generates all 241. Runs are
interleaved so machine noise hits both alike.

    .venv/bin/python bench/temporal_downsample.py [--runs 2] [--interpolator rife] [--steps 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipelines.generate import generate
from pipelines.loading import ModelManager
from pipelines.schema import VaceInput
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--interpolator", choices=["rife", "film"], default="rife")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        manager = ModelManager(build_tiny_weights(tmp / "weights"))
        video = write_sample("pose", tmp / "pose.mp4", num_frames=241)
        times: dict[int, list[float]] = {0: [], 2: []}
        for _ in range(args.runs):
            for factor in times:
                inp = VaceInput(
                    prompt="a person dancing",
                    video_url=str(video),
                    num_frames=241,
                    seed=1,
                    acceleration="none",
                    num_inference_steps=args.steps,
                    temporal_downsample_factor=factor,
                    interpolator_model=args.interpolator,
                )
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    start = time.perf_counter()
                    out = generate(
                        inp,
                        task="pose",
                        model="wan-vace-14b",
                        manager=manager,
                        workdir=Path(work),
                        publish=lambda p, c: str(p),
                    )
                    times[factor].append(time.perf_counter() - start)
                assert out.video.num_frames == 241

    print(
        f"tiny wan-vace-14b, 416x240, 241 output frames, {args.steps} steps, {args.interpolator}, {args.runs} runs each"
    )
    for factor, values in times.items():
        print(
            f"  f={factor}: median {statistics.median(values):6.1f} s  (min {min(values):.1f}, max {max(values):.1f})"
        )
    print(f"  f=2 / f=0 time ratio: {statistics.median(times[2]) / statistics.median(times[0]):.3f}")


if __name__ == "__main__":
    main()
