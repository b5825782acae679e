"""Encoding results: H.264 MP4 through imageio-ffmpeg's bundled ffmpeg, and an optional zip of PNG frames.

ffmpeg runs as our own subprocess rather than through ``imageio_ffmpeg.write_frames`` so that every flag is
explicit and a failed encode (bad exit status) raises instead of leaving a broken file behind. Frames are
streamed to ffmpeg's stdin one at a time, so a long output never exists as one array.

Two H.264 encoders write the same kind of file (MP4, yuv420p, BT.709 tags, ``+faststart``): libx264 on the CPU and
NVENC on the job's own GPU (``pipelines/codecs.py`` decides which a worker uses). The RGB to YUV conversion is
ffmpeg's swscale on the CPU for both, so colours do not depend on the encoder; each maps fal's ``video_quality``
and ``video_write_mode`` through its own table below (README, "Encoding": how the NVENC values were chosen).
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import logging
import os
import re
import subprocess
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import cv2
import imageio_ffmpeg
import numpy as np

from preprocessors.frames import check_frame

log = logging.getLogger(__name__)

# video_quality -> x264 constant rate factor (lower = better and larger; VACE's own writer uses 10).
QUALITY_CRF: dict[str, int] = {"low": 28, "medium": 23, "high": 18, "maximum": 10}
# video_write_mode -> x264 preset (encode speed against file size at the same quality).
WRITE_MODE_PRESET: dict[str, str] = {"fast": "veryfast", "balanced": "medium", "small": "slower"}
# video_quality -> NVENC target quality (``-cq`` under VBR rate control): x264's CRF + 5. On easy frames NVENC's QP
# sits about 5 below its CQ where x264's sits at its CRF (both rise on hard frames), so CQ = CRF + 5 lands near
# x264's QP, and so near its quality and size, at each level (README, "Encoding").
NVENC_CQ: dict[str, int] = {"low": 33, "medium": 28, "high": 23, "maximum": 15}
# video_write_mode -> NVENC preset, p1 (fastest) to p7 (slowest, smallest at the same CQ); NVIDIA's medium is p4.
NVENC_PRESET: dict[str, str] = {"fast": "p2", "balanced": "p4", "small": "p7"}
NVENC_LOOKAHEAD = 20
"""Frames NVENC's rate control looks ahead (x264 medium looks 40 ahead); without it H.264 NVENC spends bits badly
around B-frames and scene changes."""
NVENC_SIDES = (145, 4096)
"""The smallest and largest width or height H.264 NVENC takes (smaller frames fail with "Frame Dimension less than
the minimum supported value"); a file outside goes through libx264."""

EncoderName = Literal["libx264", "h264_nvenc"]


@dataclass(frozen=True)
class Encoder:
    """An H.264 encoder of the bundled ffmpeg: ``libx264`` on the CPU, or ``h264_nvenc`` on CUDA device ``gpu``
    (the index torch calls ``cuda:N``; ffmpeg's ``-gpu N`` counts the same CUDA devices)."""

    name: EncoderName = "libx264"
    gpu: int | None = None

    def __post_init__(self) -> None:
        if (self.name == "h264_nvenc") != (self.gpu is not None) or (self.gpu is not None and self.gpu < 0):
            raise ValueError(f"h264_nvenc needs a GPU index and libx264 none, got {self.name} with gpu={self.gpu}")

    def __str__(self) -> str:
        return self.name if self.gpu is None else f"{self.name} on GPU {self.gpu}"

    def codec_args(self, quality: str, write_mode: str) -> list[str]:
        """The ffmpeg output flags that pick this encoder and its rate control for fal's two fields."""
        if quality not in QUALITY_CRF:
            raise ValueError(f"quality must be one of {sorted(QUALITY_CRF)}, got {quality!r}")
        if write_mode not in WRITE_MODE_PRESET:
            raise ValueError(f"write_mode must be one of {sorted(WRITE_MODE_PRESET)}, got {write_mode!r}")
        if self.gpu is None:
            return ["-c:v", "libx264", "-preset", WRITE_MODE_PRESET[write_mode], "-crf", str(QUALITY_CRF[quality])]
        # -b:v 0: no average bitrate target (h264_nvenc's default is 2 Mbit/s), so CQ alone sets the size.
        return [
            "-c:v",
            "h264_nvenc",
            "-gpu",
            str(self.gpu),
            "-preset",
            NVENC_PRESET[write_mode],
            "-tune",
            "hq",
            "-rc",
            "vbr",
            "-cq",
            str(NVENC_CQ[quality]),
            "-b:v",
            "0",
            "-rc-lookahead",
            str(NVENC_LOOKAHEAD),
        ]

    def for_size(self, width: int, height: int) -> Encoder:
        """This encoder, or libx264 for a frame size NVENC does not take."""
        low, high = NVENC_SIDES
        if self.gpu is None or (low <= width <= high and low <= height <= high):
            return self
        return LIBX264


LIBX264 = Encoder()


class EncodeError(RuntimeError):
    """ffmpeg failed to encode a file; ``reason`` is its own account (:func:`failure_reason`)."""

    def __init__(self, path: Path, encoder: Encoder, reason: str) -> None:
        super().__init__(f"ffmpeg failed to encode {path.name} with {encoder}: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class EncodedVideo:
    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    file_size: int
    encoder: Encoder = LIBX264
    """The encoder that wrote the file."""
    fallback: str | None = None
    """Why it is not the encoder asked for, or None: NVENC does not take the size, or did not open (ffmpeg's
    reason)."""


def encode_video(
    frames: Iterable[np.ndarray],
    path: Path,
    fps: float,
    quality: str = "high",
    write_mode: str = "balanced",
    encoder: Encoder = LIBX264,
) -> EncodedVideo:
    """Encode uint8 HxWx3 RGB frames (same size, even width and height) to an MP4 at ``path`` with ``encoder``.

    yuv420p and ``+faststart`` make the file play in browsers while still downloading; the BT.709 matrix and
    tags keep colours the same in players that assume HD colour for untagged video and those that do not.

    NVENC can fail to open where the worker's trial passed (the job left too little GPU memory, the driver went
    away): until ffmpeg reports the encoder open, the frames sent are kept, and should it not open, libx264
    encodes them and the rest, so a job that took minutes of GPU time still gets its video (``fallback`` says
    why). NVENC failing later, like libx264 failing, raises :class:`EncodeError`.
    """
    encoder.codec_args(quality, write_mode)  # refuses unknown levels before ffmpeg starts
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError("encode_video needs at least one frame")
    height, width = check_frame(first)
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    pending = itertools.chain([first], stream)
    fallback = None
    if encoder != LIBX264 and encoder.for_size(width, height) == LIBX264:
        low, high = NVENC_SIDES
        fallback = f"{encoder.name} takes {low} to {high} pixels a side, not {width}x{height}"
    elif encoder != LIBX264:
        try:
            return _run_ffmpeg(
                pending, path, fps, (height, width), encoder.codec_args(quality, write_mode), encoder, kept=[]
            )
        except _NotOpened as failed:
            fallback = failed.reason
            log.warning("%s did not open (%s); encoding %s with libx264", encoder, fallback, path.name)
            pending = itertools.chain(failed.kept, stream)
    encoded = _run_ffmpeg(pending, path, fps, (height, width), LIBX264.codec_args(quality, write_mode), LIBX264)
    return dataclasses.replace(encoded, fallback=fallback)


class _NotOpened(Exception):
    """ffmpeg could not open the encoder; ``kept`` holds every frame sent to it."""

    def __init__(self, reason: str, kept: list[np.ndarray]) -> None:
        super().__init__(reason)
        self.reason, self.kept = reason, kept


def _run_ffmpeg(
    frames: Iterator[np.ndarray],
    path: Path,
    fps: float,
    shape: tuple[int, int],
    codec: list[str],
    encoder: Encoder,
    kept: list[np.ndarray] | None = None,
) -> EncodedVideo:
    """One ffmpeg run. With ``kept`` (a list), the frames sent are kept in it until ffmpeg has opened the encoder
    (its log shows the output's header, which ffmpeg writes once every encoder is open, before any packet), and
    a failure before that raises :class:`_NotOpened` with them."""
    height, width = shape
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner", "-nostats", "-loglevel", "level+info", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-framerate", str(Fraction(fps).limit_denominator(1001)), "-i", "pipe:0",
        "-an", *codec,
        "-vf", "scale=out_color_matrix=bt709:out_range=tv",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
        "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    num_frames, stopped = 0, False
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: ffmpeg can never block on a full stderr pipe
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        assert proc.stdin is not None
        try:
            with proc.stdin:
                for frame in frames:
                    check_frame(frame, shape)
                    if kept is not None:
                        kept.append(frame)
                    proc.stdin.write(np.ascontiguousarray(frame).data)
                    num_frames += 1
                    if kept is not None:
                        # pread: the log's file offset is shared with ffmpeg, which appends at it.
                        head = os.pread(log.fileno(), 1 << 16, 0)
                        if b"Output #0" in head:
                            kept = None  # open: nothing left to fall back for
                        elif b"[error]" in head or b"[fatal]" in head:
                            stopped = True  # ffmpeg would read the whole input before exiting
                            break
        except BrokenPipeError:
            pass  # ffmpeg quit early; its exit status and log below say why
        except BaseException:
            proc.kill()
            proc.wait()
            path.unlink(missing_ok=True)
            raise
        if proc.wait() != 0 or stopped:
            log.seek(0)
            message = log.read().decode(errors="replace")
            path.unlink(missing_ok=True)
            if "No space left on device" in message:  # the caller reports a full disk as such, not as a bug
                raise OSError(errno.ENOSPC, f"no space left on device while encoding {path.name}")
            if kept is not None:
                raise _NotOpened(failure_reason(message), kept)
            raise EncodeError(path, encoder, failure_reason(message))
    return EncodedVideo(
        path=path,
        width=width,
        height=height,
        fps=float(fps),
        num_frames=num_frames,
        duration=num_frames / fps,
        file_size=path.stat().st_size,
        encoder=encoder,
    )


def failure_reason(log: str) -> str:
    """Why ffmpeg failed: the first error line of its log (tagged ``[error]`` or ``[fatal]`` at ``level+``
    log levels; else the first line), without the ``[component @ 0x...]`` prefixes. ffmpeg states the cause first
    (``Cannot load libcuda.so.1``, ``OpenEncodeSessionEx failed: unsupported device``); the lines after it only say
    that opening the encoder or device failed."""
    lines = [line for line in log.splitlines() if line.strip()]
    errors = [line for line in lines if "[error]" in line or "[fatal]" in line]
    for line in errors or lines:
        return re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip()[:300]
    return "no error message"


class FramesZip:
    """A zip of PNG frames (``frame_00000.png``, ...) for ``return_frames_zip``, written frame by frame as the job
    makes them; stored, since PNG is compressed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._archive = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED)

    def add(self, frame: np.ndarray) -> None:
        check_frame(frame)
        ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for frame {self.count}")
        self._archive.writestr(f"frame_{self.count:05d}.png", png.tobytes())
        self.count += 1

    def close(self) -> Path:
        self._archive.close()
        return self.path


def write_frames_zip(frames: Iterable[np.ndarray], path: Path) -> Path:
    """Zip the frames as ``frame_00000.png``, ... (see ``FramesZip``)."""
    archive = FramesZip(path)
    try:
        for frame in frames:
            archive.add(frame)
    finally:
        archive.close()
    return path


def write_control_video(
    frames: Iterable[np.ndarray], path: Path, fps: float, quality: str = "high", encoder: Encoder = LIBX264
) -> EncodedVideo:
    """A pose or depth control video as a playable MP4, whatever the input's size: an odd width or height is
    cropped by its last pixel (yuv420p needs even sizes), which a control video for people to look at can spare.
    Shared by ``vace preprocess`` and the server, which keeps the control a ``preprocess=true`` job made."""
    even = (frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2] for frame in frames)
    return encode_video(even, path, fps, quality=quality, write_mode="fast", encoder=encoder)


def write_mask_video(
    masks: Iterable[np.ndarray], path: Path, fps: float, quality: str = "high", encoder: Encoder = LIBX264
) -> EncodedVideo:
    """Masks (uint8 HxW, white = generated) as a grey MP4, as VACE's preprocessing writes ``src_mask``: what
    ``vace preprocess`` of an edit writes and the mask video a job that tracked its mask returns."""
    return write_control_video((np.repeat(m[..., None], 3, axis=2) for m in masks), path, fps, quality, encoder)
