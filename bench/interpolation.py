"""Interpolated frames per second at 832x480 for RIFE and FILM, at real size with random weights.

    python -m bench.interpolation [--devices cpu cuda] [--kinds rife film] [--cpu-frames 4] [--gpu-frames 33]

Both networks are written to a temporary weights directory in their real formats at their real sizes (RIFE 4.26
IFNet, 5.7 M parameters; FILM film_net, 34 M, as TorchScript) and loaded through ``load_interpolator``, so the time
includes what a job pays: uint8 conversion, padding to 832x512, batching and copying back. Random weights give
random flows, which cost the same as real ones. Each run interpolates one frame between consecutive frames of a
moving test pattern (k = 1) after one untimed warm-up pair; the rate counts new frames only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines.interpolation import InterpolatorKind, load_interpolator, weights_path
from weights.tiny.film import build_tiny_film
from weights.tiny.rife import build_tiny_rife

WIDTH, HEIGHT = 832, 480


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    return [np.roll(base, 4 * i, axis=1) for i in range(n)]


def _write_real_size(root: Path) -> None:
    build_tiny_rife(weights_path("rife", root))  # the default layout is the full 4.26 one
    build_tiny_film(weights_path("film", root), filters=64, flow_filters=(32, 64, 128, 256))


def _run(root: Path, kind: InterpolatorKind, device: str, frames: int) -> str:
    interp = load_interpolator(kind, root, device)
    params = sum(p.numel() for p in interp.model.parameters()) / 1e6
    for _ in interp.interpolate(_frames(2), 1):  # warm-up: allocator, cuDNN / oneDNN kernel choice
        pass
    video = _frames(frames)
    start = time.perf_counter()
    out = sum(1 for _ in interp.interpolate(video, 1))
    seconds = time.perf_counter() - start
    made = out - frames
    return (
        f"{kind:4} {device:4} {WIDTH}x{HEIGHT} {str(interp.dtype).removeprefix('torch.'):7} {params:5.1f}M params "
        f"batch {interp.batch_size:2}: {made:3} frames in {seconds:6.2f} s -> {made / seconds:7.2f} interpolated fps"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--kinds", nargs="+", default=["rife", "film"])
    parser.add_argument("--cpu-frames", type=int, default=4, help="input frames per CPU run (k=1: frames-1 new)")
    parser.add_argument("--film-cpu-frames", type=int, default=2, help="FILM is ~20x slower than RIFE on CPU")
    parser.add_argument("--gpu-frames", type=int, default=33)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA")
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _write_real_size(root)
        for device in args.devices:
            if device == "cuda" and not torch.cuda.is_available():
                print("cuda: not available, skipped")
                continue
            for kind in args.kinds:
                if device == "cpu":
                    frames = args.film_cpu_frames if kind == "film" else args.cpu_frames
                else:
                    frames = args.gpu_frames
                print(_run(root, kind, device, frames), flush=True)


if __name__ == "__main__":
    main()
