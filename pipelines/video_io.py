"""Video decoding with imageio-ffmpeg's bundled ffmpeg, one uint8 frame at a time.

Inputs can be long (minutes of 1080p), so frames are streamed from one ffmpeg process and only the requested ones are
kept, as they are taken (``pick_frames``: a long job reads its input window by window); nothing here holds a whole
video or float frames.
Anything ffmpeg cannot read becomes ``InputError(field, ..., "video_decode_error")`` instead of a traceback.

Large inputs can be decoded by NVDEC on the job's GPU (``nvdec_gpu``; ``pipelines/codecs.py`` says whether a worker
may). The CPU decoder stays the reference: NVDEC is used only where it yields the very frames the CPU would (H.264,
HEVC, VP9 and AV1 decoding is bit-exact by specification; NVDEC hands over NV12, which ``format=yuv420p`` turns
back into the CPU decoder's planes before the same RGB conversion), and where a decode on it fails or ends early the
CPU decoder goes on from the frame it stopped at. Counts and timestamps come from the demuxer, the same for both.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

DECODE_ERROR = "video_decode_error"

# Same stream as count_frames_and_secs (first video stream), and every decoded frame exactly once, so a probe's
# num_frames is the number of frames iter_frames yields even for variable-frame-rate files.
_OUTPUT_PARAMS = ["-map", "0:v:0", "-fps_mode", "passthrough"]
NVDEC_CODECS = frozenset({"h264", "hevc", "vp9", "av1"})
"""Codecs NVDEC decodes on every GPU generation the bundled ffmpeg supports (AV1 from Ampere; on older cards
ffmpeg falls back to its CPU decoder by itself)."""
NVDEC_MIN_PIXELS = 1280 * 720
"""Below 720p the CPU should decode a job's few hundred frames in about the time NVDEC takes to start (a CUDA context
and a decoder per ffmpeg process), so only larger inputs go to the GPU (an estimate: ``bench/encode.py`` has the
decode rows, not yet run on a GPU)."""


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    codec: str = ""
    """ffmpeg's name of the stream's codec (``h264``)."""
    pix_fmt: str = ""
    """ffmpeg's name of the decoded pixel format (``yuv420p``)."""


def nvdec_suits(info: VideoInfo) -> bool:
    """Whether NVDEC pays for this input and gives the CPU decoder's frames: a codec it decodes, at least 720p, and
    ``yuv420p`` (8-bit 4:2:0, limited range), the CPU decoder's format that the NV12 round trip lands on exactly;
    full-range ``yuvj420p``, 10-bit, 4:2:2 and 4:4:4 inputs stay on the CPU."""
    return info.codec in NVDEC_CODECS and info.pix_fmt == "yuv420p" and info.width * info.height >= NVDEC_MIN_PIXELS


def decode_params(nvdec_gpu: int | None) -> tuple[list[str], list[str]]:
    """ffmpeg's input and output flags for decoding on the CPU (``None``) or on NVDEC of CUDA device ``nvdec_gpu``.

    ``-hwaccel cuda`` without an output format copies each frame back to memory as NV12 (and falls back to the CPU
    decoder where NVDEC cannot take the stream); ``format=yuv420p`` makes it the planes the CPU decoder gives, so
    the RGB conversion after it is the same code on the same values."""
    if nvdec_gpu is None:
        return [], list(_OUTPUT_PARAMS)
    return ["-hwaccel", "cuda", "-hwaccel_device", str(nvdec_gpu)], [*_OUTPUT_PARAMS, "-vf", "format=yuv420p"]


def probe_video(path: Path, field: str = "video_url") -> VideoInfo:
    """Size, frame rate and exact frame count; the count decodes the stream once (no RGB conversion)."""
    meta, frames = _start_decoder(path, field)
    frames.close()
    try:
        num_frames, secs = imageio_ffmpeg.count_frames_and_secs(str(path))
    except RuntimeError:
        num_frames, secs = sum(1 for _ in iter_frames(path, field)), meta.get("duration") or 0.0
    if not num_frames:
        raise InputError(field, "the video contains no frames", DECODE_ERROR)
    fps = float(meta.get("fps") or 0.0) or (num_frames / secs if secs else 0.0)
    if fps <= 0:
        raise InputError(field, "the video's frame rate cannot be determined", DECODE_ERROR)
    width, height = meta["size"]
    return VideoInfo(
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        duration=num_frames / fps,
        codec=str(meta.get("codec", "")),
        pix_fmt=str(meta.get("pix_fmt", "")).split("(")[0].strip(),
    )


def iter_frames(
    path: Path, field: str = "video_url", nvdec_gpu: int | None = None
) -> Generator[np.ndarray, None, None]:
    """Yield every frame as a read-only uint8 HxWx3 RGB array (a view on ffmpeg's bytes: copy before editing),
    decoded on the CPU or (``nvdec_gpu``) on that GPU's NVDEC.

    Closing the generator early stops ffmpeg.
    """
    meta, frames = _start_decoder(path, field, nvdec_gpu)
    width, height = meta["size"]
    with closing(frames):
        while True:
            try:
                raw = next(frames)
            except StopIteration:
                return
            except (OSError, RuntimeError) as exc:
                raise _decode_error(field, path, exc) from None
            yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def read_frames(
    path: Path, indices: Sequence[int], field: str = "video_url", nvdec_gpu: int | None = None
) -> list[np.ndarray]:
    """The frames at ``indices`` (non-decreasing, repeats allowed), decoding the stream once (on that GPU's NVDEC
    with ``nvdec_gpu``; see ``pick_frames`` for when the CPU takes over).

    Indices past the end get the last frame, so a plan made from a slightly optimistic frame count still works.
    Repeated indices share one (read-only) array.
    """
    with closing(pick_frames(path, indices, field, nvdec_gpu)) as picked:
        return list(picked)


def pick_frames(
    path: Path, indices: Iterable[int], field: str = "video_url", nvdec_gpu: int | None = None
) -> Generator[np.ndarray, None, None]:
    """``read_frames`` one frame at a time: the decoder runs only as far as the frames taken so far, so a long job
    reads its video window by window without holding it. Close the generator to stop ffmpeg early."""
    wanted = iter(indices)
    index = next(wanted, None)
    if index is None:
        return
    if index < 0:
        raise ValueError("indices must be non-negative and non-decreasing")
    last: np.ndarray | None = None
    with closing(_decoded(path, field, nvdec_gpu)) as frames:
        for i, frame in enumerate(frames):
            last = frame
            while index == i:
                yield frame
                previous, index = index, next(wanted, None)
                if index is None:
                    return
                if index < previous:
                    raise ValueError("indices must be non-negative and non-decreasing")
    if last is None:
        raise InputError(field, "the video contains no frames", DECODE_ERROR)
    yield last
    yield from (last for _ in wanted)


def _decoded(path: Path, field: str, nvdec_gpu: int | None) -> Generator[np.ndarray, None, None]:
    """Every frame of the video in order: from NVDEC when ``nvdec_gpu`` is given, and from the CPU decoder (the
    reference, whose frames NVDEC's equal) from where a decode on NVDEC failed, or ended while frames are still
    asked for."""
    done = 0
    if nvdec_gpu is not None:
        try:
            with closing(iter_frames(path, field, nvdec_gpu)) as frames:
                for frame in frames:
                    yield frame
                    done += 1
            log.warning(
                "NVDEC on GPU %d ended %s after %d frames; decoding the rest on the CPU", nvdec_gpu, path.name, done
            )
        except InputError as exc:
            log.warning(
                "NVDEC on GPU %d could not decode %s (%s); decoding the rest on the CPU", nvdec_gpu, path.name, exc.msg
            )
    with closing(iter_frames(path, field)) as frames:
        yield from itertools.islice(frames, done, None)


def _start_decoder(
    path: Path, field: str, nvdec_gpu: int | None = None
) -> tuple[dict[str, Any], Generator[bytes, None, None]]:
    """Start ffmpeg and read its header; the caller owns (and must close) the returned frame generator."""
    if not path.is_file():
        raise InputError(field, "video file not found", DECODE_ERROR)
    if path.stat().st_size == 0:
        raise InputError(field, "the video file is empty", DECODE_ERROR)
    input_params, output_params = decode_params(nvdec_gpu)
    frames = imageio_ffmpeg.read_frames(
        str(path), pix_fmt="rgb24", input_params=input_params, output_params=output_params
    )
    try:
        meta = next(frames)
    except (OSError, RuntimeError, ValueError, IndexError) as exc:  # the last two: a header with no video stream
        frames.close()
        raise _decode_error(field, path, exc) from None
    return meta, frames


def _decode_error(field: str, path: Path, exc: Exception) -> InputError:
    """ffmpeg's last log line is the useful one ("Invalid data found when processing input"); drop the rest."""
    if "matches no streams" in str(exc):  # our -map 0:v:0 on a file without video, e.g. audio only
        return InputError(field, "not a decodable video: the file has no video stream", DECODE_ERROR)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = re.sub(r"^\[[^\]]*\]\s*", "", lines[-1]) if lines else type(exc).__name__
    reason = reason.replace(str(path), path.name)[:200]
    return InputError(field, f"not a decodable video: {reason}", DECODE_ERROR)
