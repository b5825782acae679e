"""Frames per second of our batched pose and depth preprocessing against a per-frame baseline, in one run.

    python bench/preprocess.py [--weights-dir DIR] [--device cpu|cuda] [--frames N] [--size WxH]

Without ``--weights-dir`` the tiny random-weight annotators are built into a temporary folder. Baselines:

- MiDaS: controlnet-aux's ``MidasDetector`` loaded with its own loader from the same file and called once per
  frame, at VACE's sizes (detect and image resolution = the frame's short side, capped at 1024), then resized to
  the input size like ours.
- DWPose: controlnet-aux's ``DWposeDetector`` needs mmpose, so the baseline is VACE's own loop: the same steps one
  frame at a time on one thread (our code with ``batch_size=1, workers=1``), which gives identical frames.
- Depth Anything V2: ours one frame at a time. OpenPose: controlnet-aux called per frame (ours only runs frames of
  a batch on parallel threads; its post-processing is per image).

The tiny MiDaS file is the real DPT-Hybrid network (123 M parameters; only its weights are shared), so MiDaS is
measured at real size. Depth Anything V2 is also run at the real Small size with random weights. The DWPose ONNX
files stay tiny: YOLOX-L and RTMPose-L cannot be rebuilt at real size offline.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from pipelines.annotators import make_preprocessor
from pipelines.manifest import MIDAS, MIDAS_FILE
from preprocessors.base import Preprocessor
from preprocessors.depth import DepthAnythingPreprocessor
from preprocessors.pose import DWPosePreprocessor, OpenPosePreprocessor
from weights.tiny.annotators import build_tiny_annotators


def synthetic_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """Smooth random frames (structure at several scales, like video, unlike white noise)."""
    rng = np.random.default_rng(0)
    return [
        cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
        for _ in range(count)
    ]


def frames_per_second(run: Callable[[list[np.ndarray]], Iterable[np.ndarray]], frames: list[np.ndarray]) -> float:
    """Throughput after one warm-up frame (first calls build kernels and import modules)."""
    for _ in run(frames[:1]):
        pass
    start = time.perf_counter()
    produced = sum(1 for _ in run(frames))
    elapsed = time.perf_counter() - start
    assert produced == len(frames)
    return len(frames) / elapsed


def per_frame(annotate: Callable[[np.ndarray], np.ndarray]) -> Callable[[list[np.ndarray]], Iterator[np.ndarray]]:
    return lambda frames: (annotate(frame) for frame in frames)


def midas_baseline(weights_dir: Path, device: str) -> Callable[[list[np.ndarray]], Iterator[np.ndarray]]:
    """controlnet-aux's MidasDetector, per frame, at VACE's sizes."""
    from controlnet_aux.midas import MidasDetector

    detector = MidasDetector.from_pretrained(str(MIDAS.path(weights_dir)), filename=MIDAS_FILE).to(device)

    def annotate(frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        short = min(height, width, 1024)
        depth = detector(frame, detect_resolution=short, image_resolution=short, output_type="np")
        return cv2.resize(depth, (width, height), interpolation=cv2.INTER_AREA)

    return per_frame(annotate)


def openpose_baseline(ours: OpenPosePreprocessor) -> Callable[[list[np.ndarray]], Iterator[np.ndarray]]:
    return per_frame(ours.annotate)


def real_size_depth_anything(device: str, batch_size: int) -> DepthAnythingPreprocessor:
    """Depth Anything V2 Small's architecture (ViT-S/14, 24.8 M parameters) with random weights."""
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    config = DepthAnythingConfig(
        backbone_config=Dinov2Config(
            image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False, hidden_size=384,
            num_attention_heads=6,
        )
    )  # fmt: skip
    return DepthAnythingPreprocessor(DepthAnythingForDepthEstimation(config), device, batch_size=batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", type=Path, help="annotator weights (default: build tiny ones)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", default="256x144", help="frame WxH")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = synthetic_frames(args.frames, width, height)

    with tempfile.TemporaryDirectory() as tmp:
        weights_dir = args.weights_dir or build_tiny_annotators(Path(tmp))
        print(f"# bench/preprocess.py {' '.join(sys.argv[1:])}")
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
            f"{torch.get_num_threads()}, device {args.device}; {args.frames} frames of {width}x{height}; weights "
            f"{'tiny (built)' if args.weights_dir is None else weights_dir}"
        )

        def measure(name: str, baseline_name: str, ours: Preprocessor, baseline: Callable, count: int) -> None:
            subset = frames[:count]
            ours_fps = frames_per_second(lambda f: ours.process(f), subset)
            base_fps = frames_per_second(baseline, subset)
            print(f"{name:<34} ours {ours_fps:8.2f} fps   {baseline_name:<30} {base_fps:8.2f} fps   "
                  f"x{ours_fps / base_fps:.2f}", flush=True)  # fmt: skip

        dwpose = make_preprocessor("pose", "dwpose", weights_dir, args.device, args.batch_size)
        assert isinstance(dwpose, DWPosePreprocessor)
        single_thread = DWPosePreprocessor(dwpose.detector, dwpose.estimator, batch_size=1, workers=1)
        measure("dwpose (tiny onnx)", "VACE loop, per frame", dwpose, lambda f: single_thread.process(f), args.frames)

        midas = make_preprocessor("depth", "midas", weights_dir, args.device, args.batch_size)
        measure("midas dpt_hybrid (real size)", "controlnet-aux MidasDetector", midas,
                midas_baseline(weights_dir, args.device), args.frames)  # fmt: skip

        depth_anything = make_preprocessor("depth", "depth_anything_v2", weights_dir, args.device, args.batch_size)
        assert isinstance(depth_anything, DepthAnythingPreprocessor)
        one_at_a_time = DepthAnythingPreprocessor(depth_anything.model, args.device, batch_size=1, workers=1)
        measure("depth_anything_v2 (tiny)", "ours, per frame", depth_anything,
                lambda f: one_at_a_time.process(f), args.frames)  # fmt: skip

        small = real_size_depth_anything(args.device, args.batch_size)
        small_single = DepthAnythingPreprocessor(small.model, args.device, batch_size=1, workers=1)
        measure("depth_anything_v2 Small (real size)", "ours, per frame", small,
                lambda f: small_single.process(f), max(2, args.frames // 4))  # fmt: skip

        openpose = make_preprocessor("pose", "openpose", weights_dir, args.device)
        assert isinstance(openpose, OpenPosePreprocessor)
        measure("openpose (real size)", "controlnet-aux OpenposeDetector", openpose, openpose_baseline(openpose),
                max(2, args.frames // 2))  # fmt: skip


if __name__ == "__main__":
    main()
