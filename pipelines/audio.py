"""The input's sound in the output.

Every job with an input video keeps its timeline: output frame ``i`` shows the input at ``i / fps`` seconds
(``pipelines.frame_plan``; interpolation and temporal downsampling keep the duration), so the input's sound still
fits the picture. ``add_audio`` copies the input's first audio track into the encoded MP4, cut to the video's
duration: as it is (a stream copy) when its codec plays in an MP4 (AAC, MP3, Opus, FLAC, ALAC), otherwise re-encoded
to AAC at 192 kb/s (PCM from a .mov, Vorbis from a .webm, ...); a copy ffmpeg refuses is re-encoded too. A source
without sound leaves the video silent, and the job log says which of these happened. An audio-only file is no video:
decoding refuses it as such (``video_io``) before any of this.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import imageio_ffmpeg

MP4_AUDIO = frozenset({"aac", "mp3", "opus", "flac", "alac"})
"""Audio codecs an MP4 holds that browsers and players play: copied as they are."""
AAC_BITRATE = "192k"


def audio_codec(path: Path) -> str | None:
    """The codec of ``path``'s first audio stream (ffmpeg's name), or None when it has none."""
    probe = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=False,
    )
    match = re.search(r"Stream #\d+:\d+[^:]*: Audio: (\w+)", probe.stderr)
    return match.group(1) if match else None


def add_audio(video: Path, source: Path, duration: float) -> str:
    """Put ``source``'s first audio track into ``video`` (replaced in place), cut to ``duration`` seconds; returns
    what was done, for the job log."""
    codec = audio_codec(source)
    if codec is None:
        return "the input has no sound: the video is silent"
    attempts = (["copy"], ["aac", "-b:a", AAC_BITRATE]) if codec in MP4_AUDIO else (["aac", "-b:a", AAC_BITRATE],)
    for how in attempts:
        with tempfile.NamedTemporaryFile(dir=video.parent, suffix=".mp4", delete=False) as handle:
            muxed = Path(handle.name)
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(video),
            "-i",
            str(source),
            "-map",
            "0:v:0",
            "-map",
            "1:a:0",
            "-c:v",
            "copy",
            "-c:a",
            *how,
            "-t",
            f"{duration:.6f}",
            "-movflags",
            "+faststart",
            str(muxed),
        ]
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
        if done.returncode == 0:
            muxed.replace(video)
            return (
                f"the input's sound ({codec}) is copied into the video"
                if how == ["copy"]
                else f"the input's sound ({codec}, which an MP4 does not play) is re-encoded to AAC"
            ) + f", cut to {duration:.2f} s"
        muxed.unlink(missing_ok=True)
    raise RuntimeError(f"ffmpeg could not add the input's sound ({codec}): {done.stderr.strip()[-300:]}")
