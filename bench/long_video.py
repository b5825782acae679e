"""Long videos on tiny weights (CPU): the worker's peak memory and the time per output frame against the length.

Each length is one ``vace generate pose --match_input_num_frames`` job on a 416x240 (240p) 16 fps pose clip of that
many frames, in a process of its own (the worker: decoding, conditioning, every window's denoising, encoding), with
the server's default windows (81 frames, 17 kept). Its peak RSS comes from the kernel (``wait4``), its time from the
wall clock around the process (model loading included, the same for every length). A long job holds one window at
a time, so the peak RSS stays flat while the time grows with the number of windows.

    .venv/bin/python bench/long_video.py [--frames 81 120 810 1200] [--steps 2] [--weights-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines.frame_plan import frames_to_generate
from pipelines.windows import WindowSettings, plan_windows
from weights.tiny import build_tiny_weights
from weights.tiny.samples import write_sample

VACE = [sys.executable, "-m", "server.cli"]


def run_job(video: Path, weights: Path, out: Path, steps: int) -> tuple[float, int]:
    """One job in a child process: its wall time (s) and peak RSS (bytes)."""
    command = [
        *VACE,
        "generate",
        "pose",
        "--video",
        str(video),
        "--prompt",
        "a person walking",
        "-q",
        "--match_input_num_frames",
        "--match_input_frames_per_second",
        "--num_inference_steps",
        str(steps),
        "--acceleration",
        "none",
        "--seed",
        "1",
        "--weights-dir",
        str(weights),
        "-o",
        str(out),
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the job of {video.name} failed")
    return seconds, usage.ru_maxrss * 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[81, 120, 810, 1200])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--weights-dir", type=Path, help="tiny weights (default: built in a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        weights = args.weights_dir or build_tiny_weights(tmp / "weights")
        rows = []
        for frames in args.frames:
            video = write_sample("pose", tmp / f"pose{frames}.mp4", num_frames=frames)
            seconds, rss = run_job(video, weights, tmp / f"out{frames}.mp4", args.steps)
            windows = len(plan_windows(frames_to_generate(frames, 0), WindowSettings()))
            rows.append((frames, windows, seconds, rss))
            video.unlink()

    print(f"tiny wan-vace-14b pose, 416x240, 16 fps, {args.steps} steps, windows of 81 keeping 17, one process per job")
    print("| output frames | windows | peak RSS (MiB) | wall time (s) | s per output frame |")
    print("|---|---|---|---|---|")
    for frames, windows, seconds, rss in rows:
        print(f"| {frames} | {windows} | {rss / 2**20:.0f} | {seconds:.1f} | {seconds / frames:.3f} |")
    (f0, _, t0, r0), (f1, _, t1, r1) = rows[0], rows[-1]
    print(
        f"peak RSS {f1} / {f0} frames: {r1 / r0:.2f}x; marginal time per frame from {f0} to {f1}: "
        f"{(t1 - t0) / (f1 - f0):.3f} s"
    )


if __name__ == "__main__":
    main()
