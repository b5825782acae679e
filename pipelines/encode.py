"""Encoding results: H.264 MP4 through imageio-ffmpeg's bundled ffmpeg, and an optional zip of PNG frames.

ffmpeg runs as our own subprocess rather than through ``imageio_ffmpeg.write_frames`` so that every flag is
explicit and a failed encode (bad exit status) raises instead of leaving a broken file behind. Frames are
streamed to ffmpeg's stdin one at a time, so a long output never exists as one array.
"""

from __future__ import annotations

import errno
import itertools
import subprocess
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

from preprocessors.frames import check_frame

# video_quality -> x264 constant rate factor (lower = better and larger; VACE's own writer uses 10).
QUALITY_CRF: dict[str, int] = {"low": 28, "medium": 23, "high": 18, "maximum": 10}
# video_write_mode -> x264 preset (encode speed against file size at the same quality).
WRITE_MODE_PRESET: dict[str, str] = {"fast": "veryfast", "balanced": "medium", "small": "slower"}


@dataclass(frozen=True)
class EncodedVideo:
    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    duration: float
    file_size: int


def encode_video(
    frames: Iterable[np.ndarray], path: Path, fps: float, quality: str = "high", write_mode: str = "balanced"
) -> EncodedVideo:
    """Encode uint8 HxWx3 RGB frames (same size, even width and height) to an MP4 at ``path``.

    yuv420p and ``+faststart`` make the file play in browsers while still downloading; the BT.709 matrix and
    tags keep colours the same in players that assume HD colour for untagged video and those that do not.
    """
    if quality not in QUALITY_CRF:
        raise ValueError(f"quality must be one of {sorted(QUALITY_CRF)}, got {quality!r}")
    if write_mode not in WRITE_MODE_PRESET:
        raise ValueError(f"write_mode must be one of {sorted(WRITE_MODE_PRESET)}, got {write_mode!r}")
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    stream = iter(frames)
    first = next(stream, None)
    if first is None:
        raise ValueError("encode_video needs at least one frame")
    height, width = check_frame(first)
    if width % 2 or height % 2:
        raise ValueError(f"yuv420p needs even width and height, got {width}x{height}")
    cmd = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
        "-framerate", str(Fraction(fps).limit_denominator(1001)), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", WRITE_MODE_PRESET[write_mode], "-crf", str(QUALITY_CRF[quality]),
        "-vf", "scale=out_color_matrix=bt709:out_range=tv",
        "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709",
        "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    num_frames = 0
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: ffmpeg can never block on a full stderr pipe
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log)
        assert proc.stdin is not None
        try:
            with proc.stdin:
                for frame in itertools.chain([first], stream):
                    check_frame(frame, (height, width))
                    proc.stdin.write(np.ascontiguousarray(frame).data)
                    num_frames += 1
        except BrokenPipeError:
            pass  # ffmpeg quit early; its exit status and log below say why
        except BaseException:
            proc.kill()
            proc.wait()
            path.unlink(missing_ok=True)
            raise
        if proc.wait() != 0:
            log.seek(0)
            message = log.read().decode(errors="replace")
            path.unlink(missing_ok=True)
            if "No space left on device" in message:  # the caller reports a full disk as such, not as a bug
                raise OSError(errno.ENOSPC, f"no space left on device while encoding {path.name}")
            raise RuntimeError(f"ffmpeg failed to encode {path.name}: {message[-500:]}")
    return EncodedVideo(
        path=path,
        width=width,
        height=height,
        fps=float(fps),
        num_frames=num_frames,
        duration=num_frames / fps,
        file_size=path.stat().st_size,
    )


def write_frames_zip(frames: Iterable[np.ndarray], path: Path) -> Path:
    """Zip the frames as ``frame_00000.png``, ... for ``return_frames_zip``; stored, since PNG is compressed."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for i, frame in enumerate(frames):
            check_frame(frame)
            ok, png = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"PNG encoding failed for frame {i}")
            archive.writestr(f"frame_{i:05d}.png", png.tobytes())
    return path


def write_control_video(frames: Iterable[np.ndarray], path: Path, fps: float, quality: str = "high") -> EncodedVideo:
    """A pose or depth control video as a playable MP4, whatever the input's size: an odd width or height is
    cropped by its last pixel (yuv420p needs even sizes), which a control video for people to look at can spare.
    Shared by ``vace preprocess`` and the server, which keeps the control a ``preprocess=true`` job made."""
    even = (frame[: frame.shape[0] // 2 * 2, : frame.shape[1] // 2 * 2] for frame in frames)
    return encode_video(even, path, fps, quality=quality, write_mode="fast")
