"""Encoding a 720p, 241-frame output: libx264 against NVENC at each ``video_quality``, and decoding it back on the
CPU against NVDEC: seconds, CPU seconds, MB and PSNR.

    python -m bench.encode [--width 1280] [--height 720] [--frames 241] [--write-modes balanced] [--gpu 0]

The clip is synthetic but video-like (two smooth textures drifting past each other, so motion search and rate
control have work; noise would be all residual, a still image none). Its frames are made before any timing and
streamed to ``encode_video`` as a job streams its output, so the seconds include what every job pays besides the
encoder: the pipe and ffmpeg's RGB to YUV conversion on the CPU. CPU seconds are user plus system time of this
process and its ffmpeg children (getrusage): the cores the encode held, which on a GPU node are the scarce part.
PSNR is of luma against the frames sent in, read back with the CPU decoder. Each encoder and decoder runs through
the code jobs use (``encode_video``, ``read_frames``) after the worker's own trial (``pipelines/codecs.py``); where
a trial fails, its rows are one line with ffmpeg's reason, and the libx264 and CPU rows still print.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import cv2
import imageio_ffmpeg
import numpy as np

from pipelines.codecs import probe_nvdec, probe_nvenc
from pipelines.encode import LIBX264, QUALITY_CRF, WRITE_MODE_PRESET, Encoder, encode_video
from pipelines.video_io import VideoInfo, iter_frames, nvdec_suits, probe_video, read_frames

T = TypeVar("T")
LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # BT.709, the matrix the encodes use


def clip(width: int, height: int, frames: int) -> list[np.ndarray]:
    """Two tinted blurred-noise textures, one drifting right and one down-left, blended; deterministic."""
    rng = np.random.default_rng(0)
    layers = []
    for sigma, tint in ((6.0, (1.0, 0.8, 0.6)), (2.0, (0.6, 0.8, 1.0))):
        noise = rng.random((height + 2 * frames, width + 4 * frames), dtype=np.float32)
        smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
        smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
        layers.append((smooth[..., None] * np.array(tint, np.float32) * 255).astype(np.uint8))
    out = []
    for i in range(frames):
        x = 4 * frames - 2 * i
        a = layers[0][frames : frames + height, 4 * i : 4 * i + width]
        b = layers[1][2 * i : 2 * i + height, x : x + width]
        out.append(cv2.addWeighted(a, 0.6, b, 0.4, 0.0))
    return out


def measured(run: Callable[[], T]) -> tuple[T, float, float]:
    """``run()``'s result, wall seconds and CPU seconds (this process and the children it waited for)."""
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before, strict=True))
    return result, seconds, cpu


def luma(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float32) @ LUMA


def psnr(sent: list[np.ndarray], path: Path) -> float:
    """Luma PSNR of the file against the frames sent in, over all frames: what the encoder kept. (RGB PSNR would
    mostly measure 4:2:0 chroma subsampling, which both encoders get the same.)"""
    mse = np.mean([np.mean((luma(a) - luma(b)) ** 2) for a, b in zip(sent, iter_frames(path), strict=True)])
    return float(10 * np.log10(255.0**2 / mse)) if mse > 0 else float("inf")


def encode_rows(frames: list[np.ndarray], fps: float, encoder: Encoder, modes: list[str], folder: Path) -> Path:
    """One row per quality and write mode; returns the ``high``/first-mode file for the decode rows."""
    keep = folder / "missing.mp4"
    for mode in modes:
        for quality in QUALITY_CRF:
            path = folder / f"{encoder.name}-{quality}-{mode}.mp4"
            encoded, seconds, cpu = measured(functools.partial(encode_video, frames, path, fps, quality, mode, encoder))
            print(
                f"{encoded.encoder!s:18} {quality:8} {mode:9} {seconds:8.2f} {cpu:8.2f} "
                f"{encoded.file_size / 1e6:8.2f} {psnr(frames, path):8.2f}",
                flush=True,
            )
            if quality == "high" and mode == modes[0]:
                keep = path
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--frames", type=int, default=241)
    parser.add_argument("--fps", type=float, default=16.0)
    parser.add_argument("--write-modes", nargs="+", default=["balanced"], choices=list(WRITE_MODE_PRESET))
    parser.add_argument("--gpu", type=int, default=0, help="the CUDA device whose NVENC and NVDEC are measured")
    args = parser.parse_args()
    print(
        f"{args.width}x{args.height}, {args.frames} frames at {args.fps:g} fps; bundled ffmpeg "
        f"{imageio_ffmpeg.get_ffmpeg_version()}; {os.cpu_count()} CPUs",
        flush=True,
    )
    frames = clip(args.width, args.height, args.frames)
    nvenc_failure, nvdec_failure = probe_nvenc(args.gpu), probe_nvdec(args.gpu)
    print(f"{'encoder':18} {'quality':8} {'write':9} {'seconds':>8} {'cpu s':>8} {'MB':>8} {'PSNR dB':>8}")
    with tempfile.TemporaryDirectory(prefix="vace-bench-encode-") as tmp:
        decode_me = encode_rows(frames, args.fps, LIBX264, args.write_modes, Path(tmp))
        if nvenc_failure is None:
            encode_rows(frames, args.fps, Encoder("h264_nvenc", args.gpu), args.write_modes, Path(tmp))
        else:
            print(f"h264_nvenc on GPU {args.gpu}: unavailable here: {nvenc_failure}")
        info = probe_video(decode_me)
        print(
            f"\ndecoding the libx264 high file ({info.width}x{info.height}, {info.num_frames} frames) with read_frames"
        )
        print(f"{'decoder':18} {'seconds':>8} {'cpu s':>8} {'frames':>8}")
        decode_row("cpu", decode_me, info, None)
        if nvdec_failure is None:
            decode_row(f"nvdec on GPU {args.gpu}", decode_me, info, args.gpu)
        else:
            print(f"nvdec on GPU {args.gpu}: unavailable here: {nvdec_failure}")


def decode_row(name: str, path: Path, info: VideoInfo, gpu: int | None) -> None:
    if gpu is not None and not nvdec_suits(info):
        print(f"{name}: jobs would not use NVDEC for this input (below 720p or not 8-bit 4:2:0)")
    got, seconds, cpu = measured(functools.partial(read_frames, path, range(info.num_frames), nvdec_gpu=gpu))
    print(f"{name:18} {seconds:8.2f} {cpu:8.2f} {len(got):8}", flush=True)


if __name__ == "__main__":
    main()
